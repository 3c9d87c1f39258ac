//! The activation log: a compacted, single-partition Kafka topic keyed by
//! pipeline. Every worker reads it from the beginning, so all of them see the
//! same activations in the same order, and a worker that starts later
//! rebuilds the current state from it. Each record carries the pipeline's
//! previous deployments, so a rollback needs nothing compaction removed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::kafka::base_client_config;

/// How many earlier deployments an activation remembers for rollback.
pub const HISTORY_DEPTH: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("activation log {topic}: {message}")]
    Kafka { topic: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deployed {
    pub function: String,
    pub version: u64,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Activation {
    pub pipeline: String,
    pub tenant: String,
    #[serde(flatten)]
    pub current: Deployed,
    /// `activate` or `rollback`.
    pub action: String,
    pub activated_at: String,
    /// Earlier deployments, most recent first.
    #[serde(default)]
    pub history: Vec<Deployed>,
    /// The precompiled artifacts of `current` (name → `sha256:`), from its
    /// manifest: the only remote artifacts a worker will run.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// Offset in the log (not serialized: it is where the record sits).
    #[serde(skip)]
    pub offset: i64,
}

/// The latest activation per pipeline.
pub type ActivationState = BTreeMap<String, Activation>;

fn kerr(topic: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Kafka {
        topic: topic.to_string(),
        message: e.to_string(),
    }
}

/// Creates the topic (compacted, one partition) if it does not exist.
pub async fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = base_client_config(kafka)
        .create()
        .map_err(|e| kerr(topic, e))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", "60000");
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_WAIT));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| kerr(topic, e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            // A slow controller: the creation may still complete, and the
            // reader waits for the topic (and says so if it never comes).
            Err((
                _,
                code @ (RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut),
            )) => {
                tracing::warn!(topic, error = %code, "creating the activation log timed out; waiting for it to appear");
            }
            Err((_, code)) => return Err(kerr(topic, format!("cannot create it: {code}"))),
        }
    }
    Ok(())
}

/// How long a reader waits for a topic just created (by this process or
/// another) to show in the broker's metadata. Creation returns once the
/// controller has the topic; the broker answering metadata may learn of it
/// later, and under load that took seconds: a reader that looked once saw
/// "0 partitions" and refused to start.
const METADATA_WAIT: Duration = Duration::from_secs(30);
const METADATA_RETRY: Duration = Duration::from_millis(200);

/// The topic's partition count, waiting up to `wait` while the broker does
/// not know the topic yet (or knows it without partitions or leaders).
fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    wait: Duration,
) -> Result<usize, LogError> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = match consumer.fetch_metadata(Some(topic), left.max(Duration::from_secs(1))) {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    return Ok(t.partitions().len())
                }
                Some(t) => match t.error() {
                    Some(code) => format!("metadata error {}", RDKafkaErrorCode::from(code)),
                    None => "no partitions in its metadata".to_string(),
                },
                None => "not in the broker's metadata".to_string(),
            },
            Err(e) if transient(&e) => e.to_string(),
            Err(e) => return Err(kerr(topic, e)),
        };
        if Instant::now() >= deadline {
            return Err(kerr(
                topic,
                format!("not available within {wait:?} ({seen}); is it being created, or was it deleted?"),
            ));
        }
        tracing::debug!(topic, state = %seen, "activation log not in the metadata yet");
        std::thread::sleep(METADATA_RETRY);
    }
}

/// Errors a topic that exists but is not fully propagated yet answers with.
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// Appends activations (idempotent, acks=all: an accepted activation is durable).
pub struct LogWriter {
    topic: String,
    producer: FutureProducer,
}

impl LogWriter {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, LogError> {
        let producer = base_client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| kerr(topic, e))?;
        Ok(Self {
            topic: topic.to_string(),
            producer,
        })
    }

    /// Returns the offset the activation was written at.
    pub async fn append(&self, a: &Activation) -> Result<i64, LogError> {
        let body = serde_json::to_vec(a).expect("activation serializes");
        let rec = FutureRecord::to(&self.topic)
            .partition(0)
            .key(a.pipeline.as_bytes())
            .payload(&body);
        let delivery = self
            .producer
            .send(rec, Duration::from_secs(15))
            .await
            .map_err(|(e, _)| kerr(&self.topic, e))?;
        Ok(delivery.offset)
    }
}

/// Reads the log from the beginning, then follows it.
pub struct LogReader {
    topic: String,
    consumer: BaseConsumer,
    state: ActivationState,
    next_offset: i64,
}

impl LogReader {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, LogError> {
        // No group: every reader reads everything and commits nothing.
        let consumer: BaseConsumer = base_client_config(kafka)
            .set("group.id", "pipeline-worker.activation-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // An activation should reach every worker in well under a second;
            // librdkafka's default long-poll (500 ms) would dominate that.
            .set("fetch.wait.max.ms", "50")
            .create()
            .map_err(|e| kerr(topic, e))?;
        let partitions = partition_count(&consumer, topic, METADATA_WAIT)?;
        if partitions != 1 {
            // Order across pipelines and "read everything" both rely on it.
            return Err(kerr(
                topic,
                format!("has {partitions} partitions; the activation log must have exactly 1 (compacted)"),
            ));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| kerr(topic, e))?;
        consumer.assign(&tpl).map_err(|e| kerr(topic, e))?;
        Ok(Self {
            topic: topic.to_string(),
            consumer,
            state: BTreeMap::new(),
            next_offset: 0,
        })
    }

    pub fn state(&self) -> &ActivationState {
        &self.state
    }

    /// Reads up to the current end of the log (the state every worker
    /// starting now must reach before it consumes).
    pub fn catch_up(&mut self, timeout: Duration) -> Result<Vec<Activation>, LogError> {
        let deadline = Instant::now() + timeout;
        let high = loop {
            // Just after the topic is created, the partition may have no
            // leader yet: a transient refusal, retried until the deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.fetch_watermarks(
                &self.topic,
                0,
                left.max(Duration::from_millis(100)),
            ) {
                Ok((_, high)) => break high,
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    tracing::debug!(topic = %self.topic, error = %e, "activation log watermarks not available yet");
                    std::thread::sleep(METADATA_RETRY);
                }
                Err(e) => return Err(kerr(&self.topic, e)),
            }
        };
        let mut seen = Vec::new();
        while self.next_offset < high {
            if Instant::now() >= deadline {
                return Err(kerr(
                    &self.topic,
                    format!(
                        "read up to offset {} of {high} within {timeout:?}",
                        self.next_offset
                    ),
                ));
            }
            if let Some(a) = self.poll(Duration::from_millis(100))? {
                seen.push(a);
            }
        }
        Ok(seen)
    }

    /// The next activation, if one arrives within `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<Activation>, LogError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(e)) => {
                tracing::warn!(topic = %self.topic, error = %e, "activation log read error");
                Ok(None)
            }
            Some(Ok(m)) => {
                self.next_offset = m.offset() + 1;
                let Some(body) = m.payload() else {
                    return Ok(None); // tombstone
                };
                match serde_json::from_slice::<Activation>(body) {
                    Ok(mut a) => {
                        a.offset = m.offset();
                        self.state.insert(a.pipeline.clone(), a.clone());
                        Ok(Some(a))
                    }
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, offset = m.offset(), error = %e, "ignoring an unreadable activation record");
                        Ok(None)
                    }
                }
            }
        }
    }
}
