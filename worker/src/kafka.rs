//! librdkafka client settings: what every client shares, what the producer
//! and the pipeline consumers need for correctness. One place, so the
//! registry's log reader, the sink and the source agree.

use rdkafka::config::ClientConfig;

use crate::config::{KafkaConfig, PipelineConfig, RuntimeConfig};

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
    cc.set("group.id", group_id(kafka, pipeline))
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
    if !kafka.librdkafka.contains_key("queued.min.messages") {
        cc.set("queued.min.messages", runtime.max_in_flight.to_string());
    }
    if !kafka.librdkafka.contains_key("fetch.queue.backoff.ms") {
        cc.set("fetch.queue.backoff.ms", "10");
    }
    cc
}
