//! librdkafka client settings: what every client shares, what the producer
//! and the pipeline consumers need for correctness. One place, so the
//! registry's log reader, the sink and the source agree.

use rdkafka::config::ClientConfig;

use crate::config::{DeliveryMode, KafkaConfig, PipelineConfig, RuntimeConfig};

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
    // A vanished output or dead-letter topic must be refused (and the input
    // dead-lettered), not silently re-created by the producer's metadata
    // request on a broker with auto.create.topics.enable.
    if !kafka.librdkafka.contains_key("allow.auto.create.topics") {
        c.set("allow.auto.create.topics", "false");
    }
    c
}

/// The consumer's `max.poll.interval.ms` (librdkafka's default: 300 s).
pub fn max_poll_interval(kafka: &KafkaConfig) -> std::time::Duration {
    let ms = kafka
        .librdkafka
        .get("max.poll.interval.ms")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(300_000);
    std::time::Duration::from_millis(ms)
}

/// The group id of a pipeline's consumers.
pub fn group_id(kafka: &KafkaConfig, pipeline: &PipelineConfig) -> String {
    format!("{}.{}", kafka.group_id, pipeline.name)
}

/// A pipeline's consumer. Offsets are stored by the worker (only contiguous,
/// acknowledged watermarks) and committed by librdkafka's auto-commit.
///
/// Record size: librdkafka's fetch defaults (`fetch.max.bytes` 50 MiB,
/// `receive.message.max.bytes` 100 MB, and KIP-74 semantics for
/// `max.partition.fetch.bytes`, which returns at least one record batch even
/// if it is larger) already admit a record batch up to the broker's
/// `max.message.bytes`, so a record the broker accepted is always fetched.
/// They are left to the operator's map.
///
/// Prefetch: `queued.min.messages` is `runtime.max_in_flight` (records
/// fetched ahead per partition, waiting for its sandbox thread), and
/// `fetch.queue.backoff.ms` is 10 ms instead of librdkafka's 1 s: a partition
/// found above the threshold is checked again that soon, so a sandbox thread
/// that drains its queue does not then sit idle for up to a second.
pub fn consumer_config(
    kafka: &KafkaConfig,
    pipeline: &PipelineConfig,
    runtime: &RuntimeConfig,
) -> ClientConfig {
    let mut cc = base_client_config(kafka);
    let exactly_once = pipeline.delivery == DeliveryMode::ExactlyOnce;
    cc.set("group.id", group_id(kafka, pipeline))
        // Exactly-once: offsets are committed only inside transactions.
        .set(
            "enable.auto.commit",
            if exactly_once { "false" } else { "true" },
        )
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
    if !kafka.librdkafka.contains_key("queued.min.messages") {
        cc.set("queued.min.messages", runtime.max_in_flight.to_string());
    }
    if !kafka.librdkafka.contains_key("fetch.queue.backoff.ms") {
        cc.set("fetch.queue.backoff.ms", "10");
    }
    if exactly_once {
        // Records of aborted transactions upstream (or our own replays'
        // aborted outputs, when chained) must never be processed.
        cc.set("isolation.level", "read_committed");
    }
    cc
}

/// The worker identity behind `transactional.id`: `kafka.worker_id`, else
/// `registry.worker_id`, else `$HOSTNAME` (else the kernel's hostname). Stable across restarts of the same
/// worker (a StatefulSet pod keeps its name), so a restarted worker's
/// `init_transactions` aborts whatever its predecessor left open.
pub fn worker_identity(kafka: &KafkaConfig, registry_worker_id: Option<&str>) -> Option<String> {
    kafka
        .worker_id
        .clone()
        .or_else(|| registry_worker_id.map(str::to_owned))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `pipeline-worker-<group>-<worker id>`: one transactional producer per
/// exactly-once pipeline and worker.
pub fn transactional_id(kafka: &KafkaConfig, pipeline: &PipelineConfig, worker: &str) -> String {
    format!("pipeline-worker-{}-{worker}", group_id(kafka, pipeline))
}

/// An exactly-once pipeline's own producer: the shared settings plus its
/// `transactional.id` (which implies idempotence and `acks=all`).
pub fn transactional_producer_config(kafka: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    let mut c = producer_config(kafka);
    c.set("transactional.id", transactional_id);
    c
}

/// A bounded read ended without reaching the end of these partitions.
#[derive(Debug)]
pub struct Stalled {
    /// The partitions still short of their end.
    pub pending: Vec<i32>,
    /// The last error librdkafka reported meanwhile, if any.
    pub last_error: Option<rdkafka::error::KafkaError>,
}

impl Stalled {
    /// `"; last error: …"`, or empty.
    pub fn last_error_suffix(&self) -> String {
        self.last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    }
}

/// Reads assigned partitions up to the end offset (exclusive) given for each
/// in `pending`, handing every record before its end to `each`. Ends when
/// every partition is read (a partition EOF also ends one: its last offsets
/// can be transaction markers or aborted records, never delivered), or with
/// [`Stalled`] after `timeout` without progress. Shared by `dlq` and `test`
/// replays, which read what was there at start and stop.
pub fn read_to_ends<C: rdkafka::consumer::ConsumerContext, E>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    mut pending: std::collections::BTreeMap<i32, i64>,
    poll: std::time::Duration,
    timeout: std::time::Duration,
    mut each: impl FnMut(rdkafka::message::BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<Result<(), Stalled>, E> {
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message as _;
    let mut progress = std::time::Instant::now();
    let mut last_error: Option<KafkaError> = None;
    while !pending.is_empty() {
        match consumer.poll(poll) {
            None => {}
            Some(Ok(m)) => {
                progress = std::time::Instant::now();
                let Some(&end) = pending.get(&m.partition()) else {
                    continue;
                };
                if m.offset() + 1 >= end {
                    pending.remove(&m.partition());
                }
                if m.offset() >= end {
                    continue;
                }
                each(m)?;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                progress = std::time::Instant::now();
                pending.remove(&p);
            }
            // librdkafka retries transport errors itself; one that persists
            // ends the read at the timeout, reported then.
            Some(Err(e)) => last_error = Some(e),
        }
        if !pending.is_empty() && progress.elapsed() > timeout {
            return Ok(Err(Stalled {
                pending: pending.into_keys().collect(),
                last_error,
            }));
        }
    }
    Ok(Ok(()))
}
