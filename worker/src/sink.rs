//! The Kafka side that writes: outputs and dead letters through one
//! idempotent producer (`acks=all`), each delivery acknowledging its input's
//! [`Pending`]. A delivery that finally fails is fatal for the process: the
//! input's offset is never stored, so a restart processes it again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::sandbox::{Function, InputRecord, OutputRecord, RecordError, RecordResult};
use crate::source::{PartitionTracker, Pending};
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
}

/// Set once by the first unrecoverable error; every pipeline stops on it.
#[derive(Default)]
pub struct Fatal {
    error: Mutex<Option<String>>,
}

impl Fatal {
    pub fn set(&self, msg: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            tracing::error!(error = %msg, "fatal error; stopping without committing past it");
            *e = Some(msg);
        }
    }
    pub fn get(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct SinkContext {
    pub fatal: Arc<Fatal>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Arc<Pending>) {
        match result {
            Ok(_) => pending.ack(),
            Err((e, msg)) => {
                use rdkafka::Message;
                self.fatal
                    .set(format!("delivery to {} failed: {e}", msg.topic()));
            }
        }
    }
}

pub type KafkaProducer = ThreadedProducer<SinkContext>;

/// What the sink needs to know about the pipeline it writes for.
pub struct SinkTarget {
    pub pipeline: String,
    pub output_topics: Vec<String>,
    pub dead_letter_topic: String,
    /// The consumer group (span attribute).
    pub group: String,
}

/// What happened to one input, for the pipeline's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Produced(usize),
    Filtered,
    DeadLettered,
}

pub struct Sink {
    producer: KafkaProducer,
    fatal: Arc<Fatal>,
}

impl Sink {
    pub fn new(producer: KafkaProducer, fatal: Arc<Fatal>) -> Self {
        Self { producer, fatal }
    }

    /// Produces the outputs of one input (or its dead letter) and wires their
    /// acknowledgements to the input's offset.
    pub fn deliver(
        &self,
        target: &SinkTarget,
        function: &Function,
        input: &InputRecord,
        tracker: &Arc<PartitionTracker>,
        result: RecordResult,
        traceparent: Option<&str>,
    ) -> (Disposition, Option<RecordError>) {
        let result = result.and_then(|outs| check_topics(target, outs));
        // The record's span when tracing; else the input's own context is
        // carried over, so a trace is never cut by the worker.
        let input_trace = || {
            input
                .headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(TRACEPARENT))
                .map(|h| h.value.as_slice())
        };
        let trace: Option<&[u8]> = traceparent.map(str::as_bytes).or_else(input_trace);
        match result {
            Ok(outs) if outs.is_empty() => {
                tracker.complete(input.offset);
                (Disposition::Filtered, None)
            }
            Ok(outs) => {
                let pending = Pending::new(outs.len(), tracker.clone(), input.offset);
                for o in &outs {
                    let topic = o.topic.as_deref().unwrap_or(&target.output_topics[0]);
                    let mut rec = BaseRecord::with_opaque_to(topic, pending.clone())
                        .payload(&o.value)
                        .headers(to_kafka_headers(
                            &o.headers,
                            &[(headers::FUNCTION_VERSION, function.version.as_bytes())],
                            trace,
                        ));
                    if let Some(k) = &o.key {
                        rec = rec.key(k);
                    }
                    if let Some(ts) = o.timestamp {
                        rec = rec.timestamp(ts);
                    }
                    self.send(rec);
                }
                (Disposition::Produced(outs.len()), None)
            }
            Err(err) => {
                let partition = input.partition.to_string();
                let offset = input.offset.to_string();
                let message = crate::sandbox::truncate(&err.to_string(), 4096);
                let extra: [(&str, &[u8]); 8] = [
                    (headers::ERROR_KIND, err.kind().as_bytes()),
                    (headers::ERROR_MESSAGE, message.as_bytes()),
                    (headers::FUNCTION_NAME, function.name.as_bytes()),
                    (headers::FUNCTION_DIGEST, function.digest.as_bytes()),
                    (headers::FUNCTION_VERSION, function.version.as_bytes()),
                    (headers::ORIGIN_TOPIC, input.topic.as_bytes()),
                    (headers::ORIGIN_PARTITION, partition.as_bytes()),
                    (headers::ORIGIN_OFFSET, offset.as_bytes()),
                ];
                let pending = Pending::new(1, tracker.clone(), input.offset);
                let mut rec = BaseRecord::with_opaque_to(&target.dead_letter_topic, pending)
                    .payload(&input.value)
                    .headers(to_kafka_headers(&input.headers, &extra, trace));
                if let Some(k) = &input.key {
                    rec = rec.key(k);
                }
                if let Some(ts) = input.timestamp {
                    rec = rec.timestamp(ts);
                }
                self.send(rec);
                (Disposition::DeadLettered, Some(err))
            }
        }
    }

    fn send(&self, mut rec: BaseRecord<'_, Vec<u8>, Vec<u8>, Arc<Pending>>) {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // Backpressure: the producer's background thread drains the queue.
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, back)) => {
                    self.fatal
                        .set(format!("cannot enqueue a record for {}: {e}", back.topic));
                    return;
                }
            }
        }
    }

    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
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
