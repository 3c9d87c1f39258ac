//! One configured pipeline at run time: sandbox threads reading their
//! partitions straight from librdkafka, handing results to the sink, and a
//! consumer thread serving the group.
//!
//! ```text
//! librdkafka: one queue per assigned partition ──▶ sandbox thread × N ──▶ sink (producer)
//!        ▲                                                                     │
//!        └──────── store_offset(watermark) ◀── PartitionTracker ◀── delivery acks
//! ```
//! On assignment each partition's queue is split off the consumer's and
//! given to the sandbox thread with the fewest partitions
//! ([`crate::source::Lanes`]); that thread alone reads it, in batches, so it
//! processes the partition's records in order and enqueues their outputs in
//! order, and the idempotent producer keeps that order per output partition.
//!
//! Back-pressure needs no pausing: a sandbox thread that falls behind reads
//! its queues later, librdkafka stops fetching a partition whose queue holds
//! `max_in_flight` records (`queued.min.messages`) and resumes when it drops
//! below, without dropping or refetching anything. The consumer thread only
//! polls the consumer's own queue (rebalances, heartbeats, statistics, offset
//! commits) every 100 ms, however slow the function is, so a slow function
//! never causes a `max.poll.interval.ms` expiry. A revoke takes the revoked
//! partitions' queues away first, so it only waits for the batch being
//! processed.
//!
//! Stop: the lanes stop taking records at the next batch boundary; what they
//! never took stays uncommitted and is read again by the next owner.
//! The consumer waits for lanes and acks against one deadline
//! (`drain_timeout_ms`), then commits the contiguous watermark.
//!
//! A thread that dies (panic) sets the process-wide fatal error, so the
//! process exits non-zero, and marks its pipeline, so `/readyz` names it.
//!
//! Hot swap: the pipeline's function sits in a [`FunctionSlot`]. A sandbox
//! thread checks the slot's generation before each batch and switches
//! between batches, so every partition moves to the new version exactly once,
//! at a batch boundary, without losing or reordering a record.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::Offset;

use crate::config::{KafkaConfig, PipelineConfig, RuntimeConfig, TombstoneMode};
use crate::quota;
use crate::record::{self, Poison};
use crate::sandbox::{Function, InputRecord, RecordError, RecordResult, Runner};
use crate::sink::{Disposition, Fatal, Sink, SinkTarget};
use crate::source::{
    LaneInbox, Lanes, PartitionFeed, PartitionTracker, SourceContext, TrackerCache, Trackers,
};
use crate::telemetry::otel;
use crate::txn::Transactions;
pub use crate::txn::TxnSetup;

use crate::stats::{PipelineStats, VersionStats};

/// Hidden fault injection for the dead-thread test: the sandbox thread that
/// gets the record at this offset panics. Read once per pipeline start.
pub const FAULT_PANIC_AT_OFFSET: &str = "PIPELINE_WORKER_FAULT_PANIC_AT_OFFSET";

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
    /// Set by [`spawn`] for `tombstones = "function"`: the pipeline's name;
    /// a function that cannot receive a null value is refused.
    needs_null_values: std::sync::Mutex<Option<String>>,
    /// Set by [`spawn`]: the pipeline's name, and whether it declares a
    /// schema; a columnar function is refused by a pipeline without one.
    schema_declared: std::sync::Mutex<Option<(String, bool)>>,
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

    /// Takes effect at each sandbox thread's next batch. Returns false (and
    /// records the failure, keeping the current function) when the pipeline
    /// sends tombstones to its function and `f` cannot receive them.
    pub fn swap(&self, f: Arc<Function>) -> bool {
        let needs = self
            .needs_null_values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(pipeline) = needs {
            if let Err(e) = check_tombstones(&pipeline, None, &f) {
                tracing::error!(error = %e, "function version refused");
                self.record_failure(e.to_string());
                return false;
            }
        }
        let declared = self
            .schema_declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((pipeline, has_schema)) = declared {
            if let Err(e) = check_columnar(&pipeline, None, has_schema, &f) {
                tracing::error!(error = %e, "function version refused");
                self.record_failure(e.to_string());
                return false;
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let g = cur.0 + 1;
        *cur = (g, Some(f));
        self.generation.store(g, Ordering::Release);
        drop(cur);
        self.clear_error();
        true
    }

    pub fn clear_error(&self) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn record_failure(&self, error: String) {
        self.load_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// `tombstones = "function"` needs a function that can receive null values.
/// `index` is the pipeline's position in the config, when the caller knows it.
pub fn check_tombstones(
    pipeline: &str,
    index: Option<usize>,
    f: &Function,
) -> Result<(), PipelineError> {
    if f.accepts_null_values() {
        return Ok(());
    }
    Err(PipelineError::TombstonesNeedNullValues {
        pipeline: pipeline.to_string(),
        key: match index {
            Some(i) => format!("pipelines[{i}].tombstones"),
            None => format!("pipelines[name = {pipeline:?}].tombstones"),
        },
        function: f.name.clone(),
        version: f.version.clone(),
        world: f.world.clone(),
    })
}

/// A columnar function needs the pipeline's schema (`pipelines[i].schema`).
pub fn check_columnar(
    pipeline: &str,
    index: Option<usize>,
    has_schema: bool,
    f: &Function,
) -> Result<(), PipelineError> {
    if !f.is_columnar() || has_schema {
        return Ok(());
    }
    Err(PipelineError::ColumnarNeedsSchema {
        pipeline: pipeline.to_string(),
        key: match index {
            Some(i) => format!("pipelines[{i}].schema"),
            None => format!("pipelines[name = {pipeline:?}].schema"),
        },
        function: f.name.clone(),
        version: f.version.clone(),
    })
}

/// Process-wide stop signal and fatal error. (Not the control plane, which
/// is `pipeline-worker control`.)
#[derive(Default)]
pub struct Shutdown {
    pub stop: AtomicBool,
    pub fatal: Arc<Fatal>,
}

impl Shutdown {
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
    #[error("pipeline {pipeline}: {key} = \"function\" sends tombstones (null values) to the function, but {function} version {version} exports {world}, which cannot receive a null value; rebuild it against pipeline:transform@0.2 or choose tombstones = \"pass\", \"drop\" or \"dead-letter\"")]
    TombstonesNeedNullValues {
        pipeline: String,
        key: String,
        function: String,
        version: String,
        world: String,
    },
    #[error("pipeline {pipeline}: {function} version {version} is a columnar function (it exports pipeline:transform/columnar-transformer), and {key} is not set: declare the Arrow schema of its batches ([[pipelines.schema]] tables)")]
    ColumnarNeedsSchema {
        pipeline: String,
        key: String,
        function: String,
        version: String,
    },
    #[error("pipeline {pipeline}: {source}")]
    Schema {
        pipeline: String,
        source: crate::config::ConfigError,
    },
    #[error("pipeline {pipeline}: {source}")]
    Transactions {
        pipeline: String,
        source: Box<crate::txn::TxnError>,
    },
    #[error("pipeline {pipeline}: cannot start a thread: {source}")]
    Thread {
        pipeline: String,
        source: std::io::Error,
    },
}

pub struct PipelineHandle {
    pub name: String,
    pub group: String,
    pub stats: Arc<PipelineStats>,
    pub trackers: Arc<Trackers>,
    pub slot: Arc<FunctionSlot>,
    /// Set for `delivery = "exactly-once"`.
    pub txn: Option<Arc<Transactions>>,
    thread: JoinHandle<()>,
}

impl PipelineHandle {
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// What a sandbox thread gets: a decoded record, or one that cannot reach
/// the function and goes to the dead-letter topic in its partition's order.
enum Work {
    Record(InputRecord),
    Poison(Box<Poison>),
}

struct Inbound {
    work: Work,
    tracker: Arc<PartitionTracker>,
}

impl Inbound {
    /// Key, value and header bytes, as a tenant's bytes quota counts them.
    fn size(&self) -> usize {
        match &self.work {
            Work::Record(r) => input_size(r),
            Work::Poison(p) => {
                p.raw.key.as_ref().map_or(0, Vec::len) + p.raw.value.as_ref().map_or(0, Vec::len)
            }
        }
    }

    fn offset(&self) -> i64 {
        match &self.work {
            Work::Record(r) => r.offset,
            Work::Poison(p) => p.raw.offset,
        }
    }
}

/// Starts the pipeline's threads. Returns once the consumer has subscribed.
/// `exactly_once`: the pipeline gets its own transactional producer
/// (initialised here, so a broker that cannot do transactions fails start-up)
/// and `sink` is not used for it.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    pipeline: &PipelineConfig,
    kafka: &KafkaConfig,
    runtime: &RuntimeConfig,
    slot: Arc<FunctionSlot>,
    sink: Arc<Sink>,
    shutdown: Arc<Shutdown>,
    tenant: Option<Arc<quota::TenantLimiter>>,
    exactly_once: Option<&TxnSetup>,
) -> Result<PipelineHandle, PipelineError> {
    if pipeline.tombstones == TombstoneMode::Function {
        if let Some(f) = slot.get() {
            check_tombstones(&pipeline.name, None, &f)?;
        }
        *slot
            .needs_null_values
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(pipeline.name.clone());
    }
    // Parsed once per pipeline; every lane's runner shares it.
    let schema = pipeline
        .arrow_schema(None)
        .map_err(|source| PipelineError::Schema {
            pipeline: pipeline.name.clone(),
            source,
        })?;
    if let Some(f) = slot.get() {
        check_columnar(&pipeline.name, None, schema.is_some(), &f)?;
    }
    *slot
        .schema_declared
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((pipeline.name.clone(), schema.is_some()));
    let trackers = Arc::new(Trackers::default());
    let stats = Arc::new(PipelineStats::default());
    let lanes = Arc::new(Lanes::new(pipeline.concurrency.max(1)));
    let drain_timeout = Duration::from_millis(runtime.drain_timeout_ms);
    let group = crate::kafka::group_id(kafka, pipeline);
    let txn = match exactly_once {
        None => None,
        Some(setup) => Some(Arc::new(
            Transactions::start(
                &pipeline.name,
                setup,
                kafka,
                trackers.clone(),
                stats.clone(),
                shutdown.fatal.clone(),
            )
            .map_err(|source| PipelineError::Transactions {
                pipeline: pipeline.name.clone(),
                source: Box::new(source),
            })?,
        )),
    };
    let sink = txn.as_ref().map_or(sink, |t| t.sink.clone());
    let context = SourceContext {
        pipeline: pipeline.name.clone(),
        trackers: trackers.clone(),
        revoke_timeout: drain_timeout.min(crate::kafka::max_poll_interval(kafka) / 2),
        stats: stats.clone(),
        shutdown_deadline: Default::default(),
        lanes: lanes.clone(),
        revoke_hook: Default::default(),
    };
    if let Some(t) = &txn {
        let hook: Arc<dyn crate::source::RevokeHook> = t.clone();
        let _ = context.revoke_hook.set(hook);
    }
    let consumer: BaseConsumer<SourceContext> =
        crate::kafka::consumer_config(kafka, pipeline, runtime)
            .create_with_context(context)
            .map_err(|source| PipelineError::Consumer {
                pipeline: pipeline.name.clone(),
                source: Box::new(source),
            })?;
    let consumer = Arc::new(consumer);
    let _ = lanes.consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<String> = pipeline.input_topics.clone();
    if slot.get().is_some() {
        subscribe(&consumer, &pipeline.name, &topics)?;
    }

    let target = Arc::new(SinkTarget {
        pipeline: pipeline.name.clone(),
        output_topics: pipeline.output_topics.clone(),
        dead_letter_topic: pipeline.dead_letter_topic.clone(),
        group: group.clone(),
    });
    let panic_at: Option<i64> = std::env::var(FAULT_PANIC_AT_OFFSET)
        .ok()
        .and_then(|v| v.trim().parse().ok());
    if let Some(at) = panic_at {
        tracing::warn!(pipeline = %pipeline.name, offset = at, "fault injection on: the sandbox thread panics at this offset");
    }

    let episodes = Arc::new(quota::Episodes::new(
        &pipeline.name,
        tenant.as_deref(),
        stats.clone(),
    ));
    let mut workers = Vec::with_capacity(lanes.inboxes.len());
    for (lane, inbox) in lanes.inboxes.iter().enumerate() {
        let ctx = LaneContext {
            gate: quota::Gate::new(tenant.clone(), episodes.clone(), stats.clone()),
            consumer: Arc::downgrade(&consumer),
            lane,
            slot: slot.clone(),
            sink: sink.clone(),
            target: target.clone(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            inbox: inbox.clone(),
            trackers: trackers.clone(),
            batch_size: pipeline.batch_size,
            tombstones: pipeline.tombstones,
            schema: schema.clone(),
            panic_at,
            txn: txn.clone(),
            txn_epoch: std::cell::Cell::new(u64::MAX),
            out_bytes: std::cell::Cell::new(0),
        };
        let w = std::thread::Builder::new()
            .name(format!("sandbox-{}-{lane}", pipeline.name))
            .spawn(move || sandbox_lane(ctx))
            .map_err(|source| PipelineError::Thread {
                pipeline: pipeline.name.clone(),
                source,
            })?;
        workers.push(w);
    }

    let name = pipeline.name.clone();
    let thread_stats = stats.clone();
    let thread_trackers = trackers.clone();
    let thread_slot = slot.clone();
    let thread_txn = txn.clone();
    let thread = std::thread::Builder::new()
        .name(format!("consumer-{}", pipeline.name))
        .spawn(move || {
            let run = AssertUnwindSafe(|| {
                consumer_thread(
                    &name,
                    &consumer,
                    &thread_slot,
                    &topics,
                    &thread_trackers,
                    &lanes,
                    workers,
                    &thread_stats,
                    &shutdown,
                    drain_timeout,
                    thread_txn.as_deref(),
                )
            });
            if let Err(p) = catch_unwind(run) {
                let why = format!("consumer thread panicked: {}", panic_message(&*p));
                thread_stats.thread_died(why.clone());
                shutdown
                    .fatal
                    .thread_died(format!("pipeline {name}: {why}"));
            }
        })
        .map_err(|source| PipelineError::Thread {
            pipeline: pipeline.name.clone(),
            source,
        })?;

    Ok(PipelineHandle {
        name: pipeline.name.clone(),
        group,
        stats,
        trackers,
        slot,
        txn,
        thread,
    })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

#[allow(clippy::too_many_arguments)]
fn consumer_thread(
    name: &str,
    consumer: &BaseConsumer<SourceContext>,
    slot: &FunctionSlot,
    topics: &[String],
    trackers: &Trackers,
    lanes: &Lanes,
    workers: Vec<JoinHandle<()>>,
    stats: &PipelineStats,
    shutdown: &Shutdown,
    drain_timeout: Duration,
    txn: Option<&Transactions>,
) {
    if wait_for_function(name, consumer, slot, topics, shutdown) {
        consume_loop(name, consumer, trackers, lanes, shutdown, txn);
    }
    // One deadline for the whole stop: lanes finishing their batch, the
    // producer's acks, and any revoke the consumer's close triggers.
    let deadline = Instant::now() + drain_timeout;
    *consumer
        .context()
        .shutdown_deadline
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
    for w in workers {
        while !w.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if w.is_finished() {
            let _ = w.join();
        } else {
            tracing::warn!(
                pipeline = name,
                "a sandbox thread is still in a batch at the drain deadline; its records will be processed again"
            );
        }
    }
    for t in trackers.all() {
        if !t.wait_drained(deadline.saturating_duration_since(Instant::now())) {
            tracing::warn!(pipeline = %name, topic = %t.topic, partition = t.partition, in_flight = t.in_flight(), "records still unacknowledged at shutdown; they will be processed again");
        }
    }
    if let Some(txn) = txn {
        // The lanes are done: what they enqueued commits now, or, after a
        // fatal error, nothing of it does.
        if shutdown.fatal.get().is_some() {
            txn.abort(consumer, "stopping on a fatal error");
        } else if txn.commit(consumer, "stop") {
            tracing::info!(pipeline = %name, "final transaction committed");
        }
        lanes.clear();
        consumer.unsubscribe();
        tracing::info!(pipeline = %name, stats = ?stats.snapshot(), transactions = ?stats.transactions, "pipeline stopped");
        return;
    }
    // The partition queues hold the consumer: it closes (and leaves the
    // group) only once they are gone.
    lanes.clear();
    trackers.store_offsets(consumer);
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(pipeline = %name, "final offsets committed"),
        // NoOffset: auto-commit already sent every stored watermark.
        Err(e) => tracing::debug!(pipeline = %name, error = %e, "final commit: nothing new"),
    }
    consumer.unsubscribe();
    tracing::info!(pipeline = %name, stats = ?stats.snapshot(), "pipeline stopped");
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
    shutdown: &Shutdown,
) -> bool {
    if slot.get().is_some() && consumer.subscription().is_ok_and(|s| s.count() > 0) {
        return true;
    }
    tracing::info!(
        pipeline = name,
        "no function activated yet; waiting before joining the group"
    );
    while slot.get().is_none() {
        if shutdown.stopping() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match subscribe(consumer, name, topics) {
        Ok(()) => true,
        Err(e) => {
            shutdown.fatal.set(e.to_string());
            false
        }
    }
}

/// Serves the group: rebalances, heartbeats, statistics and offset commits,
/// every 100 ms however busy the sandbox threads are, and stores the
/// acknowledged watermarks. Records never arrive here: each partition's queue
/// is split off before its assignment starts fetching.
fn consume_loop(
    name: &str,
    consumer: &BaseConsumer<SourceContext>,
    trackers: &Trackers,
    lanes: &Lanes,
    shutdown: &Shutdown,
    txn: Option<&Transactions>,
) {
    let mut last_store = Instant::now();
    // Exactly-once: a short poll so a transaction commits close to its
    // interval (the lanes wait while one is full).
    let poll = Duration::from_millis(if txn.is_some() { 5 } else { 100 });
    while !shutdown.stopping() {
        if let Some(t) = txn {
            if t.due() {
                t.commit(consumer, "interval");
            }
        }
        match consumer.poll(poll) {
            None => {}
            // A fatal consumer error (e.g. a static member fenced by a
            // newer one with its `group.instance.id`) ends the consumer: it
            // would sit there looking alive and fetch nothing. Stop, commit
            // nothing more, and let the next start rejoin.
            Some(Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_))) => {
                shutdown
                    .fatal
                    .set(format!("pipeline {name}: fatal consumer error: {e}"));
            }
            Some(Err(e)) => tracing::warn!(pipeline = name, error = %e, "consumer error"),
            Some(Ok(msg)) => {
                // Only if a partition was assigned without its queue split
                // (librdkafka assigning on its own): split it now and read the
                // record again from there, so its order holds.
                let (topic, partition, offset) =
                    (msg.topic().to_string(), msg.partition(), msg.offset());
                drop(msg);
                tracing::warn!(pipeline = name, topic = %topic, partition, offset, "a record reached the consumer's own queue; moving its partition to a sandbox thread");
                if lanes.attach(&topic, partition) {
                    if let Err(e) = consumer.seek(
                        &topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(5),
                    ) {
                        tracing::warn!(pipeline = name, topic = %topic, partition, error = %e, "seek back failed");
                    }
                }
            }
        }
        if txn.is_none() && last_store.elapsed() >= Duration::from_millis(100) {
            trackers.store_offsets(consumer);
            last_store = Instant::now();
        }
    }
    tracing::info!(
        pipeline = name,
        "stopped fetching; draining in-flight records"
    );
}

/// What one sandbox thread works with.
struct LaneContext {
    lane: usize,
    /// Tenant quota, CPU share and backoff of this lane.
    gate: quota::Gate,
    /// To pause the lane's partitions while its gate holds it.
    consumer: std::sync::Weak<BaseConsumer<SourceContext>>,
    slot: Arc<FunctionSlot>,
    sink: Arc<Sink>,
    target: Arc<SinkTarget>,
    stats: Arc<PipelineStats>,
    shutdown: Arc<Shutdown>,
    inbox: Arc<LaneInbox>,
    trackers: Arc<Trackers>,
    batch_size: usize,
    tombstones: TombstoneMode,
    /// The declared schema a columnar function's batches are decoded into.
    schema: Option<arrow_schema::SchemaRef>,
    panic_at: Option<i64>,
    txn: Option<Arc<Transactions>>,
    /// The transaction epoch this lane last contributed to: it switches
    /// function versions only once that transaction is over.
    txn_epoch: std::cell::Cell<u64>,
    /// Bytes the current batch produced (outputs and dead letters), for the
    /// tenant's bytes quota; added up only when the tenant has one.
    out_bytes: std::cell::Cell<u64>,
}

impl LaneContext {
    fn charge_output(&self, bytes: impl FnOnce() -> usize) {
        if self.gate.charges_output() {
            self.out_bytes.set(self.out_bytes.get() + bytes() as u64);
        }
    }
}

type LaneRunner = Option<(u64, Runner, Arc<VersionStats>)>;

/// Takes up to a batch of records from the lane's partition queues, starting
/// with a different partition each time so none waits behind the others.
fn take_batch(
    ctx: &LaneContext,
    feeds: &[Arc<PartitionFeed>],
    start: usize,
    cache: &mut TrackerCache,
    batch: &mut Vec<Inbound>,
) {
    let n = feeds.len();
    let limit = ctx.gate.batch_limit(ctx.batch_size);
    for i in 0..n {
        let feed = &feeds[(start + i) % n];
        while batch.len() < limit {
            let msg = match feed.queue.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(pipeline = %ctx.target.pipeline, topic = %feed.topic, partition = feed.partition, error = %e, "consumer error");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            let Some(tracker) = cache.get(&ctx.trackers, msg.topic(), msg.partition()) else {
                // Revoked since it was fetched: its next owner reads it.
                tracing::debug!(pipeline = %ctx.target.pipeline, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), "skipping a record of a revoked partition");
                continue;
            };
            ctx.stats.consumed.fetch_add(1, Ordering::Relaxed);
            let work = match record::from_message(&msg) {
                Ok(r) => Work::Record(r),
                Err(p) => {
                    tracing::warn!(pipeline = %ctx.target.pipeline, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %p.error, "record cannot reach the function; dead-lettering it");
                    Work::Poison(p)
                }
            };
            drop(msg);
            let item = Inbound { work, tracker };
            item.tracker.register(item.offset());
            batch.push(item);
        }
        if batch.len() >= limit {
            break;
        }
    }
}

fn sandbox_lane(mut ctx: LaneContext) {
    let mut batch: Vec<Inbound> = Vec::with_capacity(ctx.batch_size);
    let mut runner: LaneRunner = None;
    let mut cache = TrackerCache::new();
    let (mut known, mut feeds) = (u64::MAX, Vec::new());
    let mut start = 0usize;
    // Per partition of the batch: tracker, first and last offset.
    let mut started: Vec<(Arc<PartitionTracker>, i64, i64)> = Vec::new();
    // Apart from the context, which the quota wait borrows mutably.
    let txn = ctx.txn.clone();
    ctx.gate.start();
    while !ctx.shutdown.stopping() {
        if let Some((g, f)) = ctx.inbox.feeds_since(known) {
            (known, feeds) = (g, f);
        }
        // Exactly-once: from taking records to enqueueing their results,
        // so a transaction boundary never falls inside a batch.
        let txn_guard = txn.as_ref().map(|t| t.enter());
        if txn.as_ref().is_some_and(|t| t.full()) {
            drop(txn_guard);
            ctx.inbox.wait(Duration::from_millis(5));
            continue;
        }
        take_batch(&ctx, &feeds, start, &mut cache, &mut batch);
        if batch.is_empty() {
            drop(txn_guard);
            ctx.gate.idle();
            // Woken by a queue turning non-empty or a new assignment; the
            // timeout only bounds how late a stop is seen.
            ctx.inbox.wait(Duration::from_millis(100));
            continue;
        }
        start = start.wrapping_add(1);
        // A partition revoked while its records were being taken.
        batch.retain(|m| {
            let keep = !m.tracker.revoked();
            if !keep {
                m.tracker.abandon(m.offset());
            }
            keep
        });
        if batch.is_empty() {
            continue;
        }
        // At-least-once pays for a batch before running it. Exactly-once
        // pays after, outside the transaction gate: a quota wait inside it
        // would hold back the commit (and a revoke) for as long as the wait.
        if txn.is_none() {
            if !hold_for_quota(&mut ctx, &mut batch) {
                break;
            }
            if batch.is_empty() {
                continue;
            }
        }
        // The batch's first offset per partition (a batch spans a few), so
        // a panic can give up the rest: abandoning it abandons the later ones.
        started.clear();
        for m in &batch {
            match started
                .iter_mut()
                .find(|(t, _, _)| Arc::ptr_eq(t, &m.tracker))
            {
                Some(s) => s.2 = s.2.max(m.offset()),
                None => started.push((m.tracker.clone(), m.offset(), m.offset())),
            }
        }
        let (ran, before) = (batch.len(), lane_stats(&runner));
        let txn_bytes: u64 = match txn {
            Some(_) => batch.iter().map(|m| m.size() as u64).sum(),
            None => 0,
        };
        let run = AssertUnwindSafe(|| process_batch(&ctx, &mut runner, &mut batch));
        let result = catch_unwind(run);
        if let (Some(txn), true) = (&ctx.txn, result.is_ok()) {
            let spans: Vec<(&str, i32, i64, i64)> = started
                .iter()
                .map(|(t, first, last)| (t.topic.as_str(), t.partition, *first, *last))
                .collect();
            txn.record_batch(&spans);
            ctx.txn_epoch.set(txn.epoch());
        }
        drop(txn_guard);
        if let Err(p) = result {
            // Whatever of the batch was not acknowledged is read again.
            for (t, o, _) in started.drain(..) {
                t.abandon(o);
            }
            let why = format!(
                "sandbox thread {} panicked: {}",
                ctx.lane,
                panic_message(&*p)
            );
            ctx.stats.thread_died(why.clone());
            ctx.shutdown
                .fatal
                .thread_died(format!("pipeline {}: {why}", ctx.target.pipeline));
            batch.clear();
            break;
        }
        let after = lane_stats(&runner);
        // A new runner (function swap) starts its counters at zero.
        let (wasm, hits) = match (before, after) {
            (Some((g0, w0, h0)), Some((g1, w1, h1))) if g0 == g1 => (
                w1.saturating_sub(w0),
                quota::LimitHits {
                    resource: h1.resource.saturating_sub(h0.resource),
                    deadline: h1.deadline.saturating_sub(h0.deadline),
                },
            ),
            (_, Some((_, w, h))) => (w, h),
            (_, None) => (0, quota::LimitHits::default()),
        };
        ctx.gate.owe_output(ctx.out_bytes.take(), ran);
        ctx.gate.after_batch(wasm, ran, hits);
        batch.clear();
        if txn.is_some() && !pay_after(&mut ctx, ran, txn_bytes) {
            break;
        }
    }
    // Stopping (or dead): never start another record; what was not taken
    // stays in librdkafka, uncommitted, for the next owner.
    for m in batch.drain(..) {
        m.tracker.abandon(m.offset());
    }
}

/// The runner's generation, wasm time and cap hits so far.
fn lane_stats(runner: &LaneRunner) -> Option<(u64, u64, quota::LimitHits)> {
    runner.as_ref().map(|(g, r, _)| {
        let hits = quota::LimitHits {
            resource: r.stats.resource_hits,
            deadline: r.stats.deadline_hits,
        };
        (*g, r.stats.wasm_nanos, hits)
    })
}

/// The tenant's quota and the backoff, before a batch runs: false
/// when stopping. Records of a partition revoked meanwhile are given up.
fn hold_for_quota(ctx: &mut LaneContext, batch: &mut Vec<Inbound>) -> bool {
    let bytes: u64 = batch.iter().map(|m| m.size() as u64).sum();
    let LaneContext {
        gate,
        consumer,
        inbox,
        shutdown,
        ..
    } = ctx;
    gate.owe_input(batch.len(), bytes);
    gate.admit(
        consumer,
        inbox,
        || shutdown.stopping(),
        || {
            batch.retain(|m| {
                let keep = !m.tracker.revoked();
                if !keep {
                    m.tracker.abandon(m.offset());
                }
                keep
            });
            !batch.is_empty()
        },
    )
}

/// Exactly-once: the quota for a batch already run, waited for outside the
/// transaction gate. Returns false on stop.
fn pay_after(ctx: &mut LaneContext, records: usize, bytes: u64) -> bool {
    let LaneContext {
        gate,
        consumer,
        inbox,
        shutdown,
        ..
    } = ctx;
    gate.owe_input(records, bytes);
    gate.admit(consumer, inbox, || shutdown.stopping(), || true)
}

/// How one record of a batch is handled.
enum Plan {
    /// The next result of the function batch.
    Function,
    /// A tombstone handled by the pipeline's `tombstones` setting.
    Tombstone(InputRecord),
    Poison(Box<Poison>),
}

fn process_batch(ctx: &LaneContext, runner: &mut LaneRunner, batch: &mut Vec<Inbound>) {
    if let Some(at) = ctx.panic_at {
        if batch.iter().any(|m| m.offset() == at) {
            panic!("fault injection: {FAULT_PANIC_AT_OFFSET}={at}");
        }
    }
    // The batch boundary: the only place a lane changes function.
    // Exactly-once: not while the open transaction holds this lane's
    // records of the old version (see `txn_epoch`).
    let may_switch = ctx
        .txn
        .as_ref()
        .is_none_or(|t| ctx.txn_epoch.get() != t.epoch());
    if runner
        .as_ref()
        .is_none_or(|(g, _, _)| *g != ctx.slot.generation() && may_switch)
    {
        if let (generation, Some(f)) = ctx.slot.get_with_generation() {
            if let Some((_, old, _)) = &runner {
                tracing::info!(pipeline = %ctx.target.pipeline, from = %old.function().version, to = %f.version, "switching function version");
            }
            let vstats = ctx.stats.version(&f);
            *runner = Some((
                generation,
                Runner::new(f).with_schema(ctx.schema.clone()),
                vstats,
            ));
        }
    }
    let Some((_, runner, stats)) = runner.as_mut() else {
        // Records arrive only after the slot is filled; if not, give them up.
        for m in batch.drain(..) {
            m.tracker.abandon(m.offset());
        }
        return;
    };
    let function = runner.function().clone();
    let mut inputs = Vec::with_capacity(batch.len());
    let mut plans = Vec::with_capacity(batch.len());
    for m in batch.drain(..) {
        let offset = m.offset();
        let plan = match m.work {
            Work::Record(r) if r.value.is_none() && ctx.tombstones != TombstoneMode::Function => {
                Plan::Tombstone(r)
            }
            Work::Record(r) => {
                inputs.push(r);
                Plan::Function
            }
            Work::Poison(p) => Plan::Poison(p),
        };
        plans.push((plan, m.tracker, offset));
    }
    // Spans only when an OTLP exporter runs: otherwise this is one load.
    let tracer = otel::get();
    let spans: Vec<otel::RecordSpan> = match tracer {
        Some(o) => inputs
            .iter()
            .map(|i| {
                o.record_span(
                    i,
                    &ctx.target.pipeline,
                    &ctx.target.group,
                    &function.version,
                )
            })
            .collect(),
        None => Vec::new(),
    };
    let started = Instant::now();
    let n_inputs = inputs.len();
    let results = if inputs.is_empty() {
        Vec::new()
    } else {
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
        results
    };
    let mut done = inputs.into_iter().zip(results);
    let mut spans = spans.into_iter();
    for (plan, tracker, offset) in plans {
        match plan {
            Plan::Function => {
                let Some((input, result)) = done.next() else {
                    // The runner returns one result per input; if not, the
                    // record is read again rather than lost.
                    tracker.abandon(offset);
                    continue;
                };
                let span = spans.next();
                let traceparent = span.as_ref().map(|s| s.traceparent.as_str());
                let (disposition, err) =
                    deliver(ctx, &function, input, &tracker, result, traceparent, stats);
                if let Some(span) = span {
                    match (&disposition, &err) {
                        (_, Some(e)) => span.end(Some(e.kind()), 0),
                        (Disposition::Produced(n), None) => span.end(None, *n),
                        _ => span.end(None, 0),
                    }
                }
            }
            Plan::Tombstone(r) => tombstone(ctx, &function, r, &tracker, stats),
            Plan::Poison(p) => dead_letter_poison(ctx, &function, *p, &tracker, stats),
        }
    }
    let elapsed = started.elapsed();
    if n_inputs > 0 {
        stats.process_duration.observe(elapsed, n_inputs as u64);
    }
}

/// `tombstones` other than `"function"`: pass and dead-letter go through the
/// sink (the offset is stored only after the broker's ack), drop completes.
fn tombstone(
    ctx: &LaneContext,
    function: &Arc<Function>,
    r: InputRecord,
    tracker: &Arc<PartitionTracker>,
    stats: &VersionStats,
) {
    match ctx.tombstones {
        TombstoneMode::Pass => {
            if let Some(why) = refused_before(ctx, &r) {
                deliver(
                    ctx,
                    function,
                    r,
                    tracker,
                    Err(RecordError::ProduceRejected(why)),
                    None,
                    stats,
                );
                return;
            }
            // Unchanged and unstamped: no function produced it.
            ctx.charge_output(|| input_size(&r));
            if let Disposition::Produced(n) =
                ctx.sink.forward(&ctx.target, function, r, tracker, None)
            {
                stats.produced.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        TombstoneMode::Drop => {
            tracker.complete(r.offset);
            stats.filtered.fetch_add(1, Ordering::Relaxed);
        }
        // `Function` is never routed here (its tombstones go to the function);
        // dead-lettering keeps one visible should that ever change.
        TombstoneMode::DeadLetter | TombstoneMode::Function => {
            deliver(
                ctx,
                function,
                r,
                tracker,
                Err(RecordError::Tombstone),
                None,
                stats,
            );
        }
    }
}

/// Dead-letters a record that could not be decoded, its headers byte for byte.
fn dead_letter_poison(
    ctx: &LaneContext,
    function: &Function,
    p: Poison,
    tracker: &Arc<PartitionTracker>,
    stats: &VersionStats,
) {
    ctx.charge_output(|| {
        p.raw.key.as_ref().map_or(0, Vec::len) + p.raw.value.as_ref().map_or(0, Vec::len)
    });
    ctx.sink
        .dead_letter_raw(&ctx.target, Some(function), p.raw, tracker, &p.error);
    count_dead_letter(stats, &p.error);
}

/// Exactly-once: an output of this input was refused in a transaction that
/// aborted; its replay dead-letters it (`produce-rejected`) instead.
fn refused_before(ctx: &LaneContext, input: &InputRecord) -> Option<String> {
    ctx.txn
        .as_ref()?
        .faults
        .take_refused(&input.topic, input.partition, input.offset)
}

/// The one call into the sink, with the counting of what happened.
fn deliver(
    ctx: &LaneContext,
    function: &Arc<Function>,
    input: InputRecord,
    tracker: &Arc<PartitionTracker>,
    result: RecordResult,
    traceparent: Option<&str>,
    stats: &VersionStats,
) -> (Disposition, Option<RecordError>) {
    let offset = input.offset;
    let result = match (refused_before(ctx, &input), &ctx.txn, result) {
        (Some(why), _, _) => Err(RecordError::ProduceRejected(why)),
        (None, Some(txn), Ok(outs)) => txn
            .check_sizes(&ctx.target.output_topics[0], &outs)
            .map(|()| outs)
            .map_err(RecordError::ProduceRejected),
        (None, _, result) => result,
    };
    // What the tenant writes: its outputs as returned, or the input its
    // dead letter carries (the worker's own headers are not counted).
    ctx.charge_output(|| match &result {
        Ok(outs) => outs.iter().map(crate::sandbox::output_size).sum(),
        Err(_) => input_size(&input),
    });
    let (disposition, err) =
        ctx.sink
            .deliver(&ctx.target, function, input, tracker, result, traceparent);
    match disposition {
        Disposition::Produced(n) => {
            stats.produced.fetch_add(n as u64, Ordering::Relaxed);
        }
        Disposition::Filtered => {
            stats.filtered.fetch_add(1, Ordering::Relaxed);
        }
        Disposition::DeadLettered => {
            if let Some(e) = &err {
                count_dead_letter(stats, e);
                // Once per record: a record replayed after a batch trap has
                // one result, so one line, one dead letter, one count.
                if !matches!(e, RecordError::Tombstone) {
                    function.log_record_error(
                        &ctx.target.pipeline,
                        &tracker.topic,
                        tracker.partition,
                        offset,
                        e,
                    );
                }
            }
        }
    }
    (disposition, err)
}

fn input_size(r: &InputRecord) -> usize {
    r.key.as_ref().map_or(0, |k| k.len())
        + r.value.as_ref().map_or(0, |v| v.len())
        + r.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

fn count_dead_letter(stats: &VersionStats, e: &RecordError) {
    stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    if !matches!(
        e.kind(),
        "invalid-input" | "failed" | "unknown-topic" | "tombstone" | "produce-rejected"
    ) {
        stats.traps.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(i) = crate::sandbox::ERROR_KINDS
        .iter()
        .position(|k| *k == e.kind())
    {
        stats.errors_by_kind[i].fetch_add(1, Ordering::Relaxed);
    }
}
