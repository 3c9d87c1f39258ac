//! The Kafka side that writes: outputs and dead letters through one
//! idempotent producer (`acks=all`). An input's offset is complete only when
//! every record it produced has settled: all its outputs acknowledged, or,
//! when the producer or broker refused one of them, its dead letter
//! acknowledged instead.
//!
//! Failure policy (README "Produce errors"):
//! - A per-record refusal (too large, invalid record, unknown or vanished
//!   topic, not authorized, timed out), at enqueue time or in the delivery
//!   report, dead-letters the *input* once, with kind `produce-rejected` and
//!   the broker's error. The pipeline goes on.
//! - A dead letter too large for `message.max.bytes` (or refused by the
//!   broker as too large) is stored truncated, with `pw.dlq.truncated` and
//!   `pw.dlq.original-size`. Never fatal.
//! - Fatal (process exits, [`FatalKind::exit_code`]) only when continuing
//!   could lose data or order: the idempotent producer's fatal error (fenced,
//!   out of order), an unclassified produce error, or the dead-letter topic
//!   still not writable after [`DEAD_LETTER_ATTEMPTS`] attempts. A fatal
//!   input's offset is never stored, so a restart processes it again.
//!
//! librdkafka's delivery callback must never produce itself (it would block
//! its own queue on `QueueFull`): it hands dead letters to a dedicated
//! dead-letter thread over an unbounded channel, bounded in practice by the
//! in-flight window.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::config::RECORD_OVERHEAD_BYTES;
use crate::sandbox::{Function, InputRecord, OutputRecord, RecordError, RecordResult};
use crate::source::PartitionTracker;
use crate::telemetry::otel::TRACEPARENT;

/// Dead-letter headers, also documented in the README.
pub mod headers {
    pub const ERROR_KIND: &str = "pw.error.kind";
    pub const ERROR_MESSAGE: &str = "pw.error.message";
    pub const FUNCTION_NAME: &str = "pw.function.name";
    pub const FUNCTION_DIGEST: &str = "pw.function.digest";
    /// On every output and dead letter: the version that produced it.
    pub const FUNCTION_VERSION: &str = "pw.function.version";
    pub const ORIGIN_TOPIC: &str = "pw.origin.topic";
    pub const ORIGIN_PARTITION: &str = "pw.origin.partition";
    pub const ORIGIN_OFFSET: &str = "pw.origin.offset";
    /// `true` on a dead letter whose value (and possibly headers or key) was
    /// cut to fit the producer's `message.max.bytes`.
    pub const DLQ_TRUNCATED: &str = "pw.dlq.truncated";
    /// On a truncated dead letter: the original value's length in bytes.
    pub const DLQ_ORIGINAL_SIZE: &str = "pw.dlq.original-size";
    /// On a truncated dead letter whose value alone could not be cut enough:
    /// what else was left out (`headers`, `headers,key`).
    pub const DLQ_DROPPED: &str = "pw.dlq.dropped";
}

/// Attempts to write one dead letter (after librdkafka's own retries) before
/// the process stops: past that, continuing would skip the record.
pub const DEAD_LETTER_ATTEMPTS: u32 = 5;
/// Backoff before the second attempt; doubled for each further one.
const DEAD_LETTER_BACKOFF: Duration = Duration::from_millis(200);

/// Why the process stops; each has its own exit code (see `main.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalKind {
    /// Continuing would lose data or order on the produce path.
    DataPath,
    /// A pipeline thread (consumer, sandbox, sink) died.
    ThreadDied,
}

impl FatalKind {
    pub fn exit_code(self) -> u8 {
        match self {
            FatalKind::DataPath => 3,
            FatalKind::ThreadDied => 4,
        }
    }
}

/// The fatal error `run` stops with; `main` maps it to its exit code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("stopped on a fatal error: {message}")]
pub struct FatalError {
    pub kind: FatalKind,
    pub message: String,
}

/// Set once by the first unrecoverable error; every pipeline stops on it.
#[derive(Default)]
pub struct Fatal {
    error: Mutex<Option<FatalError>>,
}

impl Fatal {
    /// A fatal data-path error.
    pub fn set(&self, msg: String) {
        self.set_kind(FatalKind::DataPath, msg);
    }

    /// A pipeline thread died (panic or error); exit code 4.
    pub fn thread_died(&self, msg: String) {
        self.set_kind(FatalKind::ThreadDied, msg);
    }

    pub fn set_kind(&self, kind: FatalKind, message: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            tracing::error!(error = %message, kind = ?kind, exit_code = kind.exit_code(), "fatal error; stopping without committing past it");
            *e = Some(FatalError { kind, message });
        }
    }

    pub fn get(&self) -> Option<String> {
        self.error().map(|e| e.message)
    }

    pub fn error(&self) -> Option<FatalError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters of the produce path, for metrics and tests.
#[derive(Default, Debug)]
pub struct SinkStats {
    /// Inputs dead-lettered because an output was refused.
    pub produce_rejected: AtomicU64,
    /// Dead letters stored truncated.
    pub dead_letters_truncated: AtomicU64,
    /// Dead-letter attempts after the first.
    pub dead_letter_retries: AtomicU64,
}

/// Exactly-once: what the produce path tells the pipeline's transaction
/// coordinator (`crate::txn`). Inside a transaction nothing is dead-lettered
/// asynchronously: a refusal there puts librdkafka's transaction in an
/// abortable state, so the coordinator aborts, rewinds, and the replay
/// dead-letters the refused input synchronously, inside the next transaction.
pub struct TxnFaults {
    /// The producer's `transactional.id`, for the fenced error.
    pub transactional_id: String,
    /// Why the open transaction must abort (the first reason).
    failure: Mutex<Option<String>>,
    /// Inputs whose output was refused in an aborted transaction: their
    /// replay is dead-lettered `produce-rejected` instead of looping.
    refused: Mutex<std::collections::HashMap<(String, i32, i64), String>>,
    /// Lets the per-record check skip the lock while `refused` is empty.
    any_refused: std::sync::atomic::AtomicBool,
}

impl TxnFaults {
    pub fn new(transactional_id: &str) -> Self {
        Self {
            transactional_id: transactional_id.to_string(),
            failure: Mutex::default(),
            refused: Mutex::default(),
            any_refused: Default::default(),
        }
    }

    /// The open transaction must abort.
    pub fn fail(&self, why: String) {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    }

    pub fn take_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// An output of input `topic`/`partition`/`offset` was refused.
    pub fn refuse(&self, topic: &str, partition: i32, offset: i64, why: String) {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((topic.to_string(), partition, offset))
            .or_insert(why);
        self.any_refused.store(true, Ordering::Release);
        self.fail(format!(
            "an output of {topic}/{partition} offset {offset} was refused"
        ));
    }

    /// Why this input's output was refused before, once.
    pub fn take_refused(&self, topic: &str, partition: i32, offset: i64) -> Option<String> {
        if !self.any_refused.load(Ordering::Acquire) {
            return None;
        }
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let why = m.remove(&(topic.to_string(), partition, offset));
        if m.is_empty() {
            self.any_refused.store(false, Ordering::Release);
        }
        why
    }

    /// The one line a fenced producer is reported with.
    pub fn fenced_message(&self, error: &str) -> String {
        format!(
            "fenced: another member owns these partitions (transactional.id {}): {error}",
            self.transactional_id
        )
    }
}

/// librdkafka names fencing in the fatal error's text (`ProducerFenced`,
/// `InvalidProducerEpoch`, "fenced by a newer instance").
pub fn is_fencing(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("fenc") || t.contains("producer_epoch") || t.contains("producerepoch")
}

/// Records of an aborted transaction are purged with these; nothing settles.
fn is_purged(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

/// What the sink needs to know about the pipeline it writes for.
pub struct SinkTarget {
    pub pipeline: String,
    pub output_topics: Vec<String>,
    pub dead_letter_topic: String,
    /// The consumer group (span attribute).
    pub group: String,
}

/// What happened to one input, for the pipeline's counters. A refusal that
/// arrives later in a delivery report is counted in [`SinkStats`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Produced(usize),
    Filtered,
    DeadLettered,
}

/// A record exactly as consumed, for a dead letter that loses nothing.
pub use crate::record::RawRecord;

/// The original headers a dead letter carries.
#[derive(Clone)]
enum OriginalHeaders {
    Decoded(Vec<crate::sandbox::Header>),
    Raw(Option<OwnedHeaders>),
}

/// One dead letter, kept until acknowledged so it can be retried or cut.
#[derive(Clone)]
struct DeadLetter {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    original: OriginalHeaders,
    ours: Vec<(&'static str, Vec<u8>)>,
    traceparent: Option<Vec<u8>>,
    tracker: Arc<PartitionTracker>,
    offset: i64,
    /// Failed attempts so far (not counting size cuts).
    attempt: u32,
    /// Bytes of the value kept, when cut.
    value_limit: Option<usize>,
    drop_headers: bool,
    drop_key: bool,
}

/// The producer's opaque for every record: what to do when it settles.
pub struct InFlight {
    remaining: AtomicUsize,
    carried: Carried,
}

// Lives inside the one `Arc<InFlight>` per input: boxing the larger
// (common) variant would add an allocation per input for nothing.
#[allow(clippy::large_enum_variant)]
enum Carried {
    /// Outputs of one input. The input is kept so that a refusal can
    /// dead-letter it once every output has settled.
    Outputs {
        /// The input (taken by the last output to settle) and the first
        /// refusal, under one lock.
        settle: Mutex<(Option<InputRecord>, Option<String>)>,
        tracker: Arc<PartitionTracker>,
        function: Arc<Function>,
        target: Arc<SinkTarget>,
        traceparent: Option<String>,
    },
    DeadLetter(Box<DeadLetter>),
}

enum Job {
    /// Produce this dead letter (first attempt or a retry).
    Send(Box<DeadLetter>),
    /// A delivery report refused it.
    Failed(Box<DeadLetter>, KafkaError),
}

pub struct SinkContext {
    fatal: Arc<Fatal>,
    jobs: Sender<Job>,
    outstanding: Arc<AtomicUsize>,
    stats: Arc<SinkStats>,
    /// Set for an exactly-once pipeline's transactional producer.
    txn: Option<Arc<TxnFaults>>,
}

impl SinkContext {
    fn hand_off(&self, job: Job) {
        hand_off(&self.jobs, &self.outstanding, &self.fatal, job);
    }
}

fn hand_off(jobs: &Sender<Job>, outstanding: &AtomicUsize, fatal: &Fatal, job: Job) {
    outstanding.fetch_add(1, Ordering::AcqRel);
    if jobs.send(job).is_err() {
        outstanding.fetch_sub(1, Ordering::AcqRel);
        fatal.set("the dead-letter thread is gone; a dead letter cannot be written".into());
    }
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The idempotent producer's fatal error (fenced, out-of-order
        // sequence): every later record could be lost or reordered.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            match &self.txn {
                // A transactional producer's fatal error is its fencing.
                Some(t) if is_fencing(reason) => self.fatal.set(t.fenced_message(reason)),
                _ => self
                    .fatal
                    .set(format!("producer fatal error: {reason} ({error})")),
            }
        } else {
            tracing::warn!(target: "librdkafka", error = %error, reason, "producer error");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Arc<InFlight>) {
        if let (Some(txn), Err((e, msg))) = (&self.txn, result) {
            txn_delivery_failed(txn, &inflight, e, msg);
            return;
        }
        match &inflight.carried {
            Carried::Outputs { .. } => match result {
                Ok(_) => settle_output(&inflight, None, self),
                Err((e, msg)) => {
                    use rdkafka::Message;
                    match classify(e) {
                        Class::Refused => settle_output(
                            &inflight,
                            Some(format!("output to topic {}: {e}", msg.topic())),
                            self,
                        ),
                        Class::Fatal => self
                            .fatal
                            .set(format!("delivery to {} failed: {e}", msg.topic())),
                    }
                }
            },
            Carried::DeadLetter(dl) => match result {
                Ok(_) => dl.tracker.complete(dl.offset),
                Err((e, _)) => {
                    let Some(dl) = take_dead_letter(inflight) else {
                        return;
                    };
                    self.hand_off(Job::Failed(dl, e.clone()));
                }
            },
        }
    }
}

/// Inside a transaction a failed delivery aborts it (unless it is the purge
/// of an abort already under way); a refused output is remembered so that
/// its input is dead-lettered on replay.
fn txn_delivery_failed(
    txn: &TxnFaults,
    inflight: &InFlight,
    e: &KafkaError,
    msg: &rdkafka::message::BorrowedMessage<'_>,
) {
    use rdkafka::Message;
    if is_purged(e) {
        return;
    }
    match &inflight.carried {
        Carried::Outputs {
            settle, tracker, ..
        } => {
            let offset = settle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .as_ref()
                .map(|i| i.offset);
            let why = format!("output to topic {}: {e}", msg.topic());
            match (classify(e), offset) {
                (Class::Refused, Some(o)) => txn.refuse(&tracker.topic, tracker.partition, o, why),
                _ => txn.fail(why),
            }
        }
        Carried::DeadLetter(dl) => txn.fail(format!(
            "dead letter of {}/{} offset {} to {}: {e}",
            dl.tracker.topic,
            dl.tracker.partition,
            dl.offset,
            msg.topic()
        )),
    }
}

/// One output of an input settled (`refused` = why the producer or broker
/// would not take it). The last one completes the input or dead-letters it.
fn settle_output(inflight: &InFlight, refused: Option<String>, ctx: &SinkContext) {
    let Carried::Outputs {
        settle,
        tracker,
        function,
        target,
        traceparent,
    } = &inflight.carried
    else {
        return;
    };
    if let Some(why) = refused {
        let mut st = settle.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(txn), Some(input)) = (&ctx.txn, &st.0) {
            // Refused at enqueue inside a transaction: other outputs of the
            // input may be in it already, so the whole transaction aborts.
            txn.refuse(&tracker.topic, tracker.partition, input.offset, why);
            return;
        }
        st.1.get_or_insert(why);
    }
    if inflight.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let (input, why) = std::mem::take(&mut *settle.lock().unwrap_or_else(|p| p.into_inner()));
    match (why, input) {
        (None, Some(input)) => tracker.complete(input.offset),
        (None, None) => {}
        (Some(why), Some(input)) => {
            ctx.stats.produce_rejected.fetch_add(1, Ordering::Relaxed);
            let err = RecordError::ProduceRejected(why);
            tracing::warn!(topic = %input.topic, partition = input.partition, offset = input.offset, error = %err, "output refused; dead-lettering the input");
            let dl = decoded_dead_letter(
                input,
                &err,
                Some(function),
                &target.dead_letter_topic,
                traceparent.as_deref().map(str::as_bytes),
                tracker.clone(),
            );
            ctx.hand_off(Job::Send(Box::new(dl)));
        }
        (Some(_), None) => {}
    }
}

enum Class {
    /// This record cannot be written; others can.
    Refused,
    /// Continuing could lose or reorder records.
    Fatal,
}

fn classify(e: &KafkaError) -> Class {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::BadMessage
            | C::InvalidRecord
            | C::MessageBatchTooLarge
            | C::InvalidTimestamp
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::PolicyViolation
            // librdkafka gave up on this record after its own retries (e.g.
            // the topic vanished); the input is kept in the dead-letter
            // topic, so nothing is lost by going on.
            | C::MessageTimedOut,
        ) => Class::Refused,
        _ => Class::Fatal,
    }
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

pub type KafkaProducer = ThreadedProducer<SinkContext>;

/// State shared by the sink (sandbox threads) and the dead-letter thread.
struct Shared {
    producer: KafkaProducer,
    fatal: Arc<Fatal>,
    jobs: Sender<Job>,
    outstanding: Arc<AtomicUsize>,
    stats: Arc<SinkStats>,
    /// The producer's `message.max.bytes`.
    message_max_bytes: usize,
    txn: Option<Arc<TxnFaults>>,
}

pub struct Sink {
    shared: Arc<Shared>,
    pub stats: Arc<SinkStats>,
}

impl Sink {
    /// Creates the producer (`config`, e.g. `kafka::producer_config`) and
    /// the dead-letter thread. `message_max_bytes` is the producer's limit
    /// (`Config::message_max_bytes`), which dead letters are cut to fit.
    pub fn create(
        config: &ClientConfig,
        fatal: Arc<Fatal>,
        message_max_bytes: usize,
    ) -> Result<Self, KafkaError> {
        Self::create_inner(config, fatal, message_max_bytes, None)
    }

    /// An exactly-once pipeline's sink: `config` has its `transactional.id`;
    /// failures go to `txn` instead of the dead-letter thread.
    pub fn create_transactional(
        config: &ClientConfig,
        fatal: Arc<Fatal>,
        message_max_bytes: usize,
        txn: Arc<TxnFaults>,
    ) -> Result<Self, KafkaError> {
        Self::create_inner(config, fatal, message_max_bytes, Some(txn))
    }

    fn create_inner(
        config: &ClientConfig,
        fatal: Arc<Fatal>,
        message_max_bytes: usize,
        txn: Option<Arc<TxnFaults>>,
    ) -> Result<Self, KafkaError> {
        let (tx, rx) = channel();
        let outstanding = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(SinkStats::default());
        let producer: KafkaProducer = config.create_with_context(SinkContext {
            fatal: fatal.clone(),
            jobs: tx.clone(),
            outstanding: outstanding.clone(),
            stats: stats.clone(),
            txn: txn.clone(),
        })?;
        let shared = Arc::new(Shared {
            producer,
            fatal,
            jobs: tx,
            outstanding,
            stats: stats.clone(),
            message_max_bytes,
            txn,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("dead-letters".into())
            .spawn(move || dead_letter_thread(rx, weak))
            .map_err(|e| KafkaError::ClientCreation(format!("dead-letter thread: {e}")))?;
        Ok(Self { shared, stats })
    }

    /// The producer, e.g. for a metadata request.
    pub fn producer(&self) -> &KafkaProducer {
        &self.shared.producer
    }

    /// Produces the outputs of one input (or its dead letter) and wires their
    /// acknowledgements to the input's offset.
    pub fn deliver(
        &self,
        target: &Arc<SinkTarget>,
        function: &Arc<Function>,
        input: InputRecord,
        tracker: &Arc<PartitionTracker>,
        result: RecordResult,
        traceparent: Option<&str>,
    ) -> (Disposition, Option<RecordError>) {
        self.deliver_inner(target, function, input, tracker, result, traceparent, true)
    }

    /// Passes `input` unchanged (key, value or tombstone, headers, timestamp)
    /// to the pipeline's first output topic without calling the function, as
    /// for `tombstones = "pass"`. Not stamped with `pw.function.version`:
    /// no function produced it. Refusals are dead-lettered as for outputs.
    pub fn forward(
        &self,
        target: &Arc<SinkTarget>,
        function: &Arc<Function>,
        input: InputRecord,
        tracker: &Arc<PartitionTracker>,
        traceparent: Option<&str>,
    ) -> Disposition {
        let out = OutputRecord {
            key: input.key.clone(),
            value: input.value.clone(),
            headers: input.headers.clone(),
            topic: None,
            timestamp: input.timestamp,
        };
        self.deliver_inner(
            target,
            function,
            input,
            tracker,
            Ok(vec![out]),
            traceparent,
            false,
        )
        .0
    }

    /// Dead-letters a record that could not be decoded (`error` is e.g.
    /// `RecordError::InvalidInput` naming the bad header). Its offset
    /// completes when the dead letter is acknowledged. `function` adds the
    /// function headers when one is installed.
    pub fn dead_letter_raw(
        &self,
        target: &SinkTarget,
        function: Option<&Function>,
        raw: RawRecord,
        tracker: &Arc<PartitionTracker>,
        error: &RecordError,
    ) {
        let partition = raw.partition.to_string();
        let offset = raw.offset.to_string();
        let dl = DeadLetter {
            topic: target.dead_letter_topic.clone(),
            ours: our_headers(error, function, &raw.topic, &partition, &offset),
            key: raw.key,
            value: raw.value,
            timestamp: raw.timestamp,
            original: OriginalHeaders::Raw(raw.headers),
            traceparent: None,
            tracker: tracker.clone(),
            offset: raw.offset,
            attempt: 0,
            value_limit: None,
            drop_headers: false,
            drop_key: false,
        };
        tracing::debug!(pipeline = %target.pipeline, topic = %raw.topic, partition = raw.partition, offset = raw.offset, kind = error.kind(), error = %error, "record dead-lettered");
        send_dead_letter(&self.shared, Box::new(dl));
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_inner(
        &self,
        target: &Arc<SinkTarget>,
        function: &Arc<Function>,
        input: InputRecord,
        tracker: &Arc<PartitionTracker>,
        result: RecordResult,
        traceparent: Option<&str>,
        stamp_version: bool,
    ) -> (Disposition, Option<RecordError>) {
        let result = result.and_then(|outs| check_outputs(target, outs));
        match result {
            Ok(outs) if outs.is_empty() => {
                tracker.complete(input.offset);
                (Disposition::Filtered, None)
            }
            Ok(outs) => {
                // The record's span when tracing; else the input's own
                // context is carried over, so a trace is never cut by the worker.
                let input_trace: Option<Vec<u8>> = if traceparent.is_none() {
                    input
                        .headers
                        .iter()
                        .find(|h| h.key.eq_ignore_ascii_case(TRACEPARENT))
                        .map(|h| h.value.clone())
                } else {
                    None
                };
                let trace: Option<&[u8]> =
                    traceparent.map(str::as_bytes).or(input_trace.as_deref());
                let version: &[(&str, &[u8])] = if stamp_version {
                    &[(headers::FUNCTION_VERSION, function.version.as_bytes())]
                } else {
                    &[]
                };
                let n = outs.len();
                let inflight = Arc::new(InFlight {
                    remaining: AtomicUsize::new(n),
                    carried: Carried::Outputs {
                        settle: Mutex::new((Some(input), None)),
                        tracker: tracker.clone(),
                        function: function.clone(),
                        target: target.clone(),
                        traceparent: traceparent.map(str::to_owned),
                    },
                });
                let ctx = self.shared.producer.context();
                let mut refused_now = 0;
                for o in &outs {
                    let e = encode_output(o, &target.output_topics[0], version, trace);
                    let topic = e.topic;
                    let mut rec =
                        BaseRecord::with_opaque_to(topic, inflight.clone()).headers(e.headers);
                    if let Some(v) = e.payload {
                        rec = rec.payload(v);
                    }
                    if let Some(k) = e.key {
                        rec = rec.key(k);
                    }
                    if let Some(ts) = e.timestamp {
                        rec = rec.timestamp(ts);
                    }
                    match enqueue(&self.shared, rec) {
                        Ok(()) => {}
                        Err(e) => match classify(&e) {
                            Class::Refused => {
                                refused_now += 1;
                                settle_output(
                                    &inflight,
                                    Some(format!("output to topic {topic}: {e}")),
                                    ctx,
                                );
                            }
                            Class::Fatal => {
                                let why = format!("cannot enqueue a record for {topic}: {e}");
                                match &self.shared.txn {
                                    Some(txn) => txn.fail(why),
                                    None => self.shared.fatal.set(why),
                                }
                            }
                        },
                    }
                }
                if refused_now == n {
                    // Every output was refused at once: the input went to
                    // the dead-letter thread already; count it as such.
                    let err = RecordError::ProduceRejected(format!(
                        "all {n} output(s) refused when enqueued"
                    ));
                    return (Disposition::DeadLettered, Some(err));
                }
                (Disposition::Produced(n), None)
            }
            Err(err) => {
                let dl = decoded_dead_letter(
                    input,
                    &err,
                    Some(function),
                    &target.dead_letter_topic,
                    traceparent.map(str::as_bytes),
                    tracker.clone(),
                );
                send_dead_letter(&self.shared, Box::new(dl));
                (Disposition::DeadLettered, Some(err))
            }
        }
    }

    /// Waits (bounded) for every enqueued record and pending dead letter.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let flushed = self
                .shared
                .producer
                .flush(left.min(Duration::from_millis(200)));
            let idle = self.shared.outstanding.load(Ordering::Acquire) == 0;
            if flushed.is_ok() && idle {
                return;
            }
            if left.is_zero() || self.shared.fatal.get().is_some() {
                tracing::warn!(
                    in_flight = self.shared.producer.in_flight_count(),
                    dead_letters_pending = self.shared.outstanding.load(Ordering::Acquire),
                    "producer flush did not complete"
                );
                return;
            }
        }
    }
}

/// Enqueues one record, waiting out `QueueFull` (the producer's thread
/// drains the queue). Returns the error librdkafka refused it with.
fn enqueue<K, P>(
    shared: &Shared,
    mut rec: BaseRecord<'_, K, P, Arc<InFlight>>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match shared.producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                if shared.fatal.get().is_some() {
                    // Nothing drains the queue for good any more; the record
                    // stays uncommitted and is read again after a restart.
                    return Ok(());
                }
                rec = back;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces a dead letter (cut to fit first). A too-large refusal is cut
/// further at once; any other refusal goes to the dead-letter thread.
fn send_dead_letter(shared: &Shared, mut dl: Box<DeadLetter>) {
    fit(&mut dl, shared.message_max_bytes, &shared.stats);
    loop {
        let inflight = Arc::new(InFlight {
            remaining: AtomicUsize::new(1),
            carried: Carried::DeadLetter(dl),
        });
        let result = match &inflight.carried {
            Carried::DeadLetter(d) => {
                let mut rec = BaseRecord::with_opaque_to(&d.topic, inflight.clone())
                    .headers(dead_letter_headers(d));
                if let Some(v) = &d.value {
                    rec = rec.payload(&v[..d.value_limit.unwrap_or(v.len()).min(v.len())]);
                }
                if let (Some(k), false) = (&d.key, d.drop_key) {
                    rec = rec.key(k.as_slice());
                }
                if let Some(ts) = d.timestamp {
                    rec = rec.timestamp(ts);
                }
                enqueue(shared, rec)
            }
            Carried::Outputs { .. } => Ok(()),
        };
        let Err(e) = result else { return };
        let Some(mut back) = take_dead_letter(inflight) else {
            return;
        };
        if is_too_large(&e) {
            if !shrink(&mut back, &shared.stats) {
                shared.fatal.set(format!(
                    "dead letter for {}/{} offset {} cannot be made small enough for {}: {e}",
                    back.tracker.topic, back.tracker.partition, back.offset, back.topic
                ));
                return;
            }
            dl = back;
            continue;
        }
        if let Some(txn) = &shared.txn {
            // The replay of the aborted transaction tries it again.
            txn.fail(format!(
                "cannot enqueue the dead letter of {}/{} offset {} for {}: {e}",
                back.tracker.topic, back.tracker.partition, back.offset, back.topic
            ));
            return;
        }
        match classify(&e) {
            Class::Refused => hand_off(
                &shared.jobs,
                &shared.outstanding,
                &shared.fatal,
                Job::Failed(back, e),
            ),
            Class::Fatal => shared.fatal.set(format!(
                "cannot enqueue a dead letter for {}: {e}",
                back.topic
            )),
        }
        return;
    }
}

/// The dead letter an [`InFlight`] carries, back from a failed attempt.
fn take_dead_letter(inflight: Arc<InFlight>) -> Option<Box<DeadLetter>> {
    match Arc::try_unwrap(inflight) {
        Ok(InFlight {
            carried: Carried::DeadLetter(d),
            ..
        }) => Some(d),
        // The producing thread may still hold its clone for a moment.
        Err(shared) => match &shared.carried {
            Carried::DeadLetter(d) => Some(d.clone()),
            Carried::Outputs { .. } => None,
        },
        Ok(_) => None,
    }
}

fn backoff(attempt: u32) -> Duration {
    DEAD_LETTER_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1).min(10))
}

fn dead_letter_thread(rx: Receiver<Job>, shared: Weak<Shared>) {
    // Retries wait here in due order, so a retry's backoff never delays a
    // first attempt queued behind it. Each stays counted as outstanding
    // until it is sent again.
    let mut delayed: Vec<(Instant, Box<DeadLetter>)> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = delayed
            .iter()
            .map(|(due, _)| due.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(500));
        let job = match rx.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match job {
            Some(Job::Send(dl)) => {
                send_dead_letter(&shared, dl);
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            Some(Job::Failed(mut dl, e)) => {
                if is_too_large(&e) {
                    if shrink(&mut dl, &shared.stats) {
                        send_dead_letter(&shared, dl);
                    } else {
                        shared.fatal.set(format!(
                            "dead letter for {}/{} offset {} cannot be made small enough for {}: {e}",
                            dl.tracker.topic, dl.tracker.partition, dl.offset, dl.topic
                        ));
                    }
                    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                } else if matches!(classify(&e), Class::Fatal) {
                    shared
                        .fatal
                        .set(format!("dead letter delivery to {} failed: {e}", dl.topic));
                    shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                } else {
                    dl.attempt += 1;
                    if dl.attempt >= DEAD_LETTER_ATTEMPTS {
                        shared.fatal.set(format!(
                            "dead-letter topic {} not writable after {} attempts (record {}/{} offset {}): {e}",
                            dl.topic, dl.attempt, dl.tracker.topic, dl.tracker.partition, dl.offset
                        ));
                        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    } else {
                        shared
                            .stats
                            .dead_letter_retries
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %dl.topic, attempt = dl.attempt, error = %e, "dead letter refused; retrying");
                        delayed.push((Instant::now() + backoff(dl.attempt), dl));
                    }
                }
            }
            None => {}
        }
        let now = Instant::now();
        let mut i = 0;
        while i < delayed.len() {
            if delayed[i].0 <= now {
                let (_, dl) = delayed.swap_remove(i);
                if shared.fatal.get().is_none() {
                    send_dead_letter(&shared, dl);
                }
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            } else {
                i += 1;
            }
        }
    }
}

fn decoded_dead_letter(
    input: InputRecord,
    err: &RecordError,
    function: Option<&Function>,
    dead_letter_topic: &str,
    traceparent: Option<&[u8]>,
    tracker: Arc<PartitionTracker>,
) -> DeadLetter {
    let partition = input.partition.to_string();
    let offset = input.offset.to_string();
    DeadLetter {
        topic: dead_letter_topic.to_string(),
        ours: our_headers(err, function, &input.topic, &partition, &offset),
        key: input.key,
        value: input.value,
        timestamp: input.timestamp,
        original: OriginalHeaders::Decoded(input.headers),
        traceparent: traceparent.map(<[u8]>::to_vec),
        tracker,
        offset: input.offset,
        attempt: 0,
        value_limit: None,
        drop_headers: false,
        drop_key: false,
    }
}

fn our_headers(
    err: &RecordError,
    function: Option<&Function>,
    topic: &str,
    partition: &str,
    offset: &str,
) -> Vec<(&'static str, Vec<u8>)> {
    let message = crate::sandbox::truncate(&err.to_string(), 4096);
    let mut h = vec![
        (headers::ERROR_KIND, err.kind().as_bytes().to_vec()),
        (headers::ERROR_MESSAGE, message.into_bytes()),
    ];
    if let Some(m) = function {
        h.push((headers::FUNCTION_NAME, m.name.as_bytes().to_vec()));
        h.push((headers::FUNCTION_DIGEST, m.digest.as_bytes().to_vec()));
        h.push((headers::FUNCTION_VERSION, m.version.as_bytes().to_vec()));
    }
    h.push((headers::ORIGIN_TOPIC, topic.as_bytes().to_vec()));
    h.push((headers::ORIGIN_PARTITION, partition.as_bytes().to_vec()));
    h.push((headers::ORIGIN_OFFSET, offset.as_bytes().to_vec()));
    h
}

/// Per header on the wire (length varints, attributes), generously.
const HEADER_OVERHEAD: usize = 10;
/// Room for the truncation headers themselves.
const TRUNCATION_HEADERS: usize = 96;

fn original_headers_size(h: &OriginalHeaders) -> usize {
    match h {
        OriginalHeaders::Decoded(hs) => hs
            .iter()
            .map(|h| h.key.len() + h.value.len() + HEADER_OVERHEAD)
            .sum(),
        OriginalHeaders::Raw(None) => 0,
        OriginalHeaders::Raw(Some(hs)) => raw_headers_size(hs.as_borrowed()),
    }
}

/// Bytes of raw headers, read without decoding their keys as UTF-8 (the
/// rdkafka accessors unwrap that).
fn raw_headers_size(hs: &BorrowedHeaders) -> usize {
    use rdkafka::bindings as rd;
    // `BorrowedHeaders` is rdkafka's view of the native `rd_kafka_headers_t`
    // at the same address (see `OwnedHeaders::as_borrowed`).
    let ptr = hs as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    // SAFETY: `ptr` is a live headers object borrowed for this call; the
    // out-pointers are written by librdkafka and point into it.
    unsafe {
        let n = rd::rd_kafka_header_cnt(ptr);
        let mut total = 0;
        for i in 0..n {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0;
            if rd::rd_kafka_header_get_all(ptr, i, &mut name, &mut value, &mut size)
                == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let name_len = if name.is_null() {
                    0
                } else {
                    std::ffi::CStr::from_ptr(name).to_bytes().len()
                };
                total += name_len + size + HEADER_OVERHEAD;
            }
        }
        total
    }
}

fn ours_size(dl: &DeadLetter) -> usize {
    dl.ours
        .iter()
        .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
        .sum::<usize>()
        + dl.traceparent
            .as_ref()
            .map_or(0, |t| TRACEPARENT.len() + t.len() + HEADER_OVERHEAD)
}

/// Cuts a dead letter to fit `max` (the producer's `message.max.bytes`):
/// the value first, then the original headers, then the key.
fn fit(dl: &mut DeadLetter, max: usize, stats: &SinkStats) {
    let budget = max.saturating_sub(RECORD_OVERHEAD_BYTES);
    let value_len = dl.value.as_ref().map_or(0, Vec::len);
    let key_len = dl.key.as_ref().map_or(0, Vec::len);
    let headers_len = original_headers_size(&dl.original);
    let ours = ours_size(dl);
    if key_len + value_len + headers_len + ours <= budget {
        return;
    }
    let fixed = ours + TRUNCATION_HEADERS;
    let mut rest = key_len + headers_len + fixed;
    if rest > budget {
        dl.drop_headers = true;
        rest = key_len + fixed;
    }
    if rest > budget {
        dl.drop_key = true;
        rest = fixed;
    }
    dl.value_limit = Some(budget.saturating_sub(rest).min(value_len));
    stats.dead_letters_truncated.fetch_add(1, Ordering::Relaxed);
}

/// The broker refused a dead letter as too large (its topic's limit is below
/// the producer's): keep a quarter of what was kept, then drop the original
/// headers, then the key. False when nothing is left to cut.
fn shrink(dl: &mut DeadLetter, stats: &SinkStats) -> bool {
    let value_len = dl.value.as_ref().map_or(0, Vec::len);
    let kept = dl.value_limit.unwrap_or(value_len).min(value_len);
    if dl.value_limit.is_none() {
        stats.dead_letters_truncated.fetch_add(1, Ordering::Relaxed);
    }
    if kept > 0 {
        dl.value_limit = Some(kept / 4);
    } else if !dl.drop_headers {
        dl.value_limit = Some(0);
        dl.drop_headers = true;
    } else if !dl.drop_key && dl.key.is_some() {
        dl.value_limit = Some(0);
        dl.drop_key = true;
    } else {
        return false;
    }
    true
}

fn dead_letter_headers(dl: &DeadLetter) -> OwnedHeaders {
    let ours: Vec<(&str, &[u8])> = dl.ours.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let trace = dl.traceparent.as_deref();
    let mut out = match (&dl.original, dl.drop_headers) {
        (_, true) => to_kafka_headers(&[], &ours, trace),
        (OriginalHeaders::Decoded(hs), false) => to_kafka_headers(hs, &ours, trace),
        (OriginalHeaders::Raw(hs), false) => {
            let mut out = hs.clone().unwrap_or_default();
            for (k, v) in &ours {
                out = out.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            out
        }
    };
    if dl.value_limit.is_some() {
        let original = dl.value.as_ref().map_or(0, Vec::len).to_string();
        out = out
            .insert(Header {
                key: headers::DLQ_TRUNCATED,
                value: Some("true"),
            })
            .insert(Header {
                key: headers::DLQ_ORIGINAL_SIZE,
                value: Some(original.as_str()),
            });
        let dropped = match (dl.drop_headers, dl.drop_key) {
            (true, true) => Some("headers,key"),
            (true, false) => Some("headers"),
            (false, true) => Some("key"),
            (false, false) => None,
        };
        if let Some(d) = dropped {
            out = out.insert(Header {
                key: headers::DLQ_DROPPED,
                value: Some(d),
            });
        }
    }
    out
}

/// Checks a record's outputs before any of them is enqueued, so that a
/// record is produced whole or dead-lettered whole: every topic declared, and
/// every header key one Kafka can carry. librdkafka keeps header keys as C
/// strings, so a key with a NUL would reach the broker cut short, silently;
/// such a record is refused (`produce-rejected`) instead.
pub fn check_outputs(target: &SinkTarget, outs: Vec<OutputRecord>) -> RecordResult {
    check_header_keys(check_topics(target, outs)?)
}

/// The header-key half of [`check_outputs`], for `test` run without
/// declared topics (routes unchecked, keys still).
pub fn check_header_keys(outs: Vec<OutputRecord>) -> RecordResult {
    for (i, o) in outs.iter().enumerate() {
        if let Some((j, h)) = o
            .headers
            .iter()
            .enumerate()
            .find(|(_, h)| h.key.contains('\0'))
        {
            return Err(RecordError::ProduceRejected(format!(
                "output {i}: header {j} key {:?} contains a NUL byte, which a Kafka header key cannot carry",
                h.key
            )));
        }
    }
    Ok(outs)
}

/// One output as the producer gets it.
pub struct Encoded<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: OwnedHeaders,
    pub timestamp: Option<i64>,
}

/// Turns one output that [`check_outputs`] accepted into what is produced:
/// its topic (`default_topic` when it names none), key and value as they are
/// (a `None` value stays a tombstone), its headers then `extra`, and
/// `traceparent`, when given, replacing any the output had.
pub fn encode_output<'a>(
    o: &'a OutputRecord,
    default_topic: &'a str,
    extra: &[(&str, &[u8])],
    traceparent: Option<&[u8]>,
) -> Encoded<'a> {
    Encoded {
        topic: o.topic.as_deref().unwrap_or(default_topic),
        key: o.key.as_deref(),
        payload: o.value.as_deref(),
        headers: to_kafka_headers(&o.headers, extra, traceparent),
        timestamp: o.timestamp,
    }
}

fn check_topics(target: &SinkTarget, outs: Vec<OutputRecord>) -> RecordResult {
    for o in &outs {
        if let Some(t) = &o.topic {
            if !target.output_topics.iter().any(|d| d == t) {
                return Err(RecordError::UnknownTopic {
                    topic: t.clone(),
                    declared: target.output_topics.clone(),
                });
            }
        }
    }
    Ok(outs)
}

/// `hs`, then `extra`, with `traceparent` (if given) replacing any the
/// record had.
fn to_kafka_headers(
    hs: &[crate::sandbox::Header],
    extra: &[(&str, &[u8])],
    traceparent: Option<&[u8]>,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(hs.len() + extra.len() + 1);
    for h in hs {
        if traceparent.is_some() && h.key.eq_ignore_ascii_case(TRACEPARENT) {
            continue;
        }
        out = out.insert(Header {
            key: &h.key,
            value: Some(&h.value),
        });
    }
    for (k, v) in extra {
        out = out.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    if let Some(tp) = traceparent {
        out = out.insert(Header {
            key: TRACEPARENT,
            value: Some(tp),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(value: usize, headers: usize, key: usize) -> DeadLetter {
        DeadLetter {
            topic: "dlq".into(),
            key: Some(vec![b'k'; key]),
            value: Some(vec![b'v'; value]),
            timestamp: None,
            original: OriginalHeaders::Decoded(
                (0..headers)
                    .map(|i| crate::sandbox::Header {
                        key: format!("h{i}"),
                        value: vec![b'x'; 100],
                    })
                    .collect(),
            ),
            ours: our_headers(
                &RecordError::InvalidInput("bad".into()),
                None,
                "in",
                "0",
                "1",
            ),
            traceparent: None,
            tracker: Arc::new(PartitionTracker::new("in", 0)),
            offset: 1,
            attempt: 0,
            value_limit: None,
            drop_headers: false,
            drop_key: false,
        }
    }

    fn wire(dl: &DeadLetter) -> usize {
        let v = dl.value_limit.unwrap_or(dl.value.as_ref().unwrap().len());
        let k = if dl.drop_key {
            0
        } else {
            dl.key.as_ref().unwrap().len()
        };
        let h = if dl.drop_headers {
            0
        } else {
            original_headers_size(&dl.original)
        };
        v + k + h + ours_size(dl) + TRUNCATION_HEADERS + RECORD_OVERHEAD_BYTES
    }

    #[test]
    fn small_letters_are_not_cut() {
        let stats = SinkStats::default();
        let mut dl = letter(1000, 3, 10);
        fit(&mut dl, 1_000_000, &stats);
        assert_eq!(dl.value_limit, None);
        assert_eq!(stats.dead_letters_truncated.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn value_is_cut_to_fit_the_limit() {
        let stats = SinkStats::default();
        let mut dl = letter(999_990, 3, 10);
        fit(&mut dl, 1_000_000, &stats);
        let kept = dl.value_limit.expect("cut");
        assert!(kept > 990_000 && kept < 999_990, "kept {kept}");
        assert!(!dl.drop_headers && !dl.drop_key);
        assert!(wire(&dl) <= 1_000_000, "{} bytes", wire(&dl));
    }

    #[test]
    fn headers_then_key_go_when_the_value_is_not_enough() {
        let stats = SinkStats::default();
        let mut dl = letter(10, 200, 10);
        fit(&mut dl, 10_000, &stats);
        assert!(dl.drop_headers && !dl.drop_key);
        assert!(wire(&dl) <= 10_000);
        let mut dl = letter(10, 0, 20_000);
        fit(&mut dl, 10_000, &stats);
        assert!(dl.drop_key);
        assert!(wire(&dl) <= 10_000);
    }

    #[test]
    fn shrinking_ends() {
        let stats = SinkStats::default();
        let mut dl = letter(1 << 20, 2, 4);
        let mut steps = 0;
        while shrink(&mut dl, &stats) {
            steps += 1;
            assert!(steps < 40, "shrink must terminate");
        }
        assert_eq!(dl.value_limit, Some(0));
        assert!(dl.drop_headers && dl.drop_key);
    }

    fn out(topic: Option<&str>, header_keys: &[&str]) -> OutputRecord {
        OutputRecord {
            key: None,
            value: Some(b"v".to_vec()),
            headers: header_keys
                .iter()
                .map(|k| crate::sandbox::Header {
                    key: (*k).into(),
                    value: Vec::new(),
                })
                .collect(),
            topic: topic.map(Into::into),
            timestamp: None,
        }
    }

    #[test]
    fn outputs_are_checked_whole_before_any_is_enqueued() {
        let target = SinkTarget {
            pipeline: "p".into(),
            output_topics: vec!["out".into(), "side".into()],
            dead_letter_topic: "dlq".into(),
            group: "g".into(),
        };
        let ok = vec![out(None, &["a"]), out(Some("side"), &[])];
        assert_eq!(check_outputs(&target, ok).unwrap().len(), 2);
        let e = check_outputs(&target, vec![out(None, &[]), out(Some("nope"), &[])]).unwrap_err();
        assert_eq!(e.kind(), "unknown-topic");
        let e =
            check_outputs(&target, vec![out(None, &["a"]), out(None, &["b", "x\0y"])]).unwrap_err();
        assert_eq!(e.kind(), "produce-rejected");
        assert!(
            e.to_string().contains("output 1: header 1 key \"x\\0y\""),
            "{e}"
        );
    }

    #[test]
    fn an_encoded_output_keeps_its_bytes_and_header_order() {
        let mut o = out(Some("side"), &["b", "traceparent", "a"]);
        o.key = Some(vec![0xff, 0]);
        o.value = None;
        let e = encode_output(&o, "out", &[("pw.function.version", b"v1")], Some(b"tp"));
        assert_eq!(
            (e.topic, e.key, e.payload),
            ("side", Some(&[0xff, 0][..]), None)
        );
        let got = crate::record::owned_header_bytes(&e.headers).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            [&b"b"[..], b"a", b"pw.function.version", b"traceparent"]
        );
        assert_eq!(got[3].1.as_deref(), Some(&b"tp"[..]));
        assert_eq!(got[0].1.as_deref(), Some(&b""[..]), "empty stays empty");
    }

    #[test]
    fn refusals_are_classified() {
        let e = |c| KafkaError::MessageProduction(c);
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Class::Refused
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Class::Refused
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::UnknownTopic)),
            Class::Refused
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::OutOfOrderSequenceNumber)),
            Class::Fatal
        ));
        assert!(matches!(
            classify(&e(RDKafkaErrorCode::ProducerFenced)),
            Class::Fatal
        ));
    }

    #[test]
    fn fatal_keeps_the_first_error_and_its_kind() {
        let f = Fatal::default();
        f.thread_died("consumer thread panicked".into());
        f.set("later".into());
        let e = f.error().unwrap();
        assert_eq!(e.kind, FatalKind::ThreadDied);
        assert_eq!(e.message, "consumer thread panicked");
        assert_eq!(e.kind.exit_code(), 4);
    }
}
