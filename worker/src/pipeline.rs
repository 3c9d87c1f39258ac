//! One configured pipeline at run time: a consumer thread feeding sandbox
//! threads, which hand results to the sink.
//!
//! ```text
//! consumer thread ──(partition-hashed, bounded)──▶ sandbox thread × N ──▶ sink (producer)
//!        ▲                                                                     │
//!        └──────── store_offset(watermark) ◀── PartitionTracker ◀── delivery acks
//! ```
//! A partition always maps to the same sandbox thread, which processes its
//! records in order and enqueues their outputs in order; the idempotent
//! producer keeps that order per output partition.
//!
//! Hot swap: the pipeline's function sits in a [`FunctionSlot`]. A sandbox
//! thread checks the slot's generation before each batch and switches
//! between batches, so every partition moves to the new version exactly once,
//! at a batch boundary, without losing or reordering a record.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::config::{KafkaConfig, PipelineConfig, RuntimeConfig};
use crate::sandbox::{Function, Header, InputRecord, Runner};
use crate::sink::{Disposition, Fatal, Sink, SinkTarget};
use crate::source::{PartitionTracker, SourceContext, TrackerCache, Trackers};
use crate::telemetry::{otel, Histogram};

/// Counters of one pipeline (exported as metrics by the telemetry module).
/// What a function did is counted per function version ([`VersionStats`]),
/// so a counter labelled with a version counts only that version's records.
#[derive(Default, Debug)]
pub struct PipelineStats {
    /// Set once the consumer received its first assignment.
    pub joined: AtomicBool,
    /// Whether librdkafka's last statistics saw at least one broker up.
    pub broker_up: AtomicBool,
    /// Consumer lag per assigned partition, from librdkafka statistics.
    pub lag: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    pub consumed: AtomicU64,
    versions: std::sync::RwLock<Vec<Arc<VersionStats>>>,
}

/// What one function version did in one pipeline on this worker.
#[derive(Default, Debug)]
pub struct VersionStats {
    pub function: String,
    pub version: String,
    /// Dead letters by error kind (index into `crate::sandbox::ERROR_KINDS`).
    pub errors_by_kind: [AtomicU64; crate::sandbox::ERROR_KINDS.len()],
    pub produced: AtomicU64,
    pub filtered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub traps: AtomicU64,
    pub fuel_consumed: AtomicU64,
    pub wasm_nanos: AtomicU64,
    pub instantiations: AtomicU64,
    pub instantiate_nanos: AtomicU64,
    pub process_duration: Histogram,
    pub wasm_duration: Histogram,
}

impl PipelineStats {
    /// The counters of `f`'s version (created on first use, kept after a
    /// swap so a rollback continues them).
    pub fn version(&self, f: &Function) -> Arc<VersionStats> {
        let find = |vs: &[Arc<VersionStats>]| {
            vs.iter()
                .find(|v| v.function == f.name && v.version == f.version)
                .cloned()
        };
        if let Some(v) = find(&self.versions.read().unwrap_or_else(|p| p.into_inner())) {
            return v;
        }
        let mut vs = self.versions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = find(&vs) {
            return v;
        }
        let v = Arc::new(VersionStats {
            function: f.name.clone(),
            version: f.version.clone(),
            ..Default::default()
        });
        vs.push(v.clone());
        v
    }

    pub fn versions(&self) -> Vec<Arc<VersionStats>> {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Totals over every version, for the shutdown log line.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let vs = self.versions();
        let sum = |pick: fn(&VersionStats) -> &AtomicU64| {
            vs.iter()
                .map(|v| pick(v).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        [
            ("consumed", self.consumed.load(Ordering::Relaxed)),
            ("produced", sum(|v| &v.produced)),
            ("filtered", sum(|v| &v.filtered)),
            ("dead_lettered", sum(|v| &v.dead_lettered)),
            ("traps", sum(|v| &v.traps)),
            ("fuel_consumed", sum(|v| &v.fuel_consumed)),
            ("wasm_nanos", sum(|v| &v.wasm_nanos)),
            ("instantiations", sum(|v| &v.instantiations)),
        ]
    }
}

/// The function a pipeline runs now. Empty until the first activation of a
/// pipeline that has no component file; the consumer joins its group only
/// once there is a function.
#[derive(Default)]
pub struct FunctionSlot {
    /// The function and the generation it was installed as, together: a lane
    /// never pairs one with the other's.
    current: std::sync::RwLock<(u64, Option<Arc<Function>>)>,
    /// Copy of the generation for the per-batch check without the lock.
    generation: AtomicU64,
    /// Loads of an activated version that failed on this worker.
    pub load_failures: AtomicU64,
    /// The last failure, shown in the status object.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl FunctionSlot {
    pub fn new(initial: Option<Arc<Function>>) -> Self {
        let s = Self::default();
        if let Some(f) = initial {
            s.swap(f);
        }
        s
    }

    pub fn get(&self) -> Option<Arc<Function>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The function with its generation.
    pub fn get_with_generation(&self) -> (u64, Option<Arc<Function>>) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Takes effect at each sandbox thread's next batch.
    pub fn swap(&self, f: Arc<Function>) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let g = cur.0 + 1;
        *cur = (g, Some(f));
        self.generation.store(g, Ordering::Release);
        drop(cur);
        self.clear_error();
    }

    pub fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn record_failure(&self, error: String) {
        self.load_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// Process-wide stop signal and fatal error.
#[derive(Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub fatal: Arc<Fatal>,
}

impl Control {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.fatal.get().is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline {pipeline}: cannot create the Kafka consumer: {source}")]
    Consumer {
        pipeline: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("pipeline {pipeline}: cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        pipeline: String,
        topics: Vec<String>,
        source: Box<rdkafka::error::KafkaError>,
    },
}

/// librdkafka settings shared by consumers and the producer: the operator's
/// pass-through map first, then the keys correctness depends on.
pub fn base_client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &kafka.librdkafka {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers);
    c
}

pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base_client_config(kafka);
    c.set("enable.idempotence", "true").set("acks", "all");
    if !kafka.librdkafka.contains_key("linger.ms") {
        c.set("linger.ms", "5");
    }
    c
}

pub struct PipelineHandle {
    pub name: String,
    pub group: String,
    pub stats: Arc<PipelineStats>,
    pub trackers: Arc<Trackers>,
    pub slot: Arc<FunctionSlot>,
    thread: JoinHandle<()>,
}

impl PipelineHandle {
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

struct Inbound {
    record: InputRecord,
    tracker: Arc<PartitionTracker>,
}

/// Starts the pipeline's threads. Returns once the consumer has subscribed.
pub fn spawn(
    pipeline: &PipelineConfig,
    kafka: &KafkaConfig,
    runtime: &RuntimeConfig,
    slot: Arc<FunctionSlot>,
    sink: Arc<Sink>,
    control: Arc<Control>,
) -> Result<PipelineHandle, PipelineError> {
    let trackers = Arc::new(Trackers::default());
    let stats = Arc::new(PipelineStats::default());
    let drain_timeout = Duration::from_millis(runtime.drain_timeout_ms);
    let context = SourceContext {
        pipeline: pipeline.name.clone(),
        trackers: trackers.clone(),
        drain_timeout,
        stats: stats.clone(),
    };
    let mut cc = base_client_config(kafka);
    cc.set("group.id", format!("{}.{}", kafka.group_id, pipeline.name))
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &kafka.auto_offset_reset)
        .set("partition.assignment.strategy", "cooperative-sticky");
    if !kafka.librdkafka.contains_key("auto.commit.interval.ms") {
        cc.set("auto.commit.interval.ms", "1000");
    }
    if !kafka.librdkafka.contains_key("statistics.interval.ms") {
        // Feeds consumer lag and broker reachability (readiness, metrics).
        cc.set("statistics.interval.ms", "2000");
    }
    let consumer: BaseConsumer<SourceContext> =
        cc.create_with_context(context)
            .map_err(|source| PipelineError::Consumer {
                pipeline: pipeline.name.clone(),
                source: Box::new(source),
            })?;
    let topics: Vec<String> = pipeline.input_topics.clone();
    if slot.get().is_some() {
        subscribe(&consumer, &pipeline.name, &topics)?;
    }

    let target = Arc::new(SinkTarget {
        pipeline: pipeline.name.clone(),
        output_topics: pipeline.output_topics.clone(),
        dead_letter_topic: pipeline.dead_letter_topic.clone(),
        group: format!("{}.{}", kafka.group_id, pipeline.name),
    });

    let lanes = pipeline.concurrency.max(1);
    let per_lane = (runtime.max_in_flight / lanes).max(pipeline.batch_size);
    let mut senders = Vec::with_capacity(lanes);
    let mut workers = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (tx, rx) = sync_channel::<Inbound>(per_lane);
        senders.push(tx);
        let slot = slot.clone();
        let sink = sink.clone();
        let target = target.clone();
        let stats = stats.clone();
        let batch_size = pipeline.batch_size;
        workers.push(
            std::thread::Builder::new()
                .name(format!("sandbox-{}-{lane}", pipeline.name))
                .spawn(move || sandbox_lane(rx, &slot, &sink, &target, &stats, batch_size))
                .expect("spawn sandbox thread"),
        );
    }

    let name = pipeline.name.clone();
    let stats2 = stats.clone();
    let trackers2 = trackers.clone();
    let slot2 = slot.clone();
    let thread = std::thread::Builder::new()
        .name(format!("consumer-{}", pipeline.name))
        .spawn(move || {
            if !wait_for_function(&name, &consumer, &slot2, &topics, &control) {
                drop(senders);
                for w in workers {
                    let _ = w.join();
                }
                return;
            }
            consume_loop(&name, &consumer, &trackers2, senders, &stats2, &control);
            for w in workers {
                let _ = w.join();
            }
            // Every record handed to a sandbox thread has been enqueued to the
            // producer; wait for their acks, then commit what is contiguous.
            let deadline = Instant::now() + drain_timeout;
            for t in trackers2.all() {
                let left = deadline.saturating_duration_since(Instant::now());
                if !t.wait_drained(left) {
                    tracing::warn!(pipeline = %name, topic = %t.topic, partition = t.partition, in_flight = t.in_flight(), "records still unacknowledged at shutdown; they will be processed again");
                }
            }
            trackers2.store_offsets(&consumer);
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => tracing::info!(pipeline = %name, "final offsets committed"),
                // NoOffset: auto-commit already sent every stored watermark.
                Err(e) => tracing::debug!(pipeline = %name, error = %e, "final commit: nothing new"),
            }
            consumer.unsubscribe();
            tracing::info!(pipeline = %name, stats = ?stats2.snapshot(), "pipeline stopped");
        })
        .expect("spawn consumer thread");

    Ok(PipelineHandle {
        name: pipeline.name.clone(),
        group: format!("{}.{}", kafka.group_id, pipeline.name),
        stats,
        trackers,
        slot,
        thread,
    })
}

fn subscribe(
    consumer: &BaseConsumer<SourceContext>,
    pipeline: &str,
    topics: &[String],
) -> Result<(), PipelineError> {
    let t: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
    consumer
        .subscribe(&t)
        .map_err(|source| PipelineError::Subscribe {
            pipeline: pipeline.to_string(),
            topics: topics.to_vec(),
            source: Box::new(source),
        })
}

/// A managed pipeline with nothing activated yet does not join its group:
/// joining would take partitions it cannot process. Returns false on stop.
fn wait_for_function(
    name: &str,
    consumer: &BaseConsumer<SourceContext>,
    slot: &FunctionSlot,
    topics: &[String],
    control: &Control,
) -> bool {
    if slot.get().is_some() && consumer.subscription().is_ok_and(|s| s.count() > 0) {
        return true;
    }
    tracing::info!(
        pipeline = name,
        "no function activated yet; waiting before joining the group"
    );
    while slot.get().is_none() {
        if control.stopping() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match subscribe(consumer, name, topics) {
        Ok(()) => true,
        Err(e) => {
            control.fatal.set(e.to_string());
            false
        }
    }
}

fn lane_for(topic: &str, partition: i32, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    partition.hash(&mut h);
    (h.finish() as usize) % lanes
}

fn consume_loop(
    name: &str,
    consumer: &BaseConsumer<SourceContext>,
    trackers: &Trackers,
    senders: Vec<SyncSender<Inbound>>,
    stats: &PipelineStats,
    control: &Control,
) {
    let mut last_store = Instant::now();
    let mut cache = TrackerCache::new();
    while !control.stopping() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(pipeline = name, error = %e, "consumer error"),
            Some(Ok(msg)) => {
                let Some(tracker) = cache.get(trackers, msg.topic(), msg.partition()) else {
                    tracing::debug!(
                        pipeline = name,
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        "skipping a record of a revoked partition"
                    );
                    continue;
                };
                tracker.register(msg.offset());
                stats.consumed.fetch_add(1, Ordering::Relaxed);
                let lane = lane_for(msg.topic(), msg.partition(), senders.len());
                let mut item = Inbound {
                    record: to_input(&msg),
                    tracker,
                };
                drop(msg);
                // Block (while still serving rebalances and offset stores)
                // when the sandbox lane is full.
                loop {
                    match senders[lane].try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            trackers.store_offsets(consumer);
                            if control.stopping() {
                                // Not processed: it stays uncommitted and is
                                // read again after a restart.
                                item.tracker.abandon_last(item.record.offset);
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
            }
        }
        if last_store.elapsed() >= Duration::from_millis(100) {
            trackers.store_offsets(consumer);
            last_store = Instant::now();
        }
    }
    tracing::info!(
        pipeline = name,
        "stopped fetching; draining in-flight records"
    );
}

fn to_input(msg: &BorrowedMessage<'_>) -> InputRecord {
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| Header {
                    key: h.key.to_string(),
                    value: h.value.map(|v| v.to_vec()).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    InputRecord {
        key: msg.key().map(|k| k.to_vec()),
        value: msg.payload().map(|p| p.to_vec()).unwrap_or_default(),
        headers,
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
    }
}

fn sandbox_lane(
    rx: Receiver<Inbound>,
    slot: &FunctionSlot,
    sink: &Sink,
    target: &SinkTarget,
    pipeline_stats: &PipelineStats,
    batch_size: usize,
) {
    let mut inputs = Vec::with_capacity(batch_size);
    let mut trackers = Vec::with_capacity(batch_size);
    let mut runner: Option<(u64, Runner, Arc<VersionStats>)> = None;
    while let Ok(first) = rx.recv() {
        inputs.push(first.record);
        trackers.push(first.tracker);
        while inputs.len() < batch_size {
            match rx.try_recv() {
                Ok(m) => {
                    inputs.push(m.record);
                    trackers.push(m.tracker);
                }
                Err(_) => break,
            }
        }
        // The batch boundary: the only place a lane changes function.
        if runner
            .as_ref()
            .is_none_or(|(g, _, _)| *g != slot.generation())
        {
            if let (generation, Some(f)) = slot.get_with_generation() {
                if let Some((_, old, _)) = &runner {
                    tracing::info!(pipeline = %target.pipeline, from = %old.function().version, to = %f.version, "switching function version");
                }
                let vstats = pipeline_stats.version(&f);
                runner = Some((generation, Runner::new(f), vstats));
            }
        }
        let Some((_, runner, stats)) = runner.as_mut() else {
            // Unreachable: records arrive only after the slot is filled.
            continue;
        };
        let function = runner.function().clone();
        // Spans only when an OTLP exporter runs: otherwise this is one load.
        let tracer = otel::get();
        let mut spans: Vec<otel::RecordSpan> = match tracer {
            Some(o) => inputs
                .iter()
                .map(|i| o.record_span(i, &target.pipeline, &target.group, &function.version))
                .collect(),
            None => Vec::new(),
        };
        let started = Instant::now();
        let before = runner.stats;
        let results = runner.run_batch(&inputs);
        let after = runner.stats;
        stats.fuel_consumed.fetch_add(
            after.fuel_consumed - before.fuel_consumed,
            Ordering::Relaxed,
        );
        let wasm = after.wasm_nanos - before.wasm_nanos;
        stats.wasm_nanos.fetch_add(wasm, Ordering::Relaxed);
        stats.wasm_duration.observe(Duration::from_nanos(wasm), 1);
        stats.instantiations.fetch_add(
            u64::from(after.instantiations - before.instantiations),
            Ordering::Relaxed,
        );
        stats.instantiate_nanos.fetch_add(
            after.instantiate_nanos - before.instantiate_nanos,
            Ordering::Relaxed,
        );
        let mut spans_iter = spans.drain(..);
        for ((input, tracker), result) in inputs.iter().zip(&trackers).zip(results) {
            let span = spans_iter.next();
            let traceparent = span.as_ref().map(|s| s.traceparent.as_str());
            let (disposition, err) =
                sink.deliver(target, &function, input, tracker, result, traceparent);
            if let Some(span) = span {
                match (&disposition, &err) {
                    (_, Some(e)) => span.end(Some(e.kind()), 0),
                    (Disposition::Produced(n), None) => span.end(None, *n),
                    _ => span.end(None, 0),
                }
            }
            match disposition {
                Disposition::Produced(n) => {
                    stats.produced.fetch_add(n as u64, Ordering::Relaxed);
                }
                Disposition::Filtered => {
                    stats.filtered.fetch_add(1, Ordering::Relaxed);
                }
                Disposition::DeadLettered => {
                    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    if let Some(e) = err {
                        if !matches!(e.kind(), "invalid-input" | "failed" | "unknown-topic") {
                            stats.traps.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(i) = crate::sandbox::ERROR_KINDS
                            .iter()
                            .position(|k| *k == e.kind())
                        {
                            stats.errors_by_kind[i].fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(pipeline = %target.pipeline, topic = %input.topic, partition = input.partition, offset = input.offset, kind = e.kind(), error = %e, "record dead-lettered");
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        stats.process_duration.observe(elapsed, inputs.len() as u64);
        if let Some(o) = tracer {
            let attrs = [
                opentelemetry::KeyValue::new("messaging.system", "kafka"),
                opentelemetry::KeyValue::new("messaging.consumer.group.name", target.group.clone()),
                opentelemetry::KeyValue::new("pipeline", target.pipeline.clone()),
                opentelemetry::KeyValue::new("pipeline.function.version", function.version.clone()),
            ];
            let secs = elapsed.as_secs_f64();
            for _ in 0..inputs.len() {
                o.process_duration.record(secs, &attrs);
            }
            o.wasm_duration.record(wasm as f64 / 1e9, &attrs);
        }
        inputs.clear();
        trackers.clear();
    }
}
