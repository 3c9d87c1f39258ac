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
//!         gate.write ─ send offsets ─ wait for deliveries ─ commit ─ begin
//!                                          (or abort ─ seek back)
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

impl Open {
    /// Adds a batch's spans (per partition its first and last offset, the
    /// partition's batches in order); returns how many records they count.
    fn add(&mut self, spans: &[(&str, i32, i64, i64)]) -> usize {
        self.started.get_or_insert_with(Instant::now);
        let mut n = 0usize;
        for &(topic, partition, first, last) in spans {
            n += (last - first + 1).max(1) as usize;
            match self
                .partitions
                .iter_mut()
                .find(|(t, p, _, _)| *p == partition && t == topic)
            {
                Some(e) => e.3 = e.3.max(last + 1),
                None => self
                    .partitions
                    .push((topic.to_string(), partition, first, last + 1)),
            }
        }
        n
    }

    /// What a commit stores: per partition the next offset to read.
    fn commit_offsets(&self) -> TopicPartitionList {
        let mut offsets = TopicPartitionList::with_capacity(self.partitions.len());
        for (t, p, _, next) in &self.partitions {
            let _ = offsets.add_partition_offset(t, *p, Offset::Offset(*next));
        }
        offsets
    }
}

/// An output's size as the broker counts it against `max.message.bytes`.
fn output_size(o: &OutputRecord) -> usize {
    o.key.as_ref().map_or(0, Vec::len)
        + o.value.as_ref().map_or(0, Vec::len)
        + o.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
        + RECORD_OVERHEAD_BYTES
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

/// The time bounds of an exactly-once pipeline, derived together so that
/// they cannot contradict each other (see [`Timeouts::derive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The producer's `transaction.timeout.ms`: the broker aborts (and
    /// fences) a transaction open longer than this.
    pub transaction: Duration,
    /// Bound on each `send_offsets_to_transaction`, commit and abort.
    pub commit: Duration,
    /// Bound on `init_transactions` at start-up.
    pub init: Duration,
}

impl Timeouts {
    /// `init_transactions` waits for the transaction coordinator (and for
    /// it to abort a predecessor's open transaction, which it does at once);
    /// a broker that has not answered in this long cannot do transactions.
    pub const INIT: Duration = Duration::from_secs(15);

    /// From the producer's `transaction.timeout.ms` (already the derived
    /// one, [`crate::config::transaction_timeout_ms`]), the interval and
    /// `runtime.drain_timeout_ms`:
    /// - commit = min(15 s, drain timeout, (transaction − interval) / 2),
    ///   at least 1 s: a transaction that reached its interval has time to
    ///   commit and, if that fails, to abort before the broker would time it
    ///   out; the final commit on SIGTERM fits in the drain;
    /// - init = 15 s whatever the drain timeout (which once bounded it too,
    ///   so a 1 s drain made start-up fail on a slow coordinator).
    ///
    /// Err names what does not fit (config validation refuses it first).
    pub fn derive(
        transaction_timeout_ms: u64,
        interval_ms: u64,
        drain_timeout_ms: u64,
    ) -> Result<Self, String> {
        use crate::config::{TRANSACTION_COMMIT_MAX_MS as MAX, TRANSACTION_COMMIT_MIN_MS as MIN};
        let room = transaction_timeout_ms.saturating_sub(interval_ms) / 2;
        if room < MIN {
            return Err(format!(
                "transaction.timeout.ms ({transaction_timeout_ms} ms) leaves {room} ms for a commit and an abort after the {interval_ms} ms interval; at least {MIN} ms each are needed"
            ));
        }
        let commit = MAX.min(room).min(drain_timeout_ms.max(MIN));
        Ok(Self {
            transaction: Duration::from_millis(transaction_timeout_ms),
            commit: Duration::from_millis(commit),
            init: Self::INIT,
        })
    }
}

pub struct TxnSetup {
    /// `pipelines[i].delivery`, for errors.
    pub key: String,
    pub transactional_id: String,
    pub interval: Duration,
    pub max_records: usize,
    pub timeouts: Timeouts,
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
        let mut config =
            crate::kafka::transactional_producer_config(kafka, &setup.transactional_id);
        // Set even when it is librdkafka's default, so that the bounds
        // derived from it are the producer's.
        config.set(
            "transaction.timeout.ms",
            setup.timeouts.transaction.as_millis().to_string(),
        );
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
            .init_transactions(setup.timeouts.init)
            .and_then(|()| sink.producer().begin_transaction());
        if let Err(source) = init {
            return Err(TxnError::Init {
                key: setup.key.clone(),
                brokers: kafka.brokers.clone(),
                transactional_id: setup.transactional_id.clone(),
                timeout: setup.timeouts.init,
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
            op_timeout: setup.timeouts.commit,
            trackers,
            fatal,
            fault_at,
            fault_fired: AtomicBool::new(false),
            topic_limits: topic_limits(kafka, &setup.output_topics, setup.timeouts.init),
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
            let size = output_size(o);
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
        let n = open.add(spans);
        for &(topic, partition, first, last) in spans {
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
        let asked = Instant::now();
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let held = Instant::now();
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
        let offsets = open.commit_offsets();
        let producer = self.sink.producer();
        let mut offsets_sent = held;
        let result = match consumer.group_metadata() {
            // Not a member right now (between generations): abort and
            // replay once the group has us again.
            None => Err(KafkaError::Global(
                rdkafka::error::RDKafkaErrorCode::InvalidGroupId,
            )),
            Some(cgm) => producer
                .send_offsets_to_transaction(&offsets, &cgm, self.op_timeout)
                .map(|()| offsets_sent = Instant::now())
                .and_then(|()| {
                    self.wait_delivered(offsets_sent + self.op_timeout);
                    producer.commit_transaction(self.op_timeout)
                }),
        };
        let committed = Instant::now();
        // A delivery refused while commit flushed: commit already failed,
        // or the refusal must still abort (it is remembered for the replay).
        let late = self.faults.take_failure();
        match (result, late) {
            (Ok(()), None) => {
                let micros = committed.duration_since(held).as_micros() as u64;
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
                if let Err(e) = producer.begin_transaction() {
                    self.fail_hard(&e);
                    return false;
                }
                // Where a commit's time goes (the eos bench reads these):
                // lanes finishing their batch, the offsets RPC, the commit
                // flushing the producer, and the whole time lanes were held.
                let us = |d: Duration| d.as_micros() as u64;
                tracing::debug!(
                    pipeline = %self.pipeline,
                    records,
                    partitions = open.partitions.len(),
                    gate_wait_us = us(held.duration_since(asked)),
                    offsets_us = us(offsets_sent.duration_since(held)),
                    commit_us = us(committed.duration_since(offsets_sent)),
                    held_us = us(held.elapsed()),
                    why,
                    "transaction committed"
                );
                if why == "revoke" {
                    tracing::info!(pipeline = %self.pipeline, transactional_id = %self.transactional_id, records, partitions = open.partitions.len(), "revoke: committed the open transaction before releasing the revoked partitions");
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

    /// Waits (up to `deadline`) until the producer holds nothing
    /// undelivered. rdkafka's `commit_transaction` flushes first, and its
    /// flush, whenever anything is outstanding, polls for a fixed 100 ms
    /// before it looks again: every commit held the gate 100 ms longer than
    /// its deliveries took (the eos bench's profile). The producer's own
    /// thread serves the delivery reports meanwhile, so a short sleep is
    /// all this needs; the flush inside the commit then finds nothing.
    fn wait_delivered(&self, deadline: Instant) {
        let producer = self.sink.producer();
        while producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
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
        } else {
            // Logs `revoke: committed the open transaction …` when it held
            // records, `transaction aborted …` when it could not commit.
            self.commit(consumer, "revoke");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transaction_timeout_ms;
    use crate::sandbox::Header;

    fn offsets_of(tpl: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        tpl.elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition(), e.offset()))
            .collect()
    }

    /// A partition's batches in one transaction: the rewind point stays the
    /// first offset of the first batch, the commit moves to the last one's
    /// next; partitions (and topics with the same partition number) apart.
    #[test]
    fn open_keeps_the_first_offset_and_commits_the_next() {
        let mut open = Open::default();
        assert_eq!(open.add(&[("a", 0, 10, 14), ("a", 1, 3, 3)]), 6);
        assert_eq!(open.add(&[("a", 0, 15, 20), ("b", 0, 7, 8)]), 8);
        assert!(open.started.is_some());
        assert_eq!(
            open.partitions,
            vec![
                ("a".to_string(), 0, 10, 21),
                ("a".to_string(), 1, 3, 4),
                ("b".to_string(), 0, 7, 9),
            ]
        );
        assert_eq!(
            offsets_of(&open.commit_offsets()),
            vec![
                ("a".to_string(), 0, Offset::Offset(21)),
                ("a".to_string(), 1, Offset::Offset(4)),
                ("b".to_string(), 0, Offset::Offset(9)),
            ]
        );
        // An empty transaction commits nothing.
        assert_eq!(Open::default().commit_offsets().count(), 0);
    }

    /// What an abort leaves behind for the replay: the refused input is
    /// remembered once (its replay dead-letters it), other inputs are not,
    /// and the first failure is the one reported.
    #[test]
    fn a_refused_input_is_remembered_once_for_its_replay() {
        let f = TxnFaults::new("tid");
        assert_eq!(f.take_refused("t", 0, 5), None);
        f.refuse("t", 0, 5, "too large".into());
        f.refuse("t", 0, 5, "second reason".into());
        f.fail("later failure".into());
        let why = f.take_failure().expect("a refusal aborts the transaction");
        assert!(why.contains("t/0 offset 5"), "{why}");
        assert_eq!(f.take_failure(), None, "taken once");
        assert_eq!(f.take_refused("t", 1, 5), None, "other partition");
        assert_eq!(f.take_refused("u", 0, 5), None, "other topic");
        assert_eq!(f.take_refused("t", 0, 5).as_deref(), Some("too large"));
        assert_eq!(f.take_refused("t", 0, 5), None, "only its first replay");
    }

    #[test]
    fn output_size_counts_key_value_headers_and_overhead() {
        let o = OutputRecord {
            key: Some(vec![0; 3]),
            value: Some(vec![0; 100]),
            headers: vec![Header {
                key: "k1".into(),
                value: vec![0; 10],
            }],
            topic: None,
            timestamp: None,
        };
        assert_eq!(output_size(&o), 3 + 100 + 2 + 10 + RECORD_OVERHEAD_BYTES);
        let tombstone = OutputRecord {
            key: None,
            value: None,
            headers: vec![],
            topic: None,
            timestamp: None,
        };
        assert_eq!(output_size(&tombstone), RECORD_OVERHEAD_BYTES);
    }

    #[test]
    fn timeouts_fit_the_interval_the_transaction_timeout_and_the_drain() {
        let t = Timeouts::derive(transaction_timeout_ms(None, 100), 100, 15_000).unwrap();
        assert_eq!(t.transaction, Duration::from_secs(60));
        assert_eq!(t.commit, Duration::from_secs(15));
        assert_eq!(t.init, Timeouts::INIT);
        // A short drain bounds the commit (the final one must fit in it)
        // but not the start-up.
        let t = Timeouts::derive(60_000, 100, 2_000).unwrap();
        assert_eq!((t.commit, t.init), (Duration::from_secs(2), Timeouts::INIT));
        assert_eq!(
            Timeouts::derive(60_000, 100, 0).unwrap().commit,
            Duration::from_secs(1)
        );
        // A short transaction timeout: commit and abort share what the
        // interval leaves.
        let t = Timeouts::derive(10_000, 5_000, 15_000).unwrap();
        assert_eq!(t.commit, Duration::from_millis(2_500));
        assert!(t.transaction >= Duration::from_millis(5_000) + 2 * t.commit);
        let e = Timeouts::derive(5_000 + 1_999, 5_000, 15_000).unwrap_err();
        assert!(e.contains("transaction.timeout.ms (6999 ms)"), "{e}");
        assert!(Timeouts::derive(50, 100, 15_000).is_err());
        // Long intervals raise the derived transaction timeout so that
        // they still fit.
        let long = transaction_timeout_ms(None, 300_000);
        assert_eq!(long, 330_000);
        assert_eq!(
            Timeouts::derive(long, 300_000, 15_000).unwrap().commit,
            Duration::from_secs(15)
        );
        assert_eq!(transaction_timeout_ms(Some(9_000), 300_000), 9_000);
    }

    /// librdkafka's own rule, which config validation refuses ahead of it
    /// naming the key: a transactional producer's message timeout may not
    /// outlive its transaction timeout. And a short transaction timeout
    /// alone (socket.timeout.ms at its default) is accepted.
    #[test]
    fn librdkafka_accepts_the_derived_producer_and_refuses_what_config_refuses() {
        let create = |extra: &[(&str, &str)]| {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1")
                .set("transactional.id", "unit-test")
                .set("transaction.timeout.ms", "5000");
            for (k, v) in extra {
                c.set(*k, *v);
            }
            c.create::<rdkafka::producer::BaseProducer>().map(|_| ())
        };
        create(&[]).expect("a 5 s transaction timeout alone");
        create(&[("message.timeout.ms", "5000")]).expect("equal is fine");
        for (key, over) in [
            ("message.timeout.ms", "5001"),
            ("delivery.timeout.ms", "5001"),
            ("socket.timeout.ms", "5101"),
        ] {
            let e = create(&[(key, over)]).unwrap_err();
            assert!(
                e.to_string().contains("transaction.timeout.ms"),
                "{key}: {e}"
            );
        }
        create(&[("socket.timeout.ms", "5100")]).expect("within 100 ms");
    }

    #[test]
    fn group_fencing_is_told_from_other_commit_errors() {
        use rdkafka::error::RDKafkaErrorCode as C;
        for code in [
            C::IllegalGeneration,
            C::UnknownMemberId,
            C::FencedInstanceId,
        ] {
            assert!(fenced_by_group(&KafkaError::Global(code)), "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::CoordinatorNotAvailable,
            C::InvalidGroupId,
        ] {
            assert!(!fenced_by_group(&KafkaError::Global(code)), "{code:?}");
        }
    }
}
