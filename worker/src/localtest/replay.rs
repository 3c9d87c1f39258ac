//! `test` reading real records from Kafka instead of a file.
//!
//! Reading never joins a consumer group, never commits and never produces:
//! every selected partition is `assign`ed at an explicit offset and read up
//! to the high watermark captured at start (or fewer, `--limit`), so a replay
//! ends on its own and cannot move any group's offsets. librdkafka's
//! `assign()` still wants a `group.id`; the one given is never joined nor
//! written to.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

use super::{origin_label, Input};

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The earliest record still kept.
    Beginning,
    /// This offset (or the earliest kept, if later).
    Offset(i64),
    /// The last N records.
    FromEnd(u64),
    /// The first record with a timestamp at or after this (ms since the
    /// epoch), found with `offsets_for_times`.
    Timestamp(i64),
}

/// `isolation.level` of the replay consumer.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

/// `test`'s flags for reading a topic (see the README, "Replaying a topic").
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Read the records from Kafka (with --config: the pipeline's input
    /// topics, unless --topic names others). Implied by --topic and --brokers.
    /// Replay commits nothing and produces nothing.
    #[arg(long, conflicts_with = "input")]
    pub replay: bool,
    /// Bootstrap servers (with --config: instead of `kafka.brokers`; its
    /// `[kafka.librdkafka]` settings, TLS/SASL, still apply).
    #[arg(long, conflicts_with = "input")]
    pub brokers: Option<String>,
    /// A topic to replay (repeatable; default with --config: the pipeline's
    /// input topics).
    #[arg(long = "topic", value_name = "TOPIC", conflicts_with = "input")]
    pub topics: Vec<String>,
    /// Only these partitions of every topic (repeatable; default all).
    #[arg(long = "partition", value_name = "P", conflicts_with = "input")]
    pub partitions: Vec<i32>,
    /// Start at this offset in every partition (default: the earliest kept).
    #[arg(long, value_name = "N", conflicts_with_all = ["input", "from_end", "from_timestamp"])]
    pub from_offset: Option<i64>,
    /// Start N records before the end of every partition: its last N.
    #[arg(long, value_name = "N", conflicts_with_all = ["input", "from_timestamp"])]
    pub from_end: Option<u64>,
    /// Start at the first record at or after this time (RFC 3339, e.g.
    /// 2026-12-01T20:00:00Z) in every partition.
    #[arg(long, value_name = "TIME", conflicts_with = "input")]
    pub from_timestamp: Option<String>,
    /// Records to replay in all (shared fairly among the partitions).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "input")]
    pub limit: u64,
    /// How long the broker may take to answer, and a partition to make
    /// progress, before the replay gives up.
    #[arg(long, default_value = "10s", conflicts_with = "input")]
    pub timeout: humantime::Duration,
    /// Which records a transactional topic shows.
    #[arg(long, value_enum, default_value_t = Isolation::ReadCommitted, conflicts_with = "input")]
    pub isolation: Isolation,
}

impl ReplayArgs {
    /// Whether any flag asks for a replay.
    pub fn requested(&self) -> bool {
        self.replay || self.brokers.is_some() || !self.topics.is_empty()
    }

    pub fn start(&self) -> Result<Start, ReplayError> {
        if let Some(o) = self.from_offset {
            if o < 0 {
                return Err(ReplayError::BadFlag {
                    flag: "--from-offset",
                    value: o.to_string(),
                    reason: "must not be negative".into(),
                });
            }
            return Ok(Start::Offset(o));
        }
        if let Some(n) = self.from_end {
            return Ok(Start::FromEnd(n));
        }
        if let Some(t) = &self.from_timestamp {
            return parse_time(t).map(Start::Timestamp);
        }
        Ok(Start::Beginning)
    }
}

fn parse_time(value: &str) -> Result<i64, ReplayError> {
    let bad = |reason: String| ReplayError::BadFlag {
        flag: "--from-timestamp",
        value: value.to_string(),
        reason,
    };
    let at = humantime::parse_rfc3339_weak(value)
        .map_err(|e| bad(format!("not an RFC 3339 time ({e})")))?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("before 1970".into()))?
        .as_millis();
    i64::try_from(ms).map_err(|_| bad("too far in the future".into()))
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{flag} {value:?}: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("brokers {brokers} did not answer within {}: {source}", humantime::format_duration(*.timeout))]
    Unreachable {
        brokers: String,
        timeout: Duration,
        source: KafkaError,
    },
    #[error("topic {topic:?} does not exist on {brokers}{detail}")]
    TopicMissing {
        topic: String,
        brokers: String,
        detail: String,
    },
    #[error("--partition {partition}: topic {topic:?} has partitions 0..={last}")]
    NoSuchPartition {
        partition: i32,
        topic: String,
        last: i32,
    },
    #[error("{what} ({topic}): {source}")]
    Kafka {
        what: &'static str,
        topic: String,
        source: KafkaError,
    },
    #[error("no progress for {} on partition(s) {pending}{last_error}; nothing was processed", humantime::format_duration(*.timeout))]
    Stalled {
        timeout: Duration,
        pending: String,
        last_error: String,
    },
}

/// What to read.
pub struct Plan {
    pub kafka: KafkaConfig,
    /// Given to librdkafka for `assign()`; never joined nor committed.
    pub group: String,
    pub topics: Vec<String>,
    /// Empty: every partition.
    pub partitions: Vec<i32>,
    pub start: Start,
    /// In all; `None`: no cap (the dry run reads the last N of each).
    pub limit: Option<u64>,
    pub timeout: Duration,
    pub isolation: Isolation,
}

/// One partition's range, `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    /// The high watermark at start.
    pub high: i64,
}

pub struct Replayed {
    pub ranges: Vec<Range>,
    /// In topic order, then partition, then offset.
    pub inputs: Vec<Input>,
}

/// Caps per range so they add up to at most `limit`, shared evenly: every
/// partition gets the same share unless it has fewer records.
fn share(available: &[u64], limit: u64) -> Vec<u64> {
    let mut caps = vec![0u64; available.len()];
    let mut remaining = limit;
    loop {
        let open: Vec<usize> = (0..available.len())
            .filter(|&i| caps[i] < available[i])
            .collect();
        if open.is_empty() || remaining == 0 {
            return caps;
        }
        let each = (remaining / open.len() as u64).max(1);
        for i in open {
            let add = each.min(available[i] - caps[i]).min(remaining);
            caps[i] += add;
            remaining -= add;
            if remaining == 0 {
                break;
            }
        }
    }
}

pub fn read(plan: &Plan) -> Result<Replayed, ReplayError> {
    let mut cc = crate::kafka::base_client_config(&plan.kafka);
    cc.set("group.id", &plan.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // Retention may delete the start of the range while it is read.
        .set("auto.offset.reset", "earliest")
        .set(
            "isolation.level",
            match plan.isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        );
    let first = plan.topics.first().cloned().unwrap_or_default();
    let consumer: BaseConsumer = cc.create().map_err(|source| ReplayError::Kafka {
        what: "creating the consumer",
        topic: first,
        source,
    })?;
    let kafka_err = |what, topic: &str| {
        let topic = topic.to_string();
        move |source| ReplayError::Kafka {
            what,
            topic,
            source,
        }
    };
    let mut ranges = Vec::new();
    for topic in &plan.topics {
        let md = consumer
            .fetch_metadata(Some(topic), plan.timeout)
            .map_err(|source| ReplayError::Unreachable {
                brokers: plan.kafka.brokers.clone(),
                timeout: plan.timeout,
                source,
            })?;
        let count = match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                t.partitions().len() as i32
            }
            other => {
                return Err(ReplayError::TopicMissing {
                    topic: topic.clone(),
                    brokers: plan.kafka.brokers.clone(),
                    detail: other
                        .and_then(|t| t.error())
                        .map(|e| format!(" ({:?})", rdkafka::types::RDKafkaErrorCode::from(e)))
                        .unwrap_or_default(),
                })
            }
        };
        let partitions: Vec<i32> = if plan.partitions.is_empty() {
            (0..count).collect()
        } else {
            for &p in &plan.partitions {
                if !(0..count).contains(&p) {
                    return Err(ReplayError::NoSuchPartition {
                        partition: p,
                        topic: topic.clone(),
                        last: count - 1,
                    });
                }
            }
            plan.partitions.clone()
        };
        let at_time = match plan.start {
            Start::Timestamp(ms) => {
                let mut tpl = TopicPartitionList::new();
                for &p in &partitions {
                    tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                        .map_err(kafka_err("looking up --from-timestamp", topic))?;
                }
                Some(
                    consumer
                        .offsets_for_times(tpl, plan.timeout)
                        .map_err(kafka_err("looking up --from-timestamp", topic))?,
                )
            }
            _ => None,
        };
        for p in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, plan.timeout)
                .map_err(kafka_err("reading the watermarks", topic))?;
            let start = match plan.start {
                Start::Beginning => low,
                Start::Offset(o) => o.max(low),
                Start::FromEnd(n) => high.saturating_sub(n as i64).max(low),
                Start::Timestamp(_) => {
                    match at_time
                        .as_ref()
                        .and_then(|t| t.find_partition(topic, p))
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o.max(low),
                        // No record at or after that time.
                        _ => high,
                    }
                }
            };
            ranges.push(Range {
                topic: topic.clone(),
                partition: p,
                start: start.min(high),
                end: high,
                high,
            });
        }
    }
    if let Some(limit) = plan.limit {
        let available: Vec<u64> = ranges.iter().map(|r| (r.end - r.start) as u64).collect();
        for (r, cap) in ranges.iter_mut().zip(share(&available, limit)) {
            r.end = r.start + cap as i64;
        }
    }
    // One topic at a time: librdkafka's end-of-partition event names only
    // the partition.
    let mut inputs = Vec::new();
    for topic in &plan.topics {
        let mine: Vec<&Range> = ranges
            .iter()
            .filter(|r| &r.topic == topic && r.start < r.end)
            .collect();
        inputs.extend(read_topic(&consumer, topic, &mine, plan.timeout)?);
    }
    Ok(Replayed { ranges, inputs })
}

/// Reads `ranges` (all of `topic`), in partition then offset order.
fn read_topic(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[&Range],
    timeout: Duration,
) -> Result<Vec<Input>, ReplayError> {
    let kafka_err = |what| {
        move |source| ReplayError::Kafka {
            what,
            topic: topic.to_string(),
            source,
        }
    };
    let mut per: BTreeMap<i32, Vec<Input>> = BTreeMap::new();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for r in ranges {
        pending.insert(r.partition, r.end);
        assignment
            .add_partition_offset(topic, r.partition, Offset::Offset(r.start))
            .map_err(kafka_err("assigning"))?;
    }
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err("assigning"))?;
    let read = crate::kafka::read_to_ends(
        consumer,
        pending,
        Duration::from_millis(100),
        timeout,
        |m| -> Result<(), std::convert::Infallible> {
            use rdkafka::message::Message as _;
            let input = match crate::record::from_message(&m) {
                Ok(r) => (origin_label(&r), Ok(r)),
                Err(poison) => (origin_label(&poison.lossy), Err(poison.error)),
            };
            per.entry(m.partition()).or_default().push(input);
            Ok(())
        },
    );
    if let Ok(Err(s)) = read {
        return Err(ReplayError::Stalled {
            timeout,
            pending: s
                .pending
                .iter()
                .map(|p| format!("{topic}/{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            last_error: s.last_error_suffix(),
        });
    }
    consumer.unassign().map_err(kafka_err("unassigning"))?;
    Ok(per.into_values().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_shared_evenly_and_never_exceeded() {
        assert_eq!(share(&[10, 10, 10], 9), [3, 3, 3]);
        assert_eq!(share(&[1, 10, 10], 9), [1, 4, 4]);
        assert_eq!(share(&[10, 10], 3), [2, 1]);
        assert_eq!(share(&[2, 3], 100), [2, 3]);
        assert_eq!(share(&[0, 0], 5), [0, 0]);
        assert_eq!(share(&[5, 5, 5], 1), [1, 0, 0]);
    }

    #[test]
    fn timestamps_are_rfc3339_and_errors_name_the_flag() {
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z").unwrap(), 1500);
        let e = parse_time("yesterday").unwrap_err().to_string();
        assert!(
            e.contains("--from-timestamp") && e.contains("yesterday"),
            "{e}"
        );
    }
}
