//! `pipeline-worker test`: production minus Kafka. Sample records go through
//! the component in the same sandbox as `run`, under the pipeline's limits,
//! batch size, tombstone mode and declared output topics (the sink's own
//! routing check), and every output is printed as the bytes and headers the
//! producer would be handed. `--expect` compares them with a golden file
//! semantically (JSON equality) and names the JSON path of each difference.
//!
//! The formats are documented once, in the `--input` / `--expect` help
//! ([`INPUT_HELP`], [`EXPECT_HELP`]), which the README repeats.

pub mod preview;
pub mod replay;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::config::{Config, ConfigError, Limits, PipelineConfig, TombstoneMode};
use crate::sandbox::{
    ArtifactCache, EpochTicker, Function, Header, InputRecord, LoadError, OutputRecord,
    RecordError, Runner, SandboxOptions, ERROR_KINDS,
};
use crate::sink::{headers, SinkTarget};

const INPUT_HELP: &str = "\
Input records, one per line (blank lines are skipped).

With --input-format value (the default) each line is one record's value, its \
bytes exactly as written; the key is null and there are no headers.

With --input-format records each line is a JSON object describing a whole \
record:
  {\"key\": \"k1\", \"value\": {\"id\": 1}, \"headers\": {\"h\": \"v\"}, \"timestamp\": 1700000000000}
  value         any JSON; its text exactly as written becomes the value bytes; \
null is a tombstone (null value)
  value_text    instead of value: a string whose UTF-8 bytes are the value (not JSON)
  value_base64  instead of value: the value's bytes in base64 (standard alphabet, padded)
  key           a string (its UTF-8 bytes) or null; absent = null
  key_base64    instead of key: the key's bytes in base64
  headers       {\"name\": \"value\", ...} or [[\"name\", \"value\"], ...] (order \
kept, names may repeat); a null header value reaches the function as empty, as from Kafka
  timestamp     milliseconds since the epoch; absent = none
  topic, partition, offset  where the record came from, as the function sees \
it and as error lines name it; absent = the pipeline's first input topic, \
partition 0, the line's position
Exactly one of value / value_text / value_base64 is required; other keys are refused.

The format is never guessed: a value line holding {\"value\": ...} is a valid \
value too, so records are read as whole records only with --input-format records.";

const EXPECT_HELP: &str = "\
Golden file (JSON lines) compared with what the pipeline would produce. \
Comparison is semantic: JSON equality with numbers compared by value (60 = 60.0), \
so key order and spacing do not matter. A mismatch names the JSON path that \
differs ($.value.total_price, $[1].topic, ...) with the expected and actual values.

Two layouts, chosen by the first non-blank line:

FLAT (first line is not a JSON array): the stream Kafka would see, in input order. \
Each input contributes one line per output, or one error line if it fails; an \
input with no output contributes nothing, or a {\"filtered\": true} line.

PER-INPUT (first line is a JSON array): exactly one line per input line: a JSON \
array of that input's outputs ([] = no output), an error line, or {\"filtered\": true}.

An output line is either a plain value (expected on the default topic, key and \
headers not checked) or an envelope, an object with \"value\" (or \"value_base64\") \
and only these keys:
  {\"topic\": \"t\", \"key\": \"k\", \"headers\": {\"h\": \"v\"}, \"value\": ...}
  topic    the topic it goes to; absent or null = the default (first) output topic
  key      a string (its UTF-8 bytes) or null (null key); absent = not checked
  key_base64    instead of key: the key's bytes in base64 (standard alphabet, padded)
  headers  the function's own headers, {\"name\": \"value\"} (last one per name) or \
[[\"name\", \"value\"], ...] (all, in order); absent = not checked. Headers the \
worker adds (pw.function.version, a carried traceparent) are shown, never compared
  value    the value as JSON; null = a tombstone. A value that is not JSON is \
compared as a JSON string of its text
  value_base64  instead of value: the value's exact bytes in base64, compared \
byte for byte (binary values, or JSON whose exact spelling matters)
To expect a value that itself looks like an envelope or an error line, wrap it: \
{\"value\": {\"error\": \"x\"}}.

An error line says the input must be dead-lettered:
  {\"error\": \"KIND\"}  or  {\"error\": \"KIND\", \"message\": \"SUBSTRING\"}
KIND is one of invalid-input, failed, fuel, deadline, memory, stack, output-size, \
output-count, unknown-topic, trap, instantiate, tombstone; message, when given, \
must occur in the error message (plain substring, case-sensitive, as in the \
dead letter's pw.error.message).";

const AFTER_HELP: &str = "\
Examples:
  pipeline-worker test --component f.wasm --input sample.jsonl --expect expected.jsonl
  pipeline-worker test --config worker.toml --pipeline orders --input sample.jsonl
  pipeline-worker test --component router.wasm --output-topic orders-eu --output-topic orders-us \\
      --input-format records --tombstones function --input records.jsonl

Exit status: 0 when every record matched (or, without --expect, none failed); 1 otherwise.";

/// Input line layout (see [`INPUT_HELP`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// Each line is a record value.
    Value,
    /// Each line is `{"key" | "key_base64", "value" | "value_text" |
    /// "value_base64", "headers", "timestamp", "topic", "partition", "offset"}`.
    Records,
}

/// `tombstones` as a flag ([`TombstoneMode`] is the config's).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TombstoneArg {
    Pass,
    Function,
    Drop,
    DeadLetter,
}

impl From<TombstoneArg> for TombstoneMode {
    fn from(t: TombstoneArg) -> Self {
        match t {
            TombstoneArg::Pass => TombstoneMode::Pass,
            TombstoneArg::Function => TombstoneMode::Function,
            TombstoneArg::Drop => TombstoneMode::Drop,
            TombstoneArg::DeadLetter => TombstoneMode::DeadLetter,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct TestArgs {
    /// Run under this config's pipeline: its output topics, limits, batch
    /// size, tombstone mode and component.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The pipeline of --config (needed when it has more than one).
    #[arg(long, requires = "config")]
    pub pipeline: Option<String>,
    /// The component to test (with --config: instead of the pipeline's own;
    /// required for a pipeline whose function comes from the registry).
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// Input records (one per line; see --input-format). Without it, records
    /// are read from Kafka (--topic, --brokers, or --replay with --config).
    #[arg(long, long_help = INPUT_HELP, required_unless_present_any = ["replay", "brokers", "topics"])]
    pub input: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: replay::ReplayArgs,
    /// How input lines are read: `value` (a record value per line) or
    /// `records` (a JSON object with key, value, headers, timestamp, ...).
    #[arg(long, value_enum, default_value_t = InputFormat::Value, conflicts_with_all = ["replay", "brokers", "topics"])]
    pub input_format: InputFormat,
    /// Golden file: flat output stream or one line per input; outputs,
    /// `{"error": KIND, "message": SUBSTRING}` or `{"filtered": true}`.
    #[arg(long, long_help = EXPECT_HELP)]
    pub expect: Option<PathBuf>,
    /// A declared output topic (repeatable; as `output_topics`). Without
    /// any, routes are not checked.
    #[arg(long = "output-topic", value_name = "TOPIC", conflicts_with = "config")]
    pub output_topics: Vec<String>,
    /// The default output topic (put first among the declared ones).
    #[arg(long, value_name = "TOPIC", conflicts_with = "config")]
    pub default_topic: Option<String>,
    /// Records per call when the component exports the batch entry point
    /// (default: the config's default).
    #[arg(long, conflicts_with = "config", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: Option<u64>,
    /// The schema of a columnar function's batches: a TOML file of
    /// `[[schema]]` tables, each as a `[[pipelines.schema]]` table of the
    /// config (with --config, the pipeline's own schema is used).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub schema: Option<PathBuf>,
    /// What a null value does (as `tombstones`; default pass).
    #[arg(long, value_enum, conflicts_with = "config")]
    pub tombstones: Option<TombstoneArg>,
    /// Fuel per record (`limits.fuel`); default: no fuel metering.
    #[arg(long, conflicts_with = "config")]
    pub fuel: Option<u64>,
    /// `limits.deadline_ms`: wall-clock deadline per record.
    #[arg(long, conflicts_with = "config", value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline_ms: Option<u64>,
    /// `limits.memory_bytes`: the whole instance's memories and tables.
    #[arg(long, conflicts_with = "config")]
    pub memory_bytes: Option<u64>,
    /// `limits.max_stack_bytes` (at most 16 MiB).
    #[arg(long, conflicts_with = "config", value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_STACK_BYTES as u64))]
    pub max_stack_bytes: Option<u64>,
    /// `limits.hostcall_fuel`: bytes a guest may pass the host in one call.
    #[arg(long, conflicts_with = "config")]
    pub hostcall_fuel: Option<usize>,
    /// `limits.max_resources`: WASI handles per instance.
    #[arg(long, conflicts_with = "config")]
    pub max_resources: Option<usize>,
    /// `limits.max_table_elements`.
    #[arg(long, conflicts_with = "config")]
    pub max_table_elements: Option<usize>,
    /// `limits.max_output_bytes`: key + value + headers of one record's outputs.
    #[arg(long, conflicts_with = "config")]
    pub max_output_bytes: Option<usize>,
    /// `limits.max_outputs`: outputs one record may fan out to.
    #[arg(long, conflicts_with = "config")]
    pub max_outputs: Option<usize>,
    /// `limits.instance_max_records` (1 = a fresh instance per record).
    #[arg(long, conflicts_with = "config", value_parser = clap::value_parser!(u64).range(1..))]
    pub instance_max_records: Option<u64>,
    /// Where precompiled components are cached (default: the config's
    /// `runtime.cache_dir`, else .cache/pipeline-worker).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalTestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    CacheKey(#[from] crate::sandbox::CacheKeyError),
    #[error("{config}: no pipeline named {name:?} (pipelines: {available})")]
    UnknownPipeline {
        config: String,
        name: String,
        available: String,
    },
    #[error("{config}: has {count} pipelines ({available}); choose one with --pipeline")]
    PipelineRequired {
        config: String,
        count: usize,
        available: String,
    },
    #[error("{config}: has no [[pipelines]]")]
    NoPipelines { config: String },
    #[error("pipeline {pipeline} has no component file (its function comes from the registry); give the component to test with --component FILE")]
    PipelineWithoutComponent { pipeline: String },
    #[error("--component is required without --config")]
    NoComponent,
    #[error("{component}: {source}")]
    Load {
        component: String,
        source: LoadError,
    },
    #[error(transparent)]
    Tombstones(#[from] crate::pipeline::PipelineError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Input {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path}:{line}: {reason}")]
    Expect {
        path: String,
        line: usize,
        reason: String,
    },
    /// Boxed: librdkafka's errors would make every `Result` here large.
    #[error(transparent)]
    Replay(Box<replay::ReplayError>),
    #[error("{0} problem(s); see FAIL lines above")]
    Failed(usize),
}

impl From<replay::ReplayError> for LocalTestError {
    fn from(e: replay::ReplayError) -> Self {
        Self::Replay(Box::new(e))
    }
}

/// The pipeline a test runs under, resolved from --config or the flags.
struct Context {
    pipeline: PipelineConfig,
    /// The config's `[kafka]`, for a replay.
    kafka: Option<crate::config::KafkaConfig>,
    /// `pipelines[i]` when it came from a config (error keys name it).
    index: Option<usize>,
    component: PathBuf,
    opts: SandboxOptions,
}

/// A pipeline with every default the config applies, from the config's own
/// deserializer so `test` never drifts from `run`'s defaults.
/// `--schema FILE`: `[[schema]]` tables; a mistake names the file and key
/// (`schema[1].type`), as a config's would.
fn schema_file(path: &Path) -> Result<Vec<crate::config::SchemaField>, LocalTestError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        schema: Vec<crate::config::SchemaField>,
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LocalTestError::Read {
        path: shown.clone(),
        source,
    })?;
    let bad = |message: String| {
        LocalTestError::Config(ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let file: File = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| bad(format!("key `{}`: {}", e.path(), e.inner().message())))?;
    crate::config::arrow_schema("schema", &file.schema).map_err(|e| bad(e.to_string()))?;
    Ok(file.schema)
}

fn default_pipeline() -> PipelineConfig {
    toml::from_str(
        "name = \"test\"\ninput_topics = [\"test\"]\noutput_topics = []\ndead_letter_topic = \"\"",
    )
    .expect("a minimal pipeline table deserializes")
}

fn resolve(args: &TestArgs) -> Result<Context, LocalTestError> {
    if let Some(path) = &args.config {
        let config = Config::load(path)?;
        let shown = path.display().to_string();
        let names = || {
            config
                .pipelines
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let index = match &args.pipeline {
            Some(name) => config
                .pipelines
                .iter()
                .position(|p| &p.name == name)
                .ok_or_else(|| LocalTestError::UnknownPipeline {
                    config: shown.clone(),
                    name: name.clone(),
                    available: names(),
                })?,
            None => match config.pipelines.len() {
                0 => return Err(LocalTestError::NoPipelines { config: shown }),
                1 => 0,
                count => {
                    return Err(LocalTestError::PipelineRequired {
                        config: shown,
                        count,
                        available: names(),
                    })
                }
            },
        };
        let pipeline = config.pipelines[index].clone();
        let component = match (&args.component, &pipeline.component) {
            (Some(c), _) => c.clone(),
            (None, Some(c)) => c.clone(),
            (None, None) => {
                return Err(LocalTestError::PipelineWithoutComponent {
                    pipeline: pipeline.name,
                })
            }
        };
        let mut opts = crate::app::sandbox_options(&config)?;
        if let Some(dir) = &args.cache_dir {
            let key = crate::app::cache_key(config.runtime.cache_key_file.as_deref(), dir)?;
            opts.cache = ArtifactCache::new(dir)
                .with_max_bytes(config.runtime.cache_max_bytes)
                .with_key(key);
        }
        return Ok(Context {
            pipeline,
            kafka: Some(config.kafka.clone()),
            index: Some(index),
            component,
            opts,
        });
    }
    let component = args.component.clone().ok_or(LocalTestError::NoComponent)?;
    let mut p = default_pipeline();
    p.name = component
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    let mut topics = args.output_topics.clone();
    if let Some(d) = &args.default_topic {
        topics.retain(|t| t != d);
        topics.insert(0, d.clone());
    }
    p.output_topics = topics;
    if let Some(b) = args.batch_size {
        p.batch_size = b as usize;
    }
    if let Some(t) = args.tombstones {
        p.tombstones = t.into();
    }
    if let Some(path) = &args.schema {
        p.schema = Some(schema_file(path)?);
    }
    let d = Limits::default();
    p.limits = Limits {
        fuel: args.fuel,
        deadline_ms: args.deadline_ms.unwrap_or(d.deadline_ms),
        memory_bytes: args.memory_bytes.unwrap_or(d.memory_bytes),
        max_stack_bytes: args
            .max_stack_bytes
            .map_or(d.max_stack_bytes, |v| v as usize),
        hostcall_fuel: args.hostcall_fuel.unwrap_or(d.hostcall_fuel),
        max_resources: args.max_resources.unwrap_or(d.max_resources),
        max_output_bytes: args.max_output_bytes.unwrap_or(d.max_output_bytes),
        max_outputs: args.max_outputs.unwrap_or(d.max_outputs),
        max_table_elements: args.max_table_elements.unwrap_or(d.max_table_elements),
        instance_max_records: args.instance_max_records.unwrap_or(d.instance_max_records),
    };
    let dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| ".cache/pipeline-worker".into());
    let key = crate::app::cache_key(None, &dir)?;
    let opts = SandboxOptions {
        cache: ArtifactCache::new(dir).with_key(key),
        ticker: EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling: false,
        max_instances: 1,
    };
    Ok(Context {
        pipeline: p,
        kafka: None,
        index: None,
        component,
        opts,
    })
}

// ---------------------------------------------------------------- inputs

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, LocalTestError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalTestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect())
}

/// `--input-format records`, one line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    /// Outer `None`: absent; inner `None`: `null`, a tombstone.
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<Box<RawValue>>>,
    #[serde(default)]
    value_text: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    headers: HeaderList,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    offset: Option<i64>,
}

fn base64_field(field: &str, text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("`{field}`: not base64 ({e})"))
}

/// The record a line describes, and where it says it came from (for the
/// label of its results).
fn record_line(line: &str, record: &mut InputRecord) -> Result<Option<String>, String> {
    let r: RecordLine = serde_json::from_str(line).map_err(|e| {
        format!(
            "not a record line ({e}); --input-format records wants {{\"key\" or \"key_base64\", \"value\" or \"value_text\" or \"value_base64\", \"headers\", \"timestamp\", \"topic\", \"partition\", \"offset\"}}"
        )
    })?;
    let given: Vec<&str> = [
        ("value", r.value.is_some()),
        ("value_text", r.value_text.is_some()),
        ("value_base64", r.value_base64.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, g)| g.then_some(n))
    .collect();
    record.value = match (r.value, r.value_text, r.value_base64) {
        _ if given.len() > 1 => {
            return Err(format!(
                "give one of `value`, `value_text`, `value_base64`, not {}",
                given
                    .iter()
                    .map(|g| format!("`{g}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))
        }
        (Some(raw), _, _) => raw.map(|r| r.get().as_bytes().to_vec()),
        (_, Some(text), _) => Some(text.into_bytes()),
        (_, _, Some(b)) => Some(base64_field("value_base64", &b)?),
        (None, None, None) => return Err(
            "missing field `value` (JSON, null for a tombstone), `value_text` or `value_base64`"
                .into(),
        ),
    };
    record.key = match (r.key, r.key_base64) {
        (Some(_), Some(_)) => return Err("give `key` or `key_base64`, not both".into()),
        (Some(k), None) => Some(k.into_bytes()),
        (None, Some(b)) => Some(base64_field("key_base64", &b)?),
        (None, None) => None,
    };
    record.headers = r
        .headers
        .0
        .into_iter()
        .map(|(key, value)| Header {
            key,
            value: value.map(String::into_bytes).unwrap_or_default(),
        })
        .collect();
    record.timestamp = r.timestamp;
    if let Some(p) = r.partition.filter(|p| *p < 0) {
        return Err(format!("`partition`: {p} is negative"));
    }
    if let Some(o) = r.offset.filter(|o| *o < 0) {
        return Err(format!("`offset`: {o} is negative"));
    }
    let stated = r.topic.is_some() || r.partition.is_some() || r.offset.is_some();
    if let Some(t) = r.topic {
        if t.is_empty() {
            return Err("`topic`: empty".into());
        }
        record.topic = t;
    }
    if let Some(p) = r.partition {
        record.partition = p;
    }
    if let Some(o) = r.offset {
        record.offset = o;
    }
    Ok(stated.then(|| origin_label(record)))
}

/// `topic/partition@offset`: a topic name cannot contain `/`, so this is
/// unambiguous.
pub(crate) fn origin_label(r: &InputRecord) -> String {
    format!("{}/{}@{}", r.topic, r.partition, r.offset)
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Box<RawValue>>>, D::Error> {
    Option::<Box<RawValue>>::deserialize(d).map(Some)
}

/// Headers as an object or a list of pairs, in the order written (a
/// `serde_json::Map` would sort them and fold repeated names).
#[derive(Default)]
struct HeaderList(Vec<(String, Option<String>)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("headers as {\"name\": \"value\"} or [[\"name\", \"value\"], ...]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = m.next_entry::<String, Option<String>>()? {
                    out.push(kv);
                }
                Ok(HeaderList(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = s.next_element::<(String, Option<String>)>()? {
                    out.push(kv);
                }
                Ok(HeaderList(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<HeaderList, E> {
                Ok(HeaderList::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// One input: its label (`file:line`, or where it came from) and the record,
/// or why it cannot reach the function (a consumed record whose header key is
/// not UTF-8, dead-lettered as `invalid-input` by `run` too).
pub(crate) type Input = (String, Result<InputRecord, RecordError>);

fn read_inputs(
    path: &Path,
    format: InputFormat,
    topic: &str,
) -> Result<Vec<Input>, LocalTestError> {
    let mut out = Vec::new();
    for (idx, (line_no, line)) in read_lines(path)?.into_iter().enumerate() {
        let mut at = format!("{}:{line_no}", path.display());
        let mut record = InputRecord {
            key: None,
            value: None,
            headers: vec![],
            topic: topic.to_string(),
            partition: 0,
            offset: idx as i64,
            timestamp: None,
        };
        match format {
            InputFormat::Value => {
                if idx == 0 && looks_like_a_record(&line) {
                    eprintln!(
                        "note: {at} looks like a whole record; it is read as a value (pass --input-format records to read it as a record)"
                    );
                }
                record.value = Some(line.into_bytes())
            }
            InputFormat::Records => {
                let origin =
                    record_line(&line, &mut record).map_err(|reason| LocalTestError::Input {
                        path: path.display().to_string(),
                        line: line_no,
                        reason,
                    })?;
                if let Some(o) = origin {
                    at = format!("{at} ({o})");
                }
            }
        }
        out.push((at, Ok(record)));
    }
    Ok(out)
}

/// An object whose keys are all record-line keys, with a value field.
fn looks_like_a_record(line: &str) -> bool {
    const KEYS: [&str; 10] = [
        "key",
        "key_base64",
        "value",
        "value_text",
        "value_base64",
        "headers",
        "timestamp",
        "topic",
        "partition",
        "offset",
    ];
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => {
            ["value", "value_text", "value_base64"]
                .iter()
                .any(|k| m.contains_key(*k))
                && m.keys().all(|k| KEYS.contains(&k.as_str()))
        }
        _ => false,
    }
}

// ------------------------------------------------------------ what Kafka gets

/// One output as the producer would be handed it.
pub(crate) struct Produced {
    /// The topic it goes to; `None` only when no output topic is declared
    /// and the function named none.
    topic: Option<String>,
    /// The function's record (its own headers, compared with the golden file).
    record: OutputRecord,
    /// Every header on the wire, worker-added ones included.
    wire_headers: Vec<(String, Vec<u8>)>,
}

/// The headers the sink puts on an output, read back from the native list
/// it hands the producer: the record's own, then `pw.function.version`
/// (function outputs only), then the input's `traceparent` carried over in
/// place of any the output had (no OTLP span runs here). The same
/// [`crate::sink::encode_output`] as `run`, so the two cannot drift.
fn wire_headers(
    o: &OutputRecord,
    version: Option<&str>,
    input: &InputRecord,
) -> Vec<(String, Vec<u8>)> {
    let trace = input
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("traceparent"))
        .map(|h| h.value.as_slice());
    let stamp;
    let extra: &[(&str, &[u8])] = match version {
        Some(v) => {
            stamp = [(headers::FUNCTION_VERSION, v.as_bytes())];
            &stamp
        }
        None => &[],
    };
    let e = crate::sink::encode_output(o, "", extra, trace);
    crate::record::owned_header_bytes(&e.headers)
        .map(|hs| {
            hs.into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(&k).into_owned(),
                        v.unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes as text: UTF-8 as is with control characters escaped (one output
/// per line), anything else as an escaped byte string `b"\xff.."`.
fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        Ok(s) => s
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Err(_) => format!("b\"{}\"", b.escape_ascii()),
    }
}

/// A key or header value, quoted.
fn show_quoted(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("b\"{}\"", b.escape_ascii()),
    }
}

fn print_output(p: &Produced) {
    let key = p.record.key.as_deref().map_or("null".into(), show_quoted);
    let headers = p
        .wire_headers
        .iter()
        .map(|(k, v)| format!("{k:?}: {}", show_quoted(v)))
        .collect::<Vec<_>>()
        .join(", ");
    let ts = p
        .record
        .timestamp
        .map(|t| format!("  timestamp {t}"))
        .unwrap_or_default();
    println!(
        "    → {}  key {key}  headers [{headers}]{ts}",
        p.topic.as_deref().unwrap_or("(default topic)")
    );
    match &p.record.value {
        Some(v) => println!("      {}", show_bytes(v)),
        None => println!("      null (tombstone)"),
    }
}

// -------------------------------------------------------------- golden file

/// One expectation: an output, an error, or "no output".
#[derive(Debug)]
enum Item {
    Output(OutputExpect),
    Error {
        kind: String,
        message: Option<String>,
    },
    Filtered,
}

#[derive(Debug)]
struct OutputExpect {
    /// `None`: the default topic.
    topic: Option<String>,
    /// `None`: not checked; `Some(None)`: a null key. Bytes, so that a
    /// binary key (`key_base64`) is compared exactly, not as lossy text.
    key: Option<Option<Vec<u8>>>,
    /// An object or a list of pairs; `None`: not checked.
    headers: Option<Value>,
    value: ExpectValue,
}

#[derive(Debug, PartialEq)]
enum ExpectValue {
    /// `value`: compared as JSON (null = a tombstone).
    Json(Value),
    /// `value_base64`: these bytes exactly.
    Bytes(Vec<u8>),
}

impl std::fmt::Display for ExpectValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectValue::Json(v) => write!(f, "{v}"),
            ExpectValue::Bytes(b) => write!(f, "{}", show_quoted(b)),
        }
    }
}

enum Golden {
    Flat(Vec<(usize, Item)>),
    PerInput(Vec<(usize, Vec<Item>)>),
}

const ENVELOPE_KEYS: [&str; 6] = [
    "topic",
    "key",
    "key_base64",
    "headers",
    "value",
    "value_base64",
];

fn classify(v: Value) -> Result<Item, String> {
    let Value::Object(m) = &v else {
        return Ok(plain(v));
    };
    if m.contains_key("error") && m.keys().all(|k| k == "error" || k == "message") {
        let kind = m["error"]
            .as_str()
            .ok_or("`error` must be a string, an error kind")?;
        if !ERROR_KINDS.contains(&kind) {
            return Err(format!(
                "unknown error kind {kind:?} (kinds: {}); to expect an output with this value, write {{\"value\": ...}}",
                ERROR_KINDS.join(", ")
            ));
        }
        let message = match m.get("message") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err("`message` must be a string (a substring of the error message)".into())
            }
        };
        return Ok(Item::Error {
            kind: kind.to_string(),
            message,
        });
    }
    if m.len() == 1 && m.get("filtered") == Some(&Value::Bool(true)) {
        return Ok(Item::Filtered);
    }
    if (m.contains_key("value") || m.contains_key("value_base64"))
        && m.keys().all(|k| ENVELOPE_KEYS.contains(&k.as_str()))
    {
        let topic = match m.get("topic") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => return Err("`topic` must be a string, or null for the default topic".into()),
        };
        let key = match (m.get("key"), m.get("key_base64")) {
            (Some(_), Some(_)) => return Err("give `key` or `key_base64`, not both".into()),
            (None, None) => None,
            (Some(Value::Null), None) => Some(None),
            (Some(Value::String(k)), None) => Some(Some(k.clone().into_bytes())),
            (Some(_), None) => return Err("`key` must be a string or null".into()),
            (None, Some(Value::String(b))) => Some(Some(base64_field("key_base64", b)?)),
            (None, Some(_)) => {
                return Err("`key_base64` must be a string (the key's bytes in base64)".into())
            }
        };
        let value = match (m.get("value"), m.get("value_base64")) {
            (Some(_), Some(_)) => {
                return Err("give `value` or `value_base64`, not both".into());
            }
            (Some(v), None) => ExpectValue::Json(v.clone()),
            (None, Some(Value::String(b))) => {
                ExpectValue::Bytes(base64_field("value_base64", b)?)
            }
            _ => {
                return Err(
                    "`value_base64` must be a string (the value's bytes in base64); a tombstone is \"value\": null"
                        .into(),
                )
            }
        };
        let headers = match m.get("headers") {
            None => None,
            Some(h @ Value::Object(o)) if o.values().all(Value::is_string) => Some(h.clone()),
            Some(h @ Value::Array(a)) if a.iter().all(is_pair) => Some(h.clone()),
            Some(_) => {
                return Err(
                    "`headers` must be {\"name\": \"value\"} or [[\"name\", \"value\"], ...] with string values"
                        .into(),
                )
            }
        };
        return Ok(Item::Output(OutputExpect {
            topic,
            key,
            headers,
            value,
        }));
    }
    Ok(plain(v))
}

fn is_pair(v: &Value) -> bool {
    matches!(
        v.as_array().map(Vec::as_slice),
        Some([Value::String(_), Value::String(_)])
    )
}

fn plain(value: Value) -> Item {
    Item::Output(OutputExpect {
        topic: None,
        key: None,
        headers: None,
        value: ExpectValue::Json(value),
    })
}

fn read_golden(path: &Path) -> Result<Golden, LocalTestError> {
    let lines = read_lines(path)?;
    let bad = |line: usize, reason: String| LocalTestError::Expect {
        path: path.display().to_string(),
        line,
        reason,
    };
    let mut values = Vec::with_capacity(lines.len());
    for (n, l) in &lines {
        let v: Value = serde_json::from_str(l).map_err(|e| bad(*n, format!("not JSON: {e}")))?;
        values.push((*n, v));
    }
    if !matches!(values.first(), Some((_, Value::Array(_)))) {
        let mut items = Vec::with_capacity(values.len());
        for (n, v) in values {
            items.push((n, classify(v).map_err(|r| bad(n, r))?));
        }
        return Ok(Golden::Flat(items));
    }
    let mut per = Vec::with_capacity(values.len());
    for (n, v) in values {
        let items = match v {
            Value::Array(outs) => {
                let mut items = Vec::with_capacity(outs.len());
                for (i, o) in outs.into_iter().enumerate() {
                    match classify(o).map_err(|r| bad(n, format!("output {i}: {r}")))? {
                        Item::Output(o) => items.push(Item::Output(o)),
                        _ => return Err(bad(n, format!("output {i}: an error or {{\"filtered\": true}} stands for a whole input; write it instead of the array"))),
                    }
                }
                items
            }
            other => match classify(other).map_err(|r| bad(n, r))? {
                Item::Output(_) => return Err(bad(n, "the per-input layout (the first line is an array) wants, per input, an array of outputs, {\"error\": KIND} or {\"filtered\": true}".into())),
                Item::Filtered => Vec::new(),
                e => vec![e],
            },
        };
        per.push((n, items));
    }
    Ok(Golden::PerInput(per))
}

// -------------------------------------------------------------- comparison

/// JSON equality with numbers compared by value: `60` and `60.0` are the same
/// output whichever language wrote it.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `$.a.b`, `$["odd key"]`, `$[2]`.
fn child(path: &str, key: &str) -> String {
    let ident = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

/// Differences after which a record's report stops.
const MAX_DIFFS: usize = 20;

/// Every difference between `want` and `got`, as `path: what`.
fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    if out.len() >= MAX_DIFFS {
        return;
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    None => out.push(format!("{}: missing (expected {wv})", child(path, k))),
                    Some(gv) => diff(&child(path, k), wv, gv, out),
                }
            }
            for (k, gv) in g {
                if !w.contains_key(k) {
                    out.push(format!("{}: unexpected key (got {gv})", child(path, k)));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!(
                    "{path}: expected {} element(s), got {}",
                    w.len(),
                    g.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{path}[{i}]"), wv, gv, out);
            }
            for (i, wv) in w.iter().enumerate().skip(g.len()) {
                out.push(format!("{path}[{i}]: missing (expected {wv})"));
            }
            for (i, gv) in g.iter().enumerate().skip(w.len()) {
                out.push(format!("{path}[{i}]: unexpected element (got {gv})"));
            }
        }
        _ if same(want, got) => {}
        _ => out.push(format!("{path}: expected {want}, got {got}")),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Differences between an expected output and a produced one, paths under
/// `path` (`$` or `$[i]`).
fn compare_output(
    path: &str,
    want: &OutputExpect,
    got: &Produced,
    default_topic: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    let want_topic = want.topic.as_deref().or(default_topic);
    if want_topic != got.topic.as_deref() {
        let name = |t: Option<&str>| t.map_or("the default topic".into(), |t| format!("{t:?}"));
        out.push(format!(
            "{path}.topic: expected {}, got {}",
            name(want_topic),
            name(got.topic.as_deref())
        ));
    }
    if let Some(k) = &want.key {
        let got_key = got.record.key.as_deref();
        if k.as_deref() != got_key {
            let name = |k: Option<&[u8]>| k.map_or("null".into(), show_quoted);
            out.push(format!(
                "{path}.key: expected {}, got {}",
                name(k.as_deref()),
                name(got_key)
            ));
        }
    }
    if let Some(h) = &want.headers {
        let pairs = got
            .record
            .headers
            .iter()
            .map(|h| (h.key.clone(), Value::String(lossy(&h.value))));
        let got_headers = match h {
            Value::Object(_) => Value::Object(pairs.collect()),
            _ => Value::Array(
                pairs
                    .map(|(k, v)| Value::Array(vec![Value::String(k), v]))
                    .collect(),
            ),
        };
        diff(&format!("{path}.headers"), h, &got_headers, &mut out);
    }
    let vpath = format!("{path}.value");
    let want_json = match &want.value {
        ExpectValue::Json(w) => w,
        ExpectValue::Bytes(w) => {
            match got.record.value.as_deref() {
                Some(g) if g == w.as_slice() => {}
                Some(g) => out.push(format!(
                    "{vpath}: expected the bytes {} (value_base64), got {}",
                    show_quoted(w),
                    show_quoted(g)
                )),
                None => out.push(format!(
                    "{vpath}: expected the bytes {} (value_base64), got a tombstone (null value)",
                    show_quoted(w)
                )),
            }
            return out;
        }
    };
    match (want_json, &got.record.value) {
        (Value::Null, None) => {}
        (Value::Null, Some(v)) => out.push(format!(
            "{vpath}: expected a tombstone (null value), got {}",
            show_bytes(v)
        )),
        (w, None) => out.push(format!(
            "{vpath}: expected {w}, got a tombstone (null value)"
        )),
        (w, Some(v)) => {
            let g = serde_json::from_slice::<Value>(v).unwrap_or_else(|_| Value::String(lossy(v)));
            diff(&vpath, w, &g, &mut out);
        }
    }
    out
}

fn compare_error(want_kind: &str, want_message: Option<&str>, e: &RecordError) -> Vec<String> {
    let mut out = Vec::new();
    if want_kind != e.kind() {
        out.push(format!(
            "expected error kind {want_kind}, got {}: {e}",
            e.kind()
        ));
    } else if let Some(m) = want_message {
        let got = e.to_string();
        if !got.contains(m) {
            out.push(format!("error message does not contain {m:?}: {got:?}"));
        }
    }
    out
}

fn describe(item: &Item) -> String {
    match item {
        Item::Output(o) => format!("an output ({})", o.value),
        Item::Error { kind, .. } => format!("error {kind}"),
        Item::Filtered => "no output".into(),
    }
}

fn describe_result(r: &Result<Vec<Produced>, RecordError>) -> String {
    match r {
        Ok(outs) if outs.is_empty() => "no output".into(),
        Ok(outs) => format!("{} output(s)", outs.len()),
        Err(e) => format!("error {}: {e}", e.kind()),
    }
}

/// One input's result against its per-input line.
fn check_per_input(
    at: &str,
    want_at: &str,
    want: &[Item],
    got: &Result<Vec<Produced>, RecordError>,
    default_topic: Option<&str>,
    problems: &mut Vec<String>,
) {
    let mut push = |d: String| problems.push(format!("{want_at} (input {at}): {d}"));
    match (want, got) {
        ([Item::Error { kind, message }], Err(e)) => {
            compare_error(kind, message.as_deref(), e)
                .into_iter()
                .for_each(&mut push);
        }
        ([Item::Error { kind, .. }], Ok(_)) => push(format!(
            "expected error {kind}, got {}",
            describe_result(got)
        )),
        (_, Err(e)) => push(format!(
            "expected {} output(s), got error {}: {e}",
            want.len(),
            e.kind()
        )),
        (_, Ok(outs)) => {
            if want.len() != outs.len() {
                push(format!(
                    "$: expected {} output(s), got {}",
                    want.len(),
                    outs.len()
                ));
            }
            for (i, (w, g)) in want.iter().zip(outs).enumerate() {
                if let Item::Output(w) = w {
                    compare_output(&format!("$[{i}]"), w, g, default_topic)
                        .into_iter()
                        .for_each(&mut push);
                }
            }
        }
    }
}

/// Walks the flat stream along the results (see [`EXPECT_HELP`]).
fn check_flat(
    expect_path: &str,
    want: &[(usize, Item)],
    results: &[Outcome],
    default_topic: Option<&str>,
    problems: &mut Vec<String>,
) {
    let mut next = want.iter().peekable();
    for (at, got) in results {
        match got {
            Err(e) => match next.next() {
                Some((n, Item::Error { kind, message })) => {
                    for d in compare_error(kind, message.as_deref(), e) {
                        problems.push(format!("{expect_path}:{n} (input {at}): {d}"));
                    }
                }
                Some((n, other)) => problems.push(format!(
                    "{expect_path}:{n} (input {at}): expected {}, got error {}: {e}",
                    describe(other),
                    e.kind()
                )),
                None => problems.push(format!(
                    "{expect_path}: no line left for input {at}, which failed with {}: {e}",
                    e.kind()
                )),
            },
            Ok(outs) if outs.is_empty() => {
                if matches!(next.peek(), Some((_, Item::Filtered))) {
                    next.next();
                }
            }
            Ok(outs) => {
                for (i, o) in outs.iter().enumerate() {
                    match next.next() {
                        Some((n, Item::Output(w))) => {
                            for d in compare_output("$", w, o, default_topic) {
                                problems.push(format!(
                                    "{expect_path}:{n} (input {at}, output {i}): {d}"
                                ));
                            }
                        }
                        Some((n, other)) => problems.push(format!(
                            "{expect_path}:{n} (input {at}, output {i}): expected {}, got an output",
                            describe(other)
                        )),
                        None => problems.push(format!(
                            "{expect_path}: unexpected extra output {i} of input {at}: {}",
                            o.record.value.as_deref().map_or("null".into(), show_bytes)
                        )),
                    }
                }
            }
        }
    }
    for (n, item) in next {
        problems.push(format!(
            "{expect_path}:{n}: expected {}, but the inputs are exhausted",
            describe(item)
        ));
    }
}

// --------------------------------------------------------------------- run

/// Loads a component under the pipeline's limits and prints what was
/// loaded; `version` stamps outputs as `run` would.
fn load(
    p: &PipelineConfig,
    index: Option<usize>,
    origin: &str,
    version: Option<&str>,
    bytes: &[u8],
    opts: &SandboxOptions,
) -> Result<Arc<Function>, LocalTestError> {
    let f = Function::load_versioned(&p.name, version, origin, bytes, &p.limits, opts).map_err(
        |source| LocalTestError::Load {
            component: origin.to_string(),
            source,
        },
    )?;
    if p.tombstones == TombstoneMode::Function {
        crate::pipeline::check_tombstones(&p.name, index, &f)?;
    }
    crate::pipeline::check_columnar(&p.name, index, p.schema.is_some(), &f)?;
    println!(
        "{origin}: {} bytes, {}, {} in {} ms, batch export: {}",
        f.load_report.size_bytes,
        f.digest,
        if f.load_report.from_cache {
            "loaded from cache"
        } else {
            "compiled"
        },
        f.load_report.load_ms,
        f.load_report.exports_batch
    );
    Ok(f)
}

fn print_pipeline(p: &PipelineConfig, from_config: bool) {
    println!(
        "pipeline {}{}: output topics {}, batch size {}, tombstones {:?}, limits {:?}",
        p.name,
        if from_config {
            " (from the config)"
        } else {
            ""
        },
        if p.output_topics.is_empty() {
            "none declared (routes not checked; declare them with --output-topic or --config)"
                .to_string()
        } else {
            format!("{:?}", p.output_topics)
        },
        p.batch_size,
        p.tombstones,
        p.limits
    );
}

/// The consumer group id a replay hands librdkafka (never joined, never
/// committed): named after the pipeline's group, so group ACL prefixes
/// still apply.
fn replay_group(kafka: &crate::config::KafkaConfig, p: &PipelineConfig) -> String {
    format!("{}.replay", crate::kafka::group_id(kafka, p))
}

/// What `--topic`/`--replay` read, from the flags and the config.
fn replay_plan(args: &replay::ReplayArgs, ctx: &Context) -> Result<replay::Plan, LocalTestError> {
    let usage = |m: &str| LocalTestError::from(replay::ReplayError::Usage(m.into()));
    let mut kafka = match (&ctx.kafka, &args.brokers) {
        (Some(k), _) => k.clone(),
        (None, Some(_)) => default_kafka(),
        (None, None) => {
            return Err(usage(
                "reading a topic needs --brokers (or --config, whose [kafka] section is used)",
            ))
        }
    };
    if let Some(b) = &args.brokers {
        kafka.brokers = b.clone();
    }
    let topics = if !args.topics.is_empty() {
        args.topics.clone()
    } else if ctx.kafka.is_some() {
        ctx.pipeline.input_topics.clone()
    } else {
        return Err(usage(
            "name the topic to replay with --topic (or give --config, whose pipeline's input topics are replayed)",
        ));
    };
    if args.timeout.is_zero() {
        return Err(replay::ReplayError::BadFlag {
            flag: "--timeout",
            value: "0s".into(),
            reason: "must be positive".into(),
        }
        .into());
    }
    Ok(replay::Plan {
        group: replay_group(&kafka, &ctx.pipeline),
        kafka,
        topics,
        partitions: args.partitions.clone(),
        start: args.start()?,
        limit: Some(args.limit),
        timeout: args.timeout.into(),
        isolation: args.isolation,
    })
}

/// `[kafka]` with every default, for a replay without --config.
fn default_kafka() -> crate::config::KafkaConfig {
    toml::from_str::<crate::config::KafkaConfig>("brokers = \"\"")
        .expect("a minimal [kafka] table deserializes")
}

fn print_ranges(ranges: &[replay::Range], read: usize) {
    for r in ranges {
        println!(
            "replaying {}/{}: offsets [{}, {}) of {} (high watermark at start)",
            r.topic, r.partition, r.start, r.end, r.high
        );
    }
    println!("{read} record(s) read; nothing is committed or produced");
}

pub fn run(args: TestArgs) -> Result<(), LocalTestError> {
    let ctx = resolve(&args)?;
    let p = &ctx.pipeline;
    let shown = ctx.component.display().to_string();
    let bytes = std::fs::read(&ctx.component).map_err(|source| LocalTestError::Load {
        component: shown.clone(),
        source: LoadError::Read {
            path: shown.clone(),
            source,
        },
    })?;
    let f = load(p, ctx.index, &shown, None, &bytes, &ctx.opts)?;
    print_pipeline(p, ctx.index.is_some());
    let inputs = match &args.input {
        Some(path) => {
            let input_topic = p.input_topics.first().map_or("test", String::as_str);
            read_inputs(path, args.input_format, input_topic)?
        }
        None => {
            let plan = replay_plan(&args.kafka, &ctx)?;
            let r = replay::read(&plan)?;
            print_ranges(&r.ranges, r.inputs.len());
            r.inputs
        }
    };
    let golden = args.expect.as_deref().map(read_golden).transpose()?;
    let target = SinkTarget {
        pipeline: p.name.clone(),
        output_topics: p.output_topics.clone(),
        dead_letter_topic: p.dead_letter_topic.clone(),
        group: String::new(),
    };
    let default_topic = p.output_topics.first().map(String::as_str);
    let results = run_all(&f, p, &target, &inputs, true);

    let mut problems: Vec<String> = Vec::new();
    match &golden {
        None => {
            for (at, r) in &results {
                if let Err(e) = r {
                    problems.push(format!("{at}: {} error: {e}", e.kind()));
                }
            }
        }
        Some(Golden::Flat(want)) => check_flat(
            &args
                .expect
                .as_ref()
                .expect("golden read")
                .display()
                .to_string(),
            want,
            &results,
            default_topic,
            &mut problems,
        ),
        Some(Golden::PerInput(want)) => {
            let path = args.expect.as_ref().expect("golden read").display();
            for (i, (at, got)) in results.iter().enumerate() {
                match want.get(i) {
                    Some((n, items)) => check_per_input(
                        at,
                        &format!("{path}:{n}"),
                        items,
                        got,
                        default_topic,
                        &mut problems,
                    ),
                    None => problems.push(format!("{path}: no line for input {at}")),
                }
            }
            if want.len() > results.len() {
                problems.push(format!(
                    "{path}: {} lines for {} inputs",
                    want.len(),
                    results.len()
                ));
            }
        }
    }
    if problems.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        for p in &problems {
            println!("FAIL {p}");
        }
        Err(LocalTestError::Failed(problems.len()))
    }
}

/// One input's result: what the producer would be handed, or the error it
/// is dead-lettered with.
pub(crate) type Outcome = (String, Result<Vec<Produced>, RecordError>);

/// Runs every input the way a sandbox thread does: batches of `batch_size`,
/// tombstones per the pipeline's mode taken out of the function's batch,
/// function results through the sink's routing check. Prints as it goes
/// when `verbose`.
fn run_all(
    f: &Arc<Function>,
    p: &PipelineConfig,
    target: &SinkTarget,
    inputs: &[Input],
    verbose: bool,
) -> Vec<Outcome> {
    // The config (or --schema) was validated when it was read.
    let schema = p.arrow_schema(None).ok().flatten();
    let mut runner = Runner::new(f.clone()).with_schema(schema);
    let metered = p.limits.fuel.is_some();
    let mut results = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(p.batch_size.max(1)) {
        let to_function: Vec<InputRecord> = chunk
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .filter(|r| r.value.is_some() || p.tombstones == TombstoneMode::Function)
            .cloned()
            .collect();
        let before = runner.stats;
        let mut from_function = if to_function.is_empty() {
            Vec::new()
        } else {
            runner.run_batch(&to_function)
        }
        .into_iter();
        let after = runner.stats;
        let fuel = if metered {
            format!(", fuel {}", after.fuel_consumed - before.fuel_consumed)
        } else {
            String::new()
        };
        if verbose {
            println!(
                "{} record(s), {} to the function: {} µs in wasm{fuel}",
                chunk.len(),
                to_function.len(),
                (after.wasm_nanos - before.wasm_nanos) / 1000
            );
        }
        for (at, input) in chunk {
            let input = match input {
                Ok(input) => input,
                // Refused before the function, as `run` dead-letters it.
                Err(e) => {
                    if verbose {
                        print_error(at, e, target);
                    }
                    results.push((at.clone(), Err(e.clone())));
                    continue;
                }
            };
            let (result, note) = if input.value.is_none() && p.tombstones != TombstoneMode::Function
            {
                match p.tombstones {
                    // Forwarded unchanged and unstamped, as `Sink::forward`.
                    TombstoneMode::Pass => (
                        Ok(vec![OutputRecord {
                            key: input.key.clone(),
                            value: None,
                            headers: input.headers.clone(),
                            topic: None,
                            timestamp: input.timestamp,
                        }]),
                        " (tombstone passed on, tombstones = pass)",
                    ),
                    TombstoneMode::Drop => {
                        (Ok(Vec::new()), " (tombstone dropped, tombstones = drop)")
                    }
                    _ => (Err(RecordError::Tombstone), ""),
                }
            } else {
                let r = from_function.next().unwrap_or_else(|| {
                    Err(RecordError::Failed(
                        "the runner returned no result for this record".into(),
                    ))
                });
                (r, "")
            };
            let stamped = note.is_empty();
            let result = result
                .and_then(|outs| {
                    if target.output_topics.is_empty() {
                        crate::sink::check_header_keys(outs)
                    } else {
                        crate::sink::check_outputs(target, outs)
                    }
                })
                .map(|outs| {
                    outs.into_iter()
                        .map(|o| Produced {
                            topic: o
                                .topic
                                .clone()
                                .or_else(|| target.output_topics.first().cloned()),
                            wire_headers: wire_headers(
                                &o,
                                stamped.then_some(f.version.as_str()),
                                input,
                            ),
                            record: o,
                        })
                        .collect::<Vec<_>>()
                });
            if verbose {
                match &result {
                    Ok(outs) if outs.is_empty() => println!("{at}: no output{note}"),
                    Ok(outs) => {
                        println!("{at}: {} output(s){note}", outs.len());
                        outs.iter().for_each(print_output);
                    }
                    Err(e) => print_error(at, e, target),
                }
            }
            results.push((at.clone(), result));
        }
    }
    let s = runner.stats;
    if verbose {
        println!(
            "\n{} record(s), {} instantiation(s), wasm time {} µs{}",
            inputs.len(),
            s.instantiations,
            s.wasm_nanos / 1000,
            if metered {
                format!(", fuel {}", s.fuel_consumed)
            } else {
                String::new()
            }
        );
    }
    results
}

fn print_error(at: &str, e: &RecordError, target: &SinkTarget) {
    println!(
        "{at}: ERROR [{}] {}  → dead letter{}",
        e.kind(),
        crate::sandbox::truncate(&e.to_string(), 4096),
        if target.dead_letter_topic.is_empty() {
            String::new()
        } else {
            format!(" {}", target.dead_letter_topic)
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TestArgs,
    }

    fn parse(args: &[&str]) -> Result<TestArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.args)
    }

    /// The error `resolve` gives for these arguments.
    fn refused(args: &[&str]) -> LocalTestError {
        match resolve(&parse(args).unwrap()) {
            Err(e) => e,
            Ok(_) => panic!("{args:?} was accepted"),
        }
    }

    /// A config with a file pipeline and a registry pipeline (no component).
    fn two_pipelines(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("worker.toml");
        std::fs::write(
            &path,
            r#"
[kafka]
brokers = "127.0.0.1:9092"
[registry]
store = "store"
[[pipelines]]
name = "orders"
input_topics = ["in"]
component = "router.wasm"
output_topics = ["eu", "us"]
dead_letter_topic = "dlq"
batch_size = 3
tombstones = "dead-letter"
[pipelines.limits]
fuel = 77
deadline_ms = 250
max_outputs = 2
instance_max_records = 5
[[pipelines]]
name = "hosted"
tenant = "acme"
input_topics = ["in2"]
output_topics = ["out2"]
dead_letter_topic = "dlq2"
"#,
        )
        .unwrap();
        path
    }

    #[test]
    fn a_config_pipeline_brings_its_whole_context() {
        let dir = std::env::temp_dir().join(format!("pw-resolve-{}", std::process::id()));
        let config = two_pipelines(&dir);
        let c = config.to_str().unwrap();
        let ctx =
            resolve(&parse(&["--config", c, "--pipeline", "orders", "--input", "x"]).unwrap())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ctx.index, Some(0));
        assert_eq!(ctx.component, dir.join("router.wasm"));
        assert_eq!(ctx.pipeline.output_topics, ["eu", "us"]);
        assert_eq!(ctx.pipeline.batch_size, 3);
        assert_eq!(ctx.pipeline.tombstones, TombstoneMode::DeadLetter);
        assert_eq!(ctx.pipeline.limits.fuel, Some(77));
        assert_eq!(ctx.pipeline.limits.deadline_ms, 250);
        assert_eq!(ctx.pipeline.limits.max_outputs, 2);
        assert_eq!(ctx.pipeline.limits.instance_max_records, 5);

        let e = refused(&["--config", c, "--input", "x"]);
        assert!(
            e.to_string().contains("orders, hosted") && e.to_string().contains("--pipeline"),
            "{e}"
        );
        let e = refused(&["--config", c, "--pipeline", "nope", "--input", "x"]);
        assert!(e.to_string().contains("no pipeline named \"nope\""), "{e}");
        let e = refused(&["--config", c, "--pipeline", "hosted", "--input", "x"]);
        assert!(
            e.to_string().contains("hosted") && e.to_string().contains("--component"),
            "{e}"
        );
        let ctx = resolve(
            &parse(&[
                "--config",
                c,
                "--pipeline",
                "hosted",
                "--component",
                "f.wasm",
                "--input",
                "x",
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(ctx.component, PathBuf::from("f.wasm"));
        // The pipeline's settings come from the config, never from flags.
        let e = parse(&["--config", c, "--output-topic", "t", "--input", "x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_make_the_context_without_a_config() {
        let a = parse(&[
            "--component",
            "dir/f.wasm",
            "--output-topic",
            "a",
            "--output-topic",
            "b",
            "--default-topic",
            "b",
            "--batch-size",
            "2",
            "--tombstones",
            "function",
            "--max-outputs",
            "3",
            "--deadline-ms",
            "40",
            "--input",
            "x",
        ])
        .unwrap();
        let ctx = resolve(&a).unwrap();
        assert_eq!(ctx.index, None);
        assert_eq!(ctx.pipeline.name, "f");
        assert_eq!(ctx.pipeline.output_topics, ["b", "a"]);
        assert_eq!(ctx.pipeline.batch_size, 2);
        assert_eq!(ctx.pipeline.tombstones, TombstoneMode::Function);
        assert_eq!(ctx.pipeline.limits.max_outputs, 3);
        assert_eq!(ctx.pipeline.limits.deadline_ms, 40);
        assert_eq!(
            ctx.pipeline.limits.memory_bytes,
            Limits::default().memory_bytes
        );
        assert!(parse(&["--component", "f.wasm", "--batch-size", "0", "--input", "x"]).is_err());
        assert!(matches!(
            resolve(&parse(&["--input", "x"]).unwrap()),
            Err(LocalTestError::NoComponent)
        ));
    }

    #[test]
    fn numbers_compare_by_value_everything_else_exactly() {
        assert!(same(
            &json!({"a": 60, "b": [1.0]}),
            &json!({"a": 60.0, "b": [1]})
        ));
        assert!(!same(&json!({"a": 60}), &json!({"a": 60.5})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same(&json!({"a": "1"}), &json!({"a": 1})));
    }

    #[test]
    fn diff_names_paths_missing_extra_keys_and_lengths() {
        let mut d = Vec::new();
        diff(
            "$",
            &json!({"fields": {"total": 171.0, "gone": 1}, "items": [1, 2, 3], "odd key": true}),
            &json!({"fields": {"total": 170.0, "new": 2}, "items": [1, 5], "odd key": true}),
            &mut d,
        );
        assert_eq!(
            d,
            vec![
                "$.fields.gone: missing (expected 1)",
                "$.fields.total: expected 171.0, got 170.0",
                "$.fields.new: unexpected key (got 2)",
                "$.items: expected 3 element(s), got 2",
                "$.items[1]: expected 2, got 5",
                "$.items[2]: missing (expected 3)",
            ]
        );
        let mut d = Vec::new();
        diff("$", &json!({"a b": 1}), &json!({"a b": 2}), &mut d);
        assert_eq!(d, vec![r#"$["a b"]: expected 1, got 2"#]);
    }

    #[test]
    fn golden_lines_classify_by_the_documented_rule() {
        assert!(matches!(
            classify(json!({"error": "unknown-topic", "message": "orders"})).unwrap(),
            Item::Error { kind, message: Some(m) } if kind == "unknown-topic" && m == "orders"
        ));
        let e = classify(json!({"error": "typo"})).unwrap_err();
        assert!(
            e.contains("unknown error kind \"typo\"") && e.contains("{\"value\""),
            "{e}"
        );
        assert!(matches!(
            classify(json!({"filtered": true})).unwrap(),
            Item::Filtered
        ));
        // An envelope, and a wrapped value that looks like an error line.
        match classify(json!({"value": {"error": "x"}, "topic": "t", "key": null})).unwrap() {
            Item::Output(o) => {
                assert_eq!(o.value, ExpectValue::Json(json!({"error": "x"})));
                assert_eq!(o.topic.as_deref(), Some("t"));
                assert_eq!(o.key, Some(None));
            }
            other => panic!("{other:?}"),
        }
        // A value with other keys besides `error` is a plain value.
        match classify(json!({"error": "x", "id": 1})).unwrap() {
            Item::Output(o) => {
                assert_eq!(o.value, ExpectValue::Json(json!({"error": "x", "id": 1})))
            }
            other => panic!("{other:?}"),
        }
        assert!(classify(json!({"value": 1, "headers": {"h": 2}})).is_err());
        // The base64 forms: bytes for the key and the value.
        match classify(json!({"key_base64": "/wA=", "value_base64": "AAE="})).unwrap() {
            Item::Output(o) => {
                assert_eq!(o.key, Some(Some(b"\xff\x00".to_vec())));
                assert_eq!(o.value, ExpectValue::Bytes(b"\x00\x01".to_vec()));
            }
            other => panic!("{other:?}"),
        }
        for (line, needle) in [
            (
                json!({"key": "k", "key_base64": "AA==", "value": 1}),
                "give `key` or `key_base64`, not both",
            ),
            (
                json!({"value": 1, "value_base64": "AA=="}),
                "give `value` or `value_base64`, not both",
            ),
            (
                json!({"value_base64": "not base64!"}),
                "`value_base64`: not base64",
            ),
            (
                json!({"key_base64": 1, "value": 1}),
                "`key_base64` must be a string",
            ),
            (
                json!({"value_base64": null}),
                "a tombstone is \"value\": null",
            ),
        ] {
            let e = classify(line.clone()).unwrap_err();
            assert!(e.contains(needle), "{line}: {e}");
        }
    }

    #[test]
    fn record_lines_keep_value_bytes_header_order_and_tombstones() {
        let dir = std::env::temp_dir().join(format!("pw-localtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"key": "k", "value": {"z": 1, "a": [2]}, "headers": {"z": "1", "a": null}}"#,
                "\n",
                r#"{"value": null, "headers": [["h", "1"], ["h", "2"]], "timestamp": 5}"#,
                "\n\n",
                r#"{"value_text": "plain"}"#,
                "\n"
            ),
        )
        .unwrap();
        let got: Vec<(String, InputRecord)> = read_inputs(&path, InputFormat::Records, "in")
            .unwrap()
            .into_iter()
            .map(|(at, r)| (at, r.unwrap()))
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0].1.value.as_deref(),
            Some(&br#"{"z": 1, "a": [2]}"#[..])
        );
        assert_eq!(got[0].1.key.as_deref(), Some(&b"k"[..]));
        let names: Vec<_> = got[0].1.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(got[0].1.headers[1].value, b"");
        assert_eq!(got[1].1.value, None);
        assert_eq!(got[1].1.headers.len(), 2);
        assert_eq!(got[1].1.timestamp, Some(5));
        assert_eq!(got[2].1.value.as_deref(), Some(&b"plain"[..]));
        assert!(got[2].0.ends_with(":4"), "{}", got[2].0);

        assert_eq!((got[0].1.topic.as_str(), got[2].1.offset), ("in", 2));

        // Binary keys and values, and where a record came from.
        std::fs::write(
            &path,
            r#"{"key_base64": "/wA=", "value_base64": "AAE=", "topic": "t", "partition": 2, "offset": 9}"#,
        )
        .unwrap();
        let (at, r) = read_inputs(&path, InputFormat::Records, "in")
            .unwrap()
            .remove(0);
        let r = r.unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"\xff\x00"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!((r.topic.as_str(), r.partition, r.offset), ("t", 2, 9));
        assert!(at.ends_with("in.jsonl:1 (t/2@9)"), "{at}");

        std::fs::write(&path, "{\"vaule\": 1}\n").unwrap();
        let e = read_inputs(&path, InputFormat::Records, "in")
            .unwrap_err()
            .to_string();
        assert!(e.contains("in.jsonl:1") && e.contains("vaule"), "{e}");
        std::fs::write(&path, "{\"key\": \"k\"}\n").unwrap();
        let e = read_inputs(&path, InputFormat::Records, "in")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `value`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_are_shown_as_text_or_escaped() {
        assert_eq!(show_bytes(br#"{"b":1,"a":2}"#), r#"{"b":1,"a":2}"#);
        assert_eq!(show_bytes(b"a\nb"), "a\\nb");
        assert_eq!(show_bytes(b"\xff\x00a"), "b\"\\xff\\x00a\"");
        assert_eq!(show_quoted(b"k\"1"), "\"k\\\"1\"");
    }

    #[test]
    fn worker_headers_follow_the_function_headers_and_traceparent_is_carried() {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec();
        let input = InputRecord {
            key: None,
            value: Some(b"{}".to_vec()),
            headers: vec![Header {
                key: "traceparent".into(),
                value: tp.clone(),
            }],
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
        };
        let o = OutputRecord {
            key: None,
            value: Some(b"{}".to_vec()),
            headers: vec![
                Header {
                    key: "traceparent".into(),
                    value: b"stale".to_vec(),
                },
                Header {
                    key: "x".into(),
                    value: b"1".to_vec(),
                },
            ],
            topic: None,
            timestamp: None,
        };
        let h = wire_headers(&o, Some("abc"), &input);
        assert_eq!(
            h,
            vec![
                ("x".to_string(), b"1".to_vec()),
                ("pw.function.version".to_string(), b"abc".to_vec()),
                ("traceparent".to_string(), tp),
            ]
        );
    }
}
