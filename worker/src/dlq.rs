//! `pipeline-worker dlq`: read a pipeline's dead-letter topic and re-drive
//! selected dead letters to its input.
//!
//! Reading never joins a consumer group and never commits: every selected
//! partition is `assign`ed at an explicit offset and read up to the high
//! watermark captured at start, so the command ends on its own and an
//! operator's listing cannot move any group's offsets.
//!
//! Re-drive produces through the same producer settings as `run`
//! (idempotent, `acks=all`, the operator's TLS/SASL map) and waits for every
//! delivery report. A re-driven record carries its original key, value,
//! timestamp and headers, without any `pw.*` header, plus [`REDRIVEN`] and
//! [`REDRIVE_COUNT`]. The worker's dead-letter path keeps an input's headers,
//! so a record that fails again comes back to the dead-letter topic with both
//! headers, and `--max-redrives` stops it from being re-driven forever.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Config, ConfigError, PipelineConfig};
use crate::sink::headers;

/// On a re-driven record: `<dead-letter topic>/<partition>/<offset>@<RFC 3339
/// UTC time of the re-drive>`. Kafka topic names cannot contain `/` or `@`.
pub const REDRIVEN: &str = "pw.redriven";
/// On a re-driven record: how many times this record has been re-driven,
/// counting this time (1 on the first re-drive).
pub const REDRIVE_COUNT: &str = "pw.redrive.count";
/// The prefix of every header the worker and this command write.
const OWN_PREFIX: &[u8] = b"pw.";

/// `pipeline-worker dlq [list|redrive]`.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true
)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: Option<Box<DlqCommand>>,
    /// `list` is the default. Boxed, like the subcommand: the CLI's enum of
    /// commands stays small.
    #[command(flatten)]
    list: Box<ListArgs>,
}

#[derive(clap::Subcommand, Debug)]
enum DlqCommand {
    /// Print the selected dead letters: error, origin, function version, key,
    /// value size and preview (the default).
    List(ListArgs),
    /// Produce the selected dead letters back to the pipeline's input topic.
    Redrive(RedriveArgs),
}

/// Which dead letters a command reads (all of them by default).
#[derive(clap::Args, Debug, Clone)]
pub struct Selection {
    // Options only for clap: `dlq --config ...` (list) shares these with its
    // subcommands, and clap builds the top-level struct even when a
    // subcommand was given; `required` still makes clap refuse a missing one.
    #[arg(long, short, env = "PIPELINE_WORKER_CONFIG", required = true)]
    pub config: Option<PathBuf>,
    /// The pipeline (its `name` in the config) whose dead-letter topic to read.
    #[arg(long, short, required = true)]
    pub pipeline: Option<String>,
    /// Only these partitions of the dead-letter topic (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub partition: Vec<i32>,
    /// First dead-letter offset to read, in each selected partition.
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Last dead-letter offset to read (inclusive), in each selected partition.
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Only dead letters whose Kafka timestamp is at or after this time:
    /// RFC 3339 (`2026-12-01T17:00:00Z`) or a duration ago (`2h`, `30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only these error kinds (`pw.error.kind`; repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Only dead letters of this function version (`pw.function.version`, or
    /// the full `sha256:` digest).
    #[arg(long, value_delimiter = ',')]
    pub function_version: Vec<String>,
    /// Only dead letters from these input partitions (`pw.origin.partition`).
    #[arg(long, value_delimiter = ',')]
    pub origin_partition: Vec<i32>,
    /// Only dead letters from these input topics (`pw.origin.topic`).
    #[arg(long, value_delimiter = ',')]
    pub origin_topic: Vec<String>,
    /// How long to wait for the brokers, and at most between two records.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    select: Selection,
    /// `text` for people, `json` for one JSON object per line.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Bytes of each value shown.
    #[arg(long, default_value_t = 80)]
    preview: usize,
}

#[derive(clap::Args, Debug)]
pub struct RedriveArgs {
    #[command(flatten)]
    select: Selection,
    /// Show what would be sent; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send: without it (or `--dry-run`) nothing is produced.
    #[arg(long)]
    yes: bool,
    /// Skip dead letters already re-driven this many times (`pw.redrive.count`).
    #[arg(long, default_value_t = 3)]
    max_redrives: u32,
    /// Timestamp of the re-driven records: the dead letter's (the original
    /// record's) or the time of the re-drive.
    #[arg(long, value_enum, default_value = "original")]
    timestamp: TimestampMode,
    /// `text`, or `json`: one JSON object per dead letter (sent, skipped,
    /// failed, would-send).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TimestampMode {
    Original,
    Now,
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--pipeline {name}: no pipeline of that name in {config} (pipelines: {known})")]
    UnknownPipeline {
        name: String,
        config: String,
        known: String,
    },
    #[error("{flag} `{value}`: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "could not reach the Kafka brokers {brokers} within {timeout:?} (--timeout): {source}"
    )]
    Unreachable {
        brokers: String,
        timeout: Duration,
        source: KafkaError,
    },
    #[error("{role} topic `{topic}` of pipeline `{pipeline}` does not exist{detail}")]
    TopicMissing {
        role: &'static str,
        topic: String,
        pipeline: String,
        detail: String,
    },
    #[error("--partition {partition}: dead-letter topic `{topic}` has partitions 0..={last}")]
    NoSuchPartition {
        partition: i32,
        topic: String,
        last: i32,
    },
    #[error("{what} on `{topic}`: {source}")]
    Kafka {
        what: &'static str,
        topic: String,
        source: KafkaError,
    },
    #[error("reading `{topic}` made no progress for {timeout:?} (--timeout) with partitions {pending} not read to their end{last_error}")]
    Stalled {
        topic: String,
        timeout: Duration,
        pending: String,
        last_error: String,
    },
    #[error("redrive produces records to the input topic: pass --yes to send them, or --dry-run to see what would be sent")]
    NotConfirmed,
    #[error("{failed} of {attempted} re-driven records were not delivered (see the lines marked `failed`); the dead letters stay where they are")]
    DeliveryFailed { failed: usize, attempted: usize },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// `pipeline-worker dlq ...`
pub fn run(args: DlqArgs) -> Result<(), DlqError> {
    let mut out = std::io::stdout().lock();
    match args.command.map(|c| *c) {
        Some(DlqCommand::Redrive(r)) => redrive(&r, &mut out),
        Some(DlqCommand::List(l)) => list(&l, &mut out),
        None => list(&args.list, &mut out),
    }
}

/// One dead letter as read, bytes untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Every header in order: the original record's, then the worker's.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl DeadLetter {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        // Header keys read as bytes: rdkafka's `Headers` accessors panic on a
        // key that is not UTF-8, and dead letters keep such keys.
        let headers = match crate::record::message_parts(m) {
            Ok(p) => crate::record::header_bytes(&p.headers),
            Err(e) => vec![(
                b"<unreadable headers>".to_vec(),
                Some(e.to_string().into_bytes()),
            )],
        };
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The last header of that name: the worker appends its own after the
    /// original record's, which may carry `pw.*` headers from an earlier hop.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_deref().unwrap_or_default())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        std::str::from_utf8(self.header(name)?).ok()?.parse().ok()
    }

    pub fn kind(&self) -> Option<String> {
        self.text(headers::ERROR_KIND)
    }
    pub fn origin_topic(&self) -> Option<String> {
        self.text(headers::ORIGIN_TOPIC)
    }
    pub fn origin_partition(&self) -> Option<i32> {
        self.number(headers::ORIGIN_PARTITION)
    }
    pub fn origin_offset(&self) -> Option<i64> {
        self.number(headers::ORIGIN_OFFSET)
    }
    pub fn function_version(&self) -> Option<String> {
        self.text(headers::FUNCTION_VERSION)
    }
    pub fn truncated(&self) -> bool {
        self.header(headers::DLQ_TRUNCATED).is_some()
    }
    /// Times this record was re-driven before it was dead-lettered (again).
    pub fn redrive_count(&self) -> u32 {
        self.number(REDRIVE_COUNT)
            .unwrap_or(u32::from(self.header(REDRIVEN).is_some()))
    }

    fn to_json(&self, preview: usize) -> serde_json::Value {
        let value_len = self.value.as_ref().map(Vec::len);
        serde_json::json!({
            "dlq_topic": self.topic,
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "timestamp": self.timestamp,
            "error_kind": self.kind(),
            "error_message": self.text(headers::ERROR_MESSAGE),
            "origin_topic": self.origin_topic(),
            "origin_partition": self.origin_partition(),
            "origin_offset": self.origin_offset(),
            "function_name": self.text(headers::FUNCTION_NAME),
            "function_version": self.function_version(),
            "function_digest": self.text(headers::FUNCTION_DIGEST),
            "key": self.key.as_deref().map(lossless),
            "value_size": value_len,
            "value_preview": self.value.as_deref().map(|v| preview_of(v, preview)),
            "truncated": self.truncated(),
            "original_size": self.number::<u64>(headers::DLQ_ORIGINAL_SIZE),
            "redriven": self.text(REDRIVEN),
            "redrive_count": self.redrive_count(),
            "headers": self.headers.iter().map(|(k, v)| serde_json::json!({
                "key": lossless(k),
                "value": v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
            })).collect::<Vec<_>>(),
        })
    }

    fn write_text(&self, out: &mut impl Write, preview: usize) -> std::io::Result<()> {
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        writeln!(
            out,
            "{} {}/{}  [{}] {}",
            self.topic,
            self.partition,
            self.offset,
            or_unknown(self.kind()),
            one_line(&or_unknown(self.text(headers::ERROR_MESSAGE))),
        )?;
        let time = self
            .timestamp
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
            })
            .unwrap_or_else(|| "none".into());
        writeln!(
            out,
            "    origin {} {}/{}  function {} version {}  timestamp {time}",
            or_unknown(self.origin_topic()),
            self.origin_partition()
                .map_or("?".into(), |p| p.to_string()),
            self.origin_offset().map_or("?".into(), |o| o.to_string()),
            or_unknown(self.text(headers::FUNCTION_NAME)),
            or_unknown(self.function_version()),
        )?;
        let key = match &self.key {
            Some(k) => format!("{:?}", lossless(k)),
            None => "null".into(),
        };
        let value = match &self.value {
            Some(v) => format!("{} bytes: {}", v.len(), one_line(&preview_of(v, preview))),
            None => "null (tombstone)".into(),
        };
        writeln!(out, "    key {key}  value {value}")?;
        if let Some(r) = self.text(REDRIVEN) {
            writeln!(
                out,
                "    re-driven {} time(s), last {r}",
                self.redrive_count()
            )?;
        }
        if self.truncated() {
            writeln!(
                out,
                "    TRUNCATED: value cut from {} bytes{}; cannot be re-driven",
                or_unknown(self.text(headers::DLQ_ORIGINAL_SIZE)),
                self.text(headers::DLQ_DROPPED)
                    .map(|d| format!(", dropped {d}"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// A byte string as text: itself when UTF-8, else escaped (`\xff`).
fn lossless(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.escape_ascii().to_string(),
    }
}

/// Control characters escaped, so an entry keeps its lines (trap messages
/// carry backtraces); quotes and non-ASCII text stay readable.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn preview_of(v: &[u8], n: usize) -> String {
    let mut s = String::from_utf8_lossy(&v[..v.len().min(n)]).into_owned();
    if v.len() > n {
        s.push('…');
    }
    s
}

/// The filters of a [`Selection`] that look at a record's headers and time.
#[derive(Debug, Default, Clone)]
pub struct Filters {
    pub kinds: Vec<String>,
    pub function_versions: Vec<String>,
    pub origin_partitions: Vec<i32>,
    pub origin_topics: Vec<String>,
    pub since_ms: Option<i64>,
}

impl Filters {
    pub fn matches(&self, dl: &DeadLetter) -> bool {
        let any = |want: &[String], have: Option<String>| {
            want.is_empty() || have.is_some_and(|h| want.contains(&h))
        };
        any(&self.kinds, dl.kind())
            && (self.function_versions.is_empty()
                || [dl.function_version(), dl.text(headers::FUNCTION_DIGEST)]
                    .into_iter()
                    .flatten()
                    .any(|v| self.function_versions.contains(&v)))
            && (self.origin_partitions.is_empty()
                || dl
                    .origin_partition()
                    .is_some_and(|p| self.origin_partitions.contains(&p)))
            && any(&self.origin_topics, dl.origin_topic())
            // offsets_for_times finds the first offset at or after the time;
            // later records with earlier timestamps are left out here.
            && self
                .since_ms
                .is_none_or(|s| dl.timestamp.is_some_and(|t| t >= s))
    }
}

/// `--since`: RFC 3339, or a duration before `now`.
pub fn parse_since(value: &str, now: SystemTime) -> Result<i64, DlqError> {
    let bad = |reason: String| DlqError::BadFlag {
        flag: "--since",
        value: value.to_string(),
        reason,
    };
    let at = match humantime::parse_rfc3339_weak(value) {
        Ok(t) => t,
        Err(time_err) => match humantime::parse_duration(value) {
            Ok(d) => now
                .checked_sub(d)
                .ok_or_else(|| bad("reaches before 1970".into()))?,
            Err(_) => {
                return Err(bad(format!(
                    "neither an RFC 3339 time ({time_err}) nor a duration such as `2h`"
                )))
            }
        },
    };
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| bad("before 1970".into()))?
        .as_millis();
    i64::try_from(ms).map_err(|_| bad("too far in the future".into()))
}

/// The checked, resolved form of a [`Selection`].
struct Resolved {
    config: Config,
    pipeline: PipelineConfig,
    filters: Filters,
}

fn resolve(sel: &Selection) -> Result<Resolved, DlqError> {
    let missing = |flag| DlqError::BadFlag {
        flag,
        value: String::new(),
        reason: "is required".into(),
    };
    let path = sel.config.as_deref().ok_or_else(|| missing("--config"))?;
    let name = sel
        .pipeline
        .as_deref()
        .ok_or_else(|| missing("--pipeline"))?;
    let config = Config::load(path)?;
    let pipeline = config
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| DlqError::UnknownPipeline {
            name: name.to_string(),
            config: path.display().to_string(),
            known: config
                .pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    for k in &sel.kind {
        if !crate::sandbox::ERROR_KINDS.contains(&k.as_str()) {
            return Err(DlqError::BadFlag {
                flag: "--kind",
                value: k.clone(),
                reason: format!(
                    "not an error kind (kinds: {})",
                    crate::sandbox::ERROR_KINDS.join(", ")
                ),
            });
        }
    }
    for (flag, v) in [
        ("--from-offset", sel.from_offset),
        ("--to-offset", sel.to_offset),
    ] {
        if let Some(v) = v.filter(|v| *v < 0) {
            return Err(DlqError::BadFlag {
                flag,
                value: v.to_string(),
                reason: "must not be negative".into(),
            });
        }
    }
    if let (Some(from), Some(to)) = (sel.from_offset, sel.to_offset) {
        if to < from {
            return Err(DlqError::BadFlag {
                flag: "--to-offset",
                value: to.to_string(),
                reason: format!("is below --from-offset {from}"),
            });
        }
    }
    if sel.timeout.is_zero() {
        return Err(DlqError::BadFlag {
            flag: "--timeout",
            value: "0s".into(),
            reason: "must be positive".into(),
        });
    }
    let since_ms = sel
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    Ok(Resolved {
        config,
        pipeline,
        filters: Filters {
            kinds: sel.kind.clone(),
            function_versions: sel.function_version.clone(),
            origin_partitions: sel.origin_partition.clone(),
            origin_topics: sel.origin_topic.clone(),
            since_ms,
        },
    })
}

/// Partition counts of `topic`; the metadata request is also the broker
/// reachability check, bounded by `--timeout`.
fn partition_count(
    client: &impl Consumer,
    r: &Resolved,
    role: &'static str,
    topic: &str,
    timeout: Duration,
) -> Result<i32, DlqError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| DlqError::Unreachable {
            brokers: r.config.kafka.brokers.clone(),
            timeout,
            source,
        })?;
    let t = md.topics().iter().find(|t| t.name() == topic);
    match t {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        other => Err(DlqError::TopicMissing {
            role,
            topic: topic.to_string(),
            pipeline: r.pipeline.name.clone(),
            detail: other
                .and_then(|t| t.error())
                .map(|e| format!(" ({:?})", rdkafka::types::RDKafkaErrorCode::from(e)))
                .unwrap_or_default(),
        }),
    }
}

/// What was read, for the summary.
struct ReadSummary {
    read: u64,
    selected: u64,
}

/// Reads the selected range of the dead-letter topic, calling `each` on
/// every dead letter that passes the filters, in offset order per partition.
fn read_dead_letters(
    sel: &Selection,
    r: &Resolved,
    mut each: impl FnMut(DeadLetter) -> Result<(), DlqError>,
) -> Result<ReadSummary, DlqError> {
    let topic = r.pipeline.dead_letter_topic.as_str();
    let mut cc = crate::kafka::base_client_config(&r.config.kafka);
    // librdkafka's assign() needs a group.id, but with explicit offsets, no
    // subscribe and no commit, the group is never joined nor written to.
    // Named after the pipeline's group so group ACL prefixes still apply.
    cc.set(
        "group.id",
        format!(
            "{}.dlq",
            crate::kafka::group_id(&r.config.kafka, &r.pipeline)
        ),
    )
    .set("enable.auto.commit", "false")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "true")
    // Retention may delete the start of the range while it is read.
    .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = cc.create().map_err(|source| DlqError::Kafka {
        what: "creating the consumer",
        topic: topic.into(),
        source,
    })?;
    let count = partition_count(&consumer, r, "dead-letter", topic, sel.timeout)?;
    let partitions: Vec<i32> = if sel.partition.is_empty() {
        (0..count).collect()
    } else {
        for &p in &sel.partition {
            if !(0..count).contains(&p) {
                return Err(DlqError::NoSuchPartition {
                    partition: p,
                    topic: topic.into(),
                    last: count - 1,
                });
            }
        }
        sel.partition.clone()
    };
    let kafka_err = |what| {
        move |source| DlqError::Kafka {
            what,
            topic: topic.to_string(),
            source,
        }
    };
    let starts_at_time = match r.filters.since_ms {
        Some(ms) => {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(kafka_err("looking up --since"))?;
            }
            Some(
                consumer
                    .offsets_for_times(tpl, sel.timeout)
                    .map_err(kafka_err("looking up --since"))?,
            )
        }
        None => None,
    };
    // [start, end) per partition, end captured now: records dead-lettered
    // while this runs are not waited for.
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, sel.timeout)
            .map_err(kafka_err("reading the watermarks"))?;
        let mut start = low.max(sel.from_offset.unwrap_or(0));
        if let Some(tpl) = &starts_at_time {
            start = start.max(match tpl.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // No record at or after that time.
                _ => high,
            });
        }
        let end = sel
            .to_offset
            .map_or(high, |t| high.min(t.saturating_add(1)));
        if start < end {
            pending.insert(p, end);
            assignment
                .add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(kafka_err("assigning"))?;
        }
    }
    let mut summary = ReadSummary {
        read: 0,
        selected: 0,
    };
    if pending.is_empty() {
        return Ok(summary);
    }
    consumer
        .assign(&assignment)
        .map_err(kafka_err("assigning"))?;
    let read = crate::kafka::read_to_ends(
        &consumer,
        pending,
        Duration::from_millis(200),
        sel.timeout,
        |m| -> Result<(), DlqError> {
            summary.read += 1;
            let dl = DeadLetter::from_message(&m);
            drop(m);
            if r.filters.matches(&dl) {
                summary.selected += 1;
                each(dl)?;
            }
            Ok(())
        },
    )?;
    if let Err(s) = read {
        return Err(DlqError::Stalled {
            topic: topic.into(),
            timeout: sel.timeout,
            pending: s
                .pending
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            last_error: s.last_error_suffix(),
        });
    }
    Ok(summary)
}

fn list(args: &ListArgs, out: &mut impl Write) -> Result<(), DlqError> {
    let sel = &args.select;
    let r = resolve(sel)?;
    let summary = read_dead_letters(sel, &r, |dl| {
        match args.format {
            Format::Json => writeln!(out, "{}", dl.to_json(args.preview))?,
            Format::Text => dl.write_text(out, args.preview)?,
        }
        Ok(())
    })?;
    out.flush()?;
    // On stderr, so `--format json` output stays one object per line.
    eprintln!(
        "{} of {} dead letter(s) read from `{}` selected",
        summary.selected, summary.read, r.pipeline.dead_letter_topic
    );
    Ok(())
}

/// Why a dead letter is not re-driven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("truncated dead letter: its value was cut from {original_size} bytes to fit the dead-letter topic, so it is not the original (re-drive the original from its origin, if still retained)")]
    Truncated { original_size: String },
    #[error("no pw.origin.topic header: not a dead letter written by pipeline-worker")]
    NoOrigin,
    #[error("origin topic `{origin}` is not an input of pipeline `{pipeline}` (inputs: {inputs})")]
    NotAnInput {
        origin: String,
        pipeline: String,
        inputs: String,
    },
    #[error("header {index} key is not valid UTF-8 (b\"{escaped}\"): the worker would dead-letter it again as invalid-input")]
    HeaderKey { index: usize, escaped: String },
    #[error("already re-driven {count} time(s) (--max-redrives {max})")]
    TooManyRedrives { count: u32, max: u32 },
}

impl Skip {
    fn code(&self) -> &'static str {
        match self {
            Skip::Truncated { .. } => "truncated",
            Skip::NoOrigin => "no-origin",
            Skip::NotAnInput { .. } => "not-an-input",
            Skip::HeaderKey { .. } => "header-key",
            Skip::TooManyRedrives { .. } => "max-redrives",
        }
    }
}

/// A dead letter turned back into the record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub topic: String,
    /// The origin partition when re-driven to the origin topic (which keeps
    /// per-key order whatever partitioner the original producer used), else
    /// `None`: the producer's partitioner picks from the key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The re-drive of one dead letter, or why not. `input_partitions` holds
/// the partition count of each of the pipeline's input topics; `now` is the
/// RFC 3339 time recorded in [`REDRIVEN`].
pub fn plan(
    dl: &DeadLetter,
    pipeline: &PipelineConfig,
    input_partitions: &BTreeMap<String, i32>,
    max_redrives: u32,
    now: &str,
) -> Result<Planned, Skip> {
    if dl.truncated() {
        return Err(Skip::Truncated {
            original_size: dl
                .text(headers::DLQ_ORIGINAL_SIZE)
                .unwrap_or_else(|| "?".into()),
        });
    }
    let origin = dl.origin_topic().ok_or(Skip::NoOrigin)?;
    let topic = match pipeline.input_topics.as_slice() {
        [only] => only.clone(),
        inputs if inputs.contains(&origin) => origin.clone(),
        inputs => {
            return Err(Skip::NotAnInput {
                origin,
                pipeline: pipeline.name.clone(),
                inputs: inputs.join(", "),
            })
        }
    };
    let count = dl.redrive_count();
    if count >= max_redrives {
        return Err(Skip::TooManyRedrives {
            count,
            max: max_redrives,
        });
    }
    let mut hs = Vec::with_capacity(dl.headers.len() + 2);
    for (index, (k, v)) in dl.headers.iter().enumerate() {
        if k.starts_with(OWN_PREFIX) {
            continue;
        }
        // A key read from librdkafka never holds NUL (it is a C string).
        match std::str::from_utf8(k) {
            Ok(k) if !k.contains('\0') => hs.push((k.to_string(), v.clone())),
            _ => {
                return Err(Skip::HeaderKey {
                    index,
                    escaped: k.escape_ascii().to_string(),
                })
            }
        }
    }
    hs.push((
        REDRIVEN.to_string(),
        Some(format!("{}/{}/{}@{now}", dl.topic, dl.partition, dl.offset).into_bytes()),
    ));
    hs.push((
        REDRIVE_COUNT.to_string(),
        Some((count + 1).to_string().into_bytes()),
    ));
    let partition = dl.origin_partition().filter(|p| {
        topic == origin && (0..input_partitions.get(&topic).copied().unwrap_or(0)).contains(p)
    });
    Ok(Planned {
        topic,
        partition,
        key: dl.key.clone(),
        value: dl.value.clone(),
        timestamp: dl.timestamp,
        headers: hs,
    })
}

/// The index of the record sent, and its partition and offset or the error.
type Report = (usize, Result<(i32, i64), String>);

/// Delivery reports, by the index of the record sent.
#[derive(Default)]
struct Deliveries {
    reports: Mutex<Vec<Report>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let r = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((index, r));
    }
}

/// One line of the re-drive report.
fn report(
    out: &mut impl Write,
    format: Format,
    action: &str,
    dl: &DeadLetter,
    target: Option<(&str, Option<i32>, Option<i64>)>,
    reason: Option<(&str, String)>,
) -> std::io::Result<()> {
    match format {
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "action": action,
                "dlq_topic": dl.topic,
                "dlq_partition": dl.partition,
                "dlq_offset": dl.offset,
                "key": dl.key.as_deref().map(lossless),
                "target_topic": target.map(|t| t.0),
                "target_partition": target.and_then(|t| t.1),
                "target_offset": target.and_then(|t| t.2),
                "reason_code": reason.as_ref().map(|r| r.0),
                "reason": reason.as_ref().map(|r| r.1.clone()),
            })
        ),
        Format::Text => {
            let mut line = format!("{action:<10} {}/{}/{}", dl.topic, dl.partition, dl.offset);
            if let Some((t, p, o)) = target {
                line.push_str(&format!(" -> {t}"));
                match (p, o) {
                    (Some(p), Some(o)) => line.push_str(&format!(" {p}/{o}")),
                    (Some(p), None) => line.push_str(&format!(" partition {p}")),
                    _ => line.push_str(" (partition by key)"),
                }
            }
            if let Some((_, r)) = reason {
                line.push_str(&format!(": {r}"));
            }
            writeln!(out, "{line}")
        }
    }
}

fn redrive(args: &RedriveArgs, out: &mut impl Write) -> Result<(), DlqError> {
    if !args.dry_run && !args.yes {
        return Err(DlqError::NotConfirmed);
    }
    let sel = &args.select;
    let r = resolve(sel)?;
    let mut cc: ClientConfig = crate::kafka::producer_config(&r.config.kafka);
    if !r.config.kafka.librdkafka.contains_key("message.timeout.ms") {
        // A CLI should not sit for librdkafka's default 5 minutes per record.
        cc.set(
            "message.timeout.ms",
            sel.timeout.as_millis().max(1000).to_string(),
        );
    }
    let producer: BaseProducer<Deliveries> = cc
        .create_with_context(Deliveries::default())
        .map_err(|source| DlqError::Kafka {
            what: "creating the producer",
            topic: r.pipeline.dead_letter_topic.clone(),
            source,
        })?;
    let mut input_partitions = BTreeMap::new();
    for t in &r.pipeline.input_topics {
        // The producer has no fetch_metadata of its own in this trait; a
        // short-lived consumer with the same settings asks instead.
        let probe: BaseConsumer = crate::kafka::base_client_config(&r.config.kafka)
            .create()
            .map_err(|source| DlqError::Kafka {
                what: "creating the metadata client",
                topic: t.clone(),
                source,
            })?;
        input_partitions.insert(
            t.clone(),
            partition_count(&probe, &r, "input", t, sel.timeout)?,
        );
    }
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut sent: Vec<DeadLetter> = Vec::new();
    let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut would_send = 0usize;
    read_dead_letters(sel, &r, |dl| {
        let planned = match plan(&dl, &r.pipeline, &input_partitions, args.max_redrives, &now) {
            Ok(p) => p,
            Err(skip) => {
                *skipped.entry(skip.code()).or_default() += 1;
                report(
                    out,
                    args.format,
                    "skipped",
                    &dl,
                    None,
                    Some((skip.code(), skip.to_string())),
                )?;
                return Ok(());
            }
        };
        if args.dry_run {
            would_send += 1;
            report(
                out,
                args.format,
                "would-send",
                &dl,
                Some((&planned.topic, planned.partition, None)),
                None,
            )?;
            return Ok(());
        }
        let mut h = OwnedHeaders::new_with_capacity(planned.headers.len());
        for (k, v) in &planned.headers {
            h = h.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut rec = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&planned.topic, sent.len())
            .headers(h)
            .timestamp(match args.timestamp {
                TimestampMode::Original => planned.timestamp.unwrap_or(now_ms),
                TimestampMode::Now => now_ms,
            });
        if let Some(k) = &planned.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &planned.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(p) = planned.partition {
            rec = rec.partition(p);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    rec = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    // Refused before it left (too large, unknown partition):
                    // reported like a failed delivery.
                    producer
                        .context()
                        .reports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((sent.len(), Err(e.to_string())));
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
        sent.push(dl);
        Ok(())
    })?;
    let skipped_total: usize = skipped.values().sum();
    let skipped_text = if skipped.is_empty() {
        String::new()
    } else {
        format!(
            " ({})",
            skipped
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if args.dry_run {
        out.flush()?;
        eprintln!(
            "dry run for pipeline `{}`: {would_send} would be sent, {skipped_total} skipped{skipped_text}; nothing was produced",
            r.pipeline.name
        );
        return Ok(());
    }
    // Every record gets a report within message.timeout.ms: delivered or not.
    let deadline = Instant::now() + sel.timeout * 2 + Duration::from_secs(10);
    loop {
        let done = producer.context().reports.lock().map_or(0, |r| r.len());
        if done >= sent.len() || Instant::now() > deadline {
            break;
        }
        producer.poll(Duration::from_millis(100));
    }
    let mut reports = std::mem::take(
        &mut *producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    reports.sort_by_key(|(i, _)| *i);
    let mut failed = 0usize;
    let mut reported = vec![false; sent.len()];
    for (i, result) in reports {
        let Some(dl) = sent.get(i) else { continue };
        reported[i] = true;
        let target = dl_target(dl, &r.pipeline);
        match result {
            Ok((p, o)) => report(
                out,
                args.format,
                "sent",
                dl,
                Some((&target, Some(p), Some(o))),
                None,
            )?,
            Err(e) => {
                failed += 1;
                report(
                    out,
                    args.format,
                    "failed",
                    dl,
                    Some((&target, None, None)),
                    Some(("delivery", e)),
                )?;
            }
        }
    }
    for (_, dl) in sent.iter().enumerate().filter(|(i, _)| !reported[*i]) {
        failed += 1;
        report(
            out,
            args.format,
            "failed",
            dl,
            Some((&dl_target(dl, &r.pipeline), None, None)),
            Some(("delivery", "no delivery report in time".into())),
        )?;
    }
    out.flush()?;
    eprintln!(
        "re-drive for pipeline `{}`: {} sent, {skipped_total} skipped{skipped_text}, {failed} failed",
        r.pipeline.name,
        sent.len() - failed
    );
    if failed > 0 {
        return Err(DlqError::DeliveryFailed {
            failed,
            attempted: sent.len(),
        });
    }
    Ok(())
}

/// The topic a planned dead letter goes to (for the report).
fn dl_target(dl: &DeadLetter, pipeline: &PipelineConfig) -> String {
    match pipeline.input_topics.as_slice() {
        [only] => only.clone(),
        _ => dl.origin_topic().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn pipeline(inputs: &[&str]) -> PipelineConfig {
        let text = format!(
            "[kafka]\nbrokers = \"b:9092\"\n[[pipelines]]\nname = \"p\"\ninput_topics = {inputs:?}\ncomponent = \"x.wasm\"\noutput_topics = [\"out\"]\ndead_letter_topic = \"dlq\"\n"
        );
        Config::from_str_with_env(&text, Path::new("/tmp/w.toml"), std::iter::empty())
            .expect("test config")
            .pipelines
            .remove(0)
    }

    fn dead(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            topic: "dlq".into(),
            partition: 0,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn partitions(t: &[(&str, i32)]) -> BTreeMap<String, i32> {
        t.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn plan_drops_every_pw_header_and_records_the_redrive() {
        let dl = dead(&[
            ("app", "1"),
            ("pw.function.version", "upstream"),
            ("traceparent", "00-abc-def-01"),
            ("pw.error.kind", "failed"),
            ("pw.origin.topic", "in"),
            ("pw.origin.partition", "2"),
        ]);
        let p = plan(&dl, &pipeline(&["in"]), &partitions(&[("in", 3)]), 3, "T").unwrap();
        assert_eq!(p.topic, "in");
        assert_eq!(p.partition, Some(2));
        assert_eq!(
            (p.key, p.value, p.timestamp),
            (dl.key.clone(), dl.value.clone(), dl.timestamp)
        );
        let hs: Vec<(&str, &str)> = p
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    std::str::from_utf8(v.as_deref().unwrap()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            hs,
            [
                ("app", "1"),
                ("traceparent", "00-abc-def-01"),
                (REDRIVEN, "dlq/0/41@T"),
                (REDRIVE_COUNT, "1"),
            ]
        );
    }

    #[test]
    fn the_count_grows_and_stops_at_max_redrives() {
        let once = dead(&[
            ("pw.origin.topic", "in"),
            (REDRIVEN, "dlq/0/1@T"),
            (REDRIVE_COUNT, "2"),
        ]);
        let p = plan(&once, &pipeline(&["in"]), &partitions(&[("in", 1)]), 3, "T").unwrap();
        assert!(p
            .headers
            .contains(&(REDRIVE_COUNT.into(), Some(b"3".to_vec()))));
        assert_eq!(
            plan(&once, &pipeline(&["in"]), &partitions(&[("in", 1)]), 2, "T"),
            Err(Skip::TooManyRedrives { count: 2, max: 2 })
        );
        // Re-driven by a version that wrote no count: counts as once.
        let legacy = dead(&[("pw.origin.topic", "in"), (REDRIVEN, "dlq/0/1@T")]);
        assert_eq!(legacy.redrive_count(), 1);
    }

    #[test]
    fn several_inputs_route_by_origin_and_refuse_a_stranger() {
        let p = pipeline(&["a", "b"]);
        let parts = partitions(&[("a", 2), ("b", 1)]);
        let to_b = dead(&[("pw.origin.topic", "b"), ("pw.origin.partition", "0")]);
        assert_eq!(plan(&to_b, &p, &parts, 3, "T").unwrap().topic, "b");
        // A partition the topic no longer has: the partitioner picks.
        let shrunk = dead(&[("pw.origin.topic", "a"), ("pw.origin.partition", "5")]);
        assert_eq!(plan(&shrunk, &p, &parts, 3, "T").unwrap().partition, None);
        let stranger = dead(&[("pw.origin.topic", "c")]);
        let err = plan(&stranger, &p, &parts, 3, "T").unwrap_err();
        assert_eq!(
            err.to_string(),
            "origin topic `c` is not an input of pipeline `p` (inputs: a, b)"
        );
        // One input: it goes there even if the origin was renamed, but not
        // to the old partition of another topic.
        let renamed = dead(&[("pw.origin.topic", "old"), ("pw.origin.partition", "0")]);
        let one = plan(
            &renamed,
            &pipeline(&["new"]),
            &partitions(&[("new", 4)]),
            3,
            "T",
        )
        .unwrap();
        assert_eq!((one.topic.as_str(), one.partition), ("new", None));
    }

    #[test]
    fn truncated_and_unreadable_dead_letters_are_skipped() {
        let t = dead(&[
            ("pw.origin.topic", "in"),
            ("pw.dlq.truncated", "true"),
            ("pw.dlq.original-size", "99"),
        ]);
        let err = plan(&t, &pipeline(&["in"]), &partitions(&[("in", 1)]), 3, "T").unwrap_err();
        assert_eq!(err.code(), "truncated");
        assert!(err.to_string().contains("99 bytes"), "{err}");
        let mut bad = dead(&[("pw.origin.topic", "in")]);
        bad.headers.insert(0, (b"\xff".to_vec(), None));
        let err = plan(&bad, &pipeline(&["in"]), &partitions(&[("in", 1)]), 3, "T").unwrap_err();
        assert_eq!(
            err,
            Skip::HeaderKey {
                index: 0,
                escaped: "\\xff".into()
            }
        );
        assert_eq!(
            plan(&dead(&[]), &pipeline(&["in"]), &partitions(&[]), 3, "T"),
            Err(Skip::NoOrigin)
        );
    }

    #[test]
    fn text_entries_keep_their_lines() {
        let dl = dead(&[
            ("pw.error.kind", "trap"),
            ("pw.error.message", "trap:\n  at f"),
        ]);
        let mut out = Vec::new();
        dl.write_text(&mut out, 80).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("[trap] trap:\\n  at f"), "{text}");
        assert!(text.contains("value 1 bytes: v"), "{text}");
    }

    #[test]
    fn the_workers_own_header_is_the_last_one() {
        let dl = dead(&[("pw.error.kind", "failed"), ("pw.error.kind", "trap")]);
        assert_eq!(dl.kind().as_deref(), Some("trap"));
    }

    #[test]
    fn filters_combine() {
        let dl = dead(&[
            ("pw.error.kind", "deadline"),
            ("pw.function.version", "fn@3"),
            ("pw.function.digest", "sha256:ab"),
            ("pw.origin.topic", "in"),
            ("pw.origin.partition", "2"),
        ]);
        let f = |f: Filters| f.matches(&dl);
        assert!(f(Filters::default()));
        assert!(f(Filters {
            kinds: vec!["failed".into(), "deadline".into()],
            ..Default::default()
        }));
        assert!(!f(Filters {
            kinds: vec!["failed".into()],
            ..Default::default()
        }));
        assert!(f(Filters {
            function_versions: vec!["sha256:ab".into()],
            ..Default::default()
        }));
        assert!(!f(Filters {
            function_versions: vec!["fn@2".into()],
            ..Default::default()
        }));
        assert!(!f(Filters {
            origin_partitions: vec![1],
            ..Default::default()
        }));
        assert!(f(Filters {
            origin_topics: vec!["in".into()],
            origin_partitions: vec![2],
            ..Default::default()
        }));
        assert!(f(Filters {
            since_ms: Some(1_700_000_000_000),
            ..Default::default()
        }));
        assert!(!f(Filters {
            since_ms: Some(1_700_000_000_001),
            ..Default::default()
        }));
    }

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("2h", now).unwrap(), (10_000 - 7200) * 1000);
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now).unwrap(), 1000);
        let err = parse_since("soon", now).unwrap_err().to_string();
        assert!(
            err.starts_with("--since `soon`: neither an RFC 3339 time"),
            "{err}"
        );
        assert!(parse_since("5h", now)
            .unwrap_err()
            .to_string()
            .contains("1970"));
    }
}
