//! Exactly-once pipelines: one Kafka transaction per unit of work (KIP-447).
//!
//! Each exactly-once pipeline has its own transactional producer (a
//! [`Sink`] created with [`Sink::create_transactional`]); its outputs, its
//! dead letters and its input offsets (`send_offsets_to_transaction` with the
//! consumer's group metadata) commit together or not at all.
//!
//! ```text
//! lanes:  gate.read ─ take batch ─ run ─ enqueue ─ record offsets ─ release
//! consumer thread, every transaction_interval_ms / transaction_max_records,
//! on revoke and on stop:
//!         gate.write ─ send offsets ─ commit ─ begin   (or abort ─ seek back)
//! ```
//! The gate makes the boundary exact: while the consumer thread holds it no
//! lane is between taking a record and enqueueing its results, so every
//! record taken is either wholly in the transaction or not taken yet.
//!
//! Abort: the producer purges what it still holds, the broker discards the
//! rest (readers use `read_committed`), and every partition the transaction
//! touched is sought back to the first offset it processed, the next offset
//! after the last commit. librdkafka bumps the partition's fetch version on
//! seek, so records fetched before it, still in the partition's split-off
//! queue, are dropped when polled: nothing is skipped and nothing doubled.
//!
//! Fencing: a producer fenced by a newer instance with the same
//! `transactional.id` gets a fatal error; the process logs one line and
//! exits 3 without committing. A zombie whose partitions moved to another
//! member while it was stopped is fenced by the group generation carried in
//! the offsets (KIP-447): its `send_offsets_to_transaction` fails, the
//! transaction aborts, and it rejoins with a new generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::RECORD_OVERHEAD_BYTES;
use crate::sandbox::OutputRecord;
use crate::sink::{is_fencing, Fatal, Sink, TxnFaults};
use crate::source::{RevokeHook, SourceContext, Trackers};

/// Hidden fault injection for the abort test: the first transaction that
/// contains the record at this offset (any partition) fails once, after its
/// records were produced, so it aborts and rewinds.
pub const FAULT_ABORT_TXN_AT_OFFSET: &str = "PIPELINE_WORKER_FAULT_ABORT_TXN_AT_OFFSET";

/// Aborts in a row (no commit in between) before the process stops: past
/// that something keeps failing (e.g. a dead-letter topic not writable) and
/// replaying again would not help.
pub const MAX_CONSECUTIVE_ABORTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("{key} = \"exactly-once\": the brokers at {brokers} did not initialise transactions for transactional.id {transactional_id} within {timeout:?} (Kafka 2.5+ with transactions enabled is needed; on a single broker set transaction.state.log.replication.factor=1 and transaction.state.log.min.isr=1): {source}")]
    Init {
        key: String,
        brokers: String,
        transactional_id: String,
        timeout: Duration,
        source: Box<KafkaError>,
    },
    #[error("{key} = \"exactly-once\": cannot create the transactional producer: {source}")]
    Producer {
        key: String,
        source: Box<KafkaError>,
    },
}

/// What the open transaction holds.
#[derive(Default)]
struct Open {
    /// Per partition: first offset processed in this transaction (where an
    /// abort rewinds to) and the next offset after the last one (what a
    /// commit stores).
    partitions: Vec<(String, i32, i64, i64)>,
    started: Option<Instant>,
}

/// The transaction coordinator of one exactly-once pipeline.
pub struct Transactions {
    pub pipeline: String,
    pub transactional_id: String,
    /// The pipeline's transactional sink; lanes produce through it.
    pub sink: Arc<Sink>,
    pub faults: Arc<TxnFaults>,
    pub stats: Arc<crate::stats::PipelineStats>,
    gate: RwLock<()>,
    open: Mutex<Open>,
    records: AtomicUsize,
    /// Bumped at every commit and abort: a lane that contributed in the
    /// current epoch does not switch function versions.
    epoch: AtomicU64,
    consecutive_aborts: AtomicU32,
    interval: Duration,
    max_records: usize,
    op_timeout: Duration,
    trackers: Arc<Trackers>,
    fatal: Arc<Fatal>,
    fault_at: Option<i64>,
    fault_fired: AtomicBool,
    /// Output topics' `max.message.bytes`, read at start-up.
    topic_limits: HashMap<String, usize>,
}

pub struct TxnSetup {
    /// `pipelines[i].delivery`, for errors.
    pub key: String,
    pub transactional_id: String,
    pub interval: Duration,
    pub max_records: usize,
    /// Bound on init, commit and abort calls.
    pub op_timeout: Duration,
    /// The producer's `message.max.bytes` (dead letters are cut to fit).
    pub message_max_bytes: usize,
    /// The pipeline's output topics, whose size limits are read at start.
    pub output_topics: Vec<String>,
}

impl Transactions {
    /// Creates the transactional producer and initialises transactions:
    /// fences any earlier producer with the same id and aborts what it left
    /// open, then begins the first transaction.
    pub fn start(
        pipeline: &str,
        setup: &TxnSetup,
        kafka: &crate::config::KafkaConfig,
        trackers: Arc<Trackers>,
        stats: Arc<crate::stats::PipelineStats>,
        fatal: Arc<Fatal>,
    ) -> Result<Self, TxnError> {
        let faults = Arc::new(TxnFaults::new(&setup.transactional_id));
        let config = crate::kafka::transactional_producer_config(kafka, &setup.transactional_id);
        let sink = Sink::create_transactional(
            &config,
            fatal.clone(),
            setup.message_max_bytes,
            faults.clone(),
        )
        .map_err(|source| TxnError::Producer {
            key: setup.key.clone(),
            source: Box::new(source),
        })?;
        let init = sink
            .producer()
            .init_transactions(setup.op_timeout)
            .and_then(|()| sink.producer().begin_transaction());
        if let Err(source) = init {
            return Err(TxnError::Init {
                key: setup.key.clone(),
                brokers: kafka.brokers.clone(),
                transactional_id: setup.transactional_id.clone(),
                timeout: setup.op_timeout,
                source: Box::new(source),
            });
        }
        let fault_at: Option<i64> = std::env::var(FAULT_ABORT_TXN_AT_OFFSET)
            .ok()
            .and_then(|v| v.trim().parse().ok());
        if let Some(at) = fault_at {
            tracing::warn!(
                pipeline,
                offset = at,
                "fault injection on: the transaction holding this offset aborts once"
            );
        }
        tracing::info!(pipeline, transactional_id = %setup.transactional_id, "exactly-once: transactions initialised");
        Ok(Self {
            pipeline: pipeline.to_string(),
            transactional_id: setup.transactional_id.clone(),
            sink: Arc::new(sink),
            faults,
            stats,
            gate: RwLock::new(()),
            open: Mutex::default(),
            records: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            consecutive_aborts: AtomicU32::new(0),
            interval: setup.interval,
            max_records: setup.max_records,
            op_timeout: setup.op_timeout,
            trackers,
            fatal,
            fault_at,
            fault_fired: AtomicBool::new(false),
            topic_limits: topic_limits(kafka, &setup.output_topics, setup.op_timeout),
        })
    }

    /// An output the broker would refuse for its topic's `max.message.bytes`
    /// is refused here, before it enters a producer batch: a refusal inside
    /// a transaction aborts it, and the broker refuses a whole batch, so the
    /// records sharing it would be dead-lettered with it on replay.
    pub fn check_sizes(&self, default_topic: &str, outs: &[OutputRecord]) -> Result<(), String> {
        if self.topic_limits.is_empty() {
            return Ok(());
        }
        for (i, o) in outs.iter().enumerate() {
            let topic = o.topic.as_deref().unwrap_or(default_topic);
            let Some(&limit) = self.topic_limits.get(topic) else {
                continue;
            };
            let size = o.key.as_ref().map_or(0, Vec::len)
                + o.value.as_ref().map_or(0, Vec::len)
                + o.headers
                    .iter()
                    .map(|h| h.key.len() + h.value.len())
                    .sum::<usize>()
                + RECORD_OVERHEAD_BYTES;
            if size > limit {
                return Err(format!(
                    "output {i} to topic {topic}: about {size} bytes with record overhead, over the topic's max.message.bytes ({limit})"
                ));
            }
        }
        Ok(())
    }

    /// Held by a lane from taking a batch until its results are enqueued.
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The open transaction has all the records it may take.
    pub fn full(&self) -> bool {
        self.records.load(Ordering::Acquire) >= self.max_records
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A lane's processed batch: per partition its first and last offset.
    /// Called under the gate, once per batch.
    pub fn record_batch(&self, spans: &[(&str, i32, i64, i64)]) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.started.get_or_insert_with(Instant::now);
        let mut n = 0usize;
        for &(topic, partition, first, last) in spans {
            n += (last - first + 1).max(1) as usize;
            match open
                .partitions
                .iter_mut()
                .find(|(t, p, _, _)| *p == partition && t == topic)
            {
                Some(e) => e.3 = e.3.max(last + 1),
                None => open
                    .partitions
                    .push((topic.to_string(), partition, first, last + 1)),
            }
            if let (Some(at), false) = (self.fault_at, self.fault_fired.load(Ordering::Relaxed)) {
                if (first..=last).contains(&at) && !self.fault_fired.swap(true, Ordering::AcqRel) {
                    self.faults.fail(format!(
                        "fault injection: {FAULT_ABORT_TXN_AT_OFFSET}={at} ({topic}/{partition})"
                    ));
                }
            }
        }
        drop(open);
        self.records.fetch_add(n, Ordering::AcqRel);
    }

    /// Time or size says the open transaction should commit.
    pub fn due(&self) -> bool {
        if self.records.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.full()
            || self
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .started
                .is_some_and(|s| s.elapsed() >= self.interval)
    }

    /// Commits the open transaction (aborts and rewinds it when anything in
    /// it failed). Waits for lanes to finish the batch they are in. Returns
    /// false when it aborted or the pipeline must stop.
    pub fn commit<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        why: &str,
    ) -> bool {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if self.fatal.get().is_some() {
            self.abort_locked(consumer, "the worker is stopping on a fatal error");
            return false;
        }
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        if open.partitions.is_empty() {
            return true;
        }
        if let Some(failure) = self.faults.take_failure() {
            self.restore(open);
            self.abort_locked(consumer, &failure);
            return false;
        }
        let started = Instant::now();
        let mut offsets = TopicPartitionList::with_capacity(open.partitions.len());
        for (t, p, _, next) in &open.partitions {
            let _ = offsets.add_partition_offset(t, *p, Offset::Offset(*next));
        }
        let producer = self.sink.producer();
        let result = match consumer.group_metadata() {
            // Not a member right now (between generations): abort and
            // replay once the group has us again.
            None => Err(KafkaError::Global(
                rdkafka::error::RDKafkaErrorCode::InvalidGroupId,
            )),
            Some(cgm) => producer
                .send_offsets_to_transaction(&offsets, &cgm, self.op_timeout)
                .and_then(|()| producer.commit_transaction(self.op_timeout)),
        };
        // A delivery refused while commit flushed: commit already failed,
        // or the refusal must still abort (it is remembered for the replay).
        let late = self.faults.take_failure();
        match (result, late) {
            (Ok(()), None) => {
                let micros = started.elapsed().as_micros() as u64;
                self.stats
                    .transactions
                    .committed
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .transactions
                    .commit_micros
                    .fetch_add(micros, Ordering::Relaxed);
                self.consecutive_aborts.store(0, Ordering::Relaxed);
                let records = self.records.swap(0, Ordering::AcqRel);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                tracing::debug!(pipeline = %self.pipeline, records, partitions = open.partitions.len(), micros, why, "transaction committed");
                if let Err(e) = producer.begin_transaction() {
                    self.fail_hard(&e);
                    return false;
                }
                true
            }
            (Ok(()), Some(failure)) => {
                // Cannot happen (a failed delivery fails the commit); if it
                // did, the transaction is committed and only the log says so.
                tracing::error!(pipeline = %self.pipeline, failure, "a failure was reported after the transaction committed");
                self.records.store(0, Ordering::Release);
                self.epoch.fetch_add(1, Ordering::AcqRel);
                let _ = producer.begin_transaction();
                true
            }
            (Err(e), late) => {
                if is_fatal(&e) {
                    self.fail_hard(&e);
                    return false;
                }
                let why = late.map_or_else(
                    || match fenced_by_group(&e) {
                        true => format!("fenced by the group generation (KIP-447): another member owns these partitions now; nothing committed: {e}"),
                        false => format!("commit failed: {e}"),
                    },
                    |l| format!("{l} (commit: {e})"),
                );
                self.restore(open);
                self.abort_locked(consumer, &why);
                false
            }
        }
    }

    /// Puts the partitions back so that [`Self::abort_locked`] rewinds them.
    fn restore(&self, open: Open) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = open;
    }

    /// Aborts the open transaction and rewinds its partitions. The caller
    /// holds the gate.
    fn abort_locked<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        why: &str,
    ) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        let producer = self.sink.producer();
        if let Err(e) = producer.abort_transaction(self.op_timeout) {
            if is_fatal(&e) {
                self.fail_hard(&e);
            } else {
                self.fatal.set(format!(
                    "pipeline {}: cannot abort the transaction: {e}",
                    self.pipeline
                ));
            }
            return;
        }
        let _ = self.faults.take_failure();
        self.records.store(0, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.stats
            .transactions
            .aborted
            .fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_aborts.fetch_add(1, Ordering::AcqRel) + 1;
        for (topic, partition, first, _) in &open.partitions {
            if let Some(t) = self.trackers.get(topic, *partition) {
                t.reset();
            }
            // A revoked partition is not rewound: its next owner reads it
            // from the last committed offset.
            match consumer.seek(topic, *partition, Offset::Offset(*first), self.op_timeout) {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(pipeline = %self.pipeline, topic = %topic, partition, error = %e, "rewind seek failed (partition no longer assigned?)")
                }
            }
        }
        tracing::warn!(pipeline = %self.pipeline, transactional_id = %self.transactional_id, reason = why, partitions = open.partitions.len(), in_a_row = n, "transaction aborted; rewound to the last committed offsets");
        if n >= MAX_CONSECUTIVE_ABORTS {
            self.fatal.set(format!(
                "pipeline {}: {n} transactions aborted in a row, the last because {why}",
                self.pipeline
            ));
            return;
        }
        if self.fatal.get().is_none() {
            if let Err(e) = producer.begin_transaction() {
                self.fail_hard(&e);
                return;
            }
            // Whatever keeps failing gets a moment before the replay.
            std::thread::sleep(Duration::from_millis(50 << n.min(5)));
        }
    }

    /// Aborts without committing anything (stop on a fatal error).
    pub fn abort<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        why: &str,
    ) {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partitions
            .is_empty()
        {
            return;
        }
        self.abort_locked(consumer, why);
    }

    fn fail_hard(&self, e: &KafkaError) {
        let text = e.to_string();
        if is_fencing(&text) {
            self.fatal.set(self.faults.fenced_message(&text));
        } else {
            self.fatal.set(format!(
                "pipeline {}: transactional producer (transactional.id {}) fatal error: {text}",
                self.pipeline, self.transactional_id
            ));
        }
    }
}

/// `max.message.bytes` of each topic (DescribeConfigs). A topic whose limit
/// cannot be read is left to the broker (logged).
fn topic_limits(
    kafka: &crate::config::KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> HashMap<String, usize> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let mut out = HashMap::new();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        match crate::kafka::base_client_config(kafka).create() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create an admin client to read output topic limits");
                return out;
            }
        };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return out;
    };
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    match rt.block_on(admin.describe_configs(specs.iter(), &opts)) {
        Ok(results) => {
            for (topic, r) in topics.iter().zip(results) {
                let limit = r
                    .ok()
                    .and_then(|c| c.get("max.message.bytes").and_then(|e| e.value.clone()))
                    .and_then(|v| v.parse().ok());
                match limit {
                    Some(l) => {
                        out.insert(topic.clone(), l);
                    }
                    None => {
                        tracing::warn!(topic = %topic, "cannot read the topic's max.message.bytes; oversized outputs will abort a transaction before they are dead-lettered")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read output topic limits"),
    }
    out
}

/// The offsets commit was refused because this member's generation is over:
/// it was a zombie, and its transaction must not count.
fn fenced_by_group(e: &KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::IllegalGeneration | C::UnknownMemberId | C::FencedInstanceId)
    )
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(t) => t.is_fatal(),
        _ => false,
    }
}

impl RevokeHook for Transactions {
    fn on_revoke(&self, consumer: &BaseConsumer<SourceContext>, lost: bool) {
        if lost {
            // The partitions are someone else's already: committing their
            // offsets would be refused; nothing of this transaction counts.
            // A zombie's way back: its session ended while it was away.
            tracing::warn!(pipeline = %self.pipeline, transactional_id = %self.transactional_id, "assignment lost: fenced, the group gave these partitions to another member; committing nothing and rejoining");
            self.abort(
                consumer,
                "assignment lost: fenced, the group gave these partitions to another member",
            );
        } else if self.commit(consumer, "revoke") {
            tracing::info!(pipeline = %self.pipeline, "committed the open transaction before releasing revoked partitions");
        }
    }
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("pipeline", &self.pipeline)
            .field("transactional_id", &self.transactional_id)
            .finish()
    }
}
