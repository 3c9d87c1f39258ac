//! The worker's configuration: one TOML file, overridable by environment
//! variables, validated up front so a bad value stops start-up with its key.
//!
//! Environment overrides: `PIPELINE_WORKER__<PATH>` where `<PATH>` is the key
//! path with `__` between segments, case-insensitive for table keys, and a
//! number selects an array element: `PIPELINE_WORKER__KAFKA__BROKERS=host:9092`,
//! `PIPELINE_WORKER__PIPELINES__0__LIMITS__DEADLINE_MS=500`. The value is read as
//! a TOML value when it parses as one (numbers, booleans, arrays), else as a string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub const ENV_PREFIX: &str = "PIPELINE_WORKER__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Shared function store and activation log; enables uploads and hot swap.
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    /// The upload/activation API, served by `pipeline-worker control` (`run`
    /// ignores it, so workers and the control plane can share one file).
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Data-plane quotas per tenant (see [`TenantQuota`]); the same names as
    /// `control.tenants`, so one file serves workers and the control plane.
    #[serde(default)]
    pub tenants: Vec<TenantQuota>,
    #[serde(default, rename = "pipelines")]
    pub pipelines: Vec<PipelineConfig>,
    /// Directory of the config file: relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where component blobs, precompiled artifacts and version manifests
    /// live: a directory (relative to the config file), `file:///abs/path`,
    /// or `s3://bucket/prefix` (credentials and endpoint from `store_options`
    /// or the usual `AWS_*` variables).
    pub store: String,
    /// object_store options, e.g. `aws_endpoint`, `aws_region`,
    /// `aws_allow_http`.
    #[serde(default)]
    pub store_options: BTreeMap<String, String>,
    /// Compacted, single-partition topic holding the activation log. Created
    /// if missing.
    #[serde(default = "default_activations_topic")]
    pub activations_topic: String,
    /// Name this worker reports its status under; default `<hostname>-<pid>`.
    #[serde(default)]
    pub worker_id: Option<String>,
}

fn default_activations_topic() -> String {
    "pipeline-worker.activations".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the control API.
    pub listen: std::net::SocketAddr,
    /// Largest component accepted by an upload.
    #[serde(default = "default_max_component_bytes")]
    pub max_component_bytes: usize,
    /// Uploads in progress at once (receiving, waiting to compile or
    /// compiling), over all tenants; past it: 429.
    #[serde(default = "default_max_concurrent_uploads")]
    pub max_concurrent_uploads: usize,
    /// The same, per tenant.
    #[serde(default = "default_max_concurrent_uploads_per_tenant")]
    pub max_concurrent_uploads_per_tenant: usize,
    /// Upload rate per tenant (GCRA): `upload_burst` at once, then this many
    /// per minute. Each tenant may override both.
    #[serde(default = "default_uploads_per_minute")]
    pub uploads_per_minute: u32,
    #[serde(default = "default_upload_burst")]
    pub upload_burst: u32,
    /// Validation and precompilation of one upload; past it: 422
    /// `compile-timeout`, nothing stored.
    #[serde(default = "default_compile_timeout_ms")]
    pub compile_timeout_ms: u64,
    /// Compiles running at once, over all tenants.
    #[serde(default = "default_compile_concurrency")]
    pub compile_concurrency: usize,
    /// Compiles one tenant may run at once; the rest of its uploads queue
    /// behind its own.
    #[serde(default = "default_compile_concurrency_per_tenant")]
    pub compile_concurrency_per_tenant: usize,
    /// From a connection's first byte of a request to the end of its headers.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// From the end of the headers to the last byte of the body (a total,
    /// so a body trickled a byte at a time is cut too).
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    pub tenants: Vec<TenantConfig>,
}

/// One `[[tenants]]` entry: what all of the tenant's pipelines on one worker
/// may take together. Every field but `name` is optional; an unset rate is
/// not limited.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    pub name: String,
    /// Input records per second, over all of the tenant's pipelines here.
    #[serde(default)]
    pub records_per_second: Option<u32>,
    /// Records that may go at once after an idle spell; default one second's worth.
    #[serde(default)]
    pub records_burst: Option<u32>,
    /// Input bytes (key + value + headers) per second.
    #[serde(default)]
    pub bytes_per_second: Option<u32>,
    /// Default one second's worth.
    #[serde(default)]
    pub bytes_burst: Option<u32>,
    /// Share of this worker's CPUs the tenant's functions may keep busy
    /// (wasm time), 0 < share <= 1. Default: an equal share among the
    /// tenants with pipelines on the worker, when there are two or more.
    #[serde(default)]
    pub cpu_share: Option<f64>,
}

fn default_max_component_bytes() -> usize {
    64 << 20
}
fn default_max_concurrent_uploads() -> usize {
    8
}
fn default_max_concurrent_uploads_per_tenant() -> usize {
    2
}
fn default_uploads_per_minute() -> u32 {
    60
}
fn default_upload_burst() -> u32 {
    20
}
fn default_compile_timeout_ms() -> u64 {
    120_000
}
fn default_compile_concurrency() -> usize {
    2
}
fn default_compile_concurrency_per_tenant() -> usize {
    1
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_body_read_timeout_ms() -> u64 {
    120_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Hex SHA-256 of the tenant's bearer token (so the config holds no secret).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// Or: the environment variable holding the token (a Kubernetes Secret).
    #[serde(default)]
    pub token_env: Option<String>,
    /// This tenant's upload rate, instead of `control.uploads_per_minute`.
    #[serde(default)]
    pub uploads_per_minute: Option<u32>,
    /// This tenant's burst, instead of `control.upload_burst`.
    #[serde(default)]
    pub upload_burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group shared by every worker of the deployment. Each pipeline
    /// joins `<group_id>.<pipeline name>` so pipelines never steal each other's
    /// partitions.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Where a new group starts reading: `earliest` or `latest`.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: String,
    /// Passed to librdkafka as is, for both consumer and producer (SASL, TLS,
    /// timeouts, ...). Keys the worker manages itself are refused.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// This worker's stable identity for exactly-once pipelines: their
    /// producers' `transactional.id` is `pipeline-worker-<group>-<worker_id>`.
    /// Default: `registry.worker_id`, else `$HOSTNAME` (a StatefulSet pod
    /// name). Two live processes must never share one (see README).
    #[serde(default)]
    pub worker_id: Option<String>,
}

fn default_group_id() -> String {
    "pipeline-worker".into()
}
fn default_offset_reset() -> String {
    "earliest".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where precompiled components are cached, keyed by component digest,
    /// wasmtime version and engine settings.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: PathBuf,
    /// Bound on the artifacts in `cache_dir`; least recently used ones are
    /// evicted first, never one in use.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
    /// Key that authenticates cached artifacts across restarts; must be
    /// outside `cache_dir`. `PIPELINE_WORKER_CACHE_KEY` takes precedence;
    /// without either, a key file in the user's state directory.
    #[serde(default)]
    pub cache_key_file: Option<PathBuf>,
    /// Granularity of wall-clock deadlines.
    #[serde(default = "default_epoch_tick_ms")]
    pub epoch_tick_ms: u64,
    /// How long SIGTERM waits for in-flight records before giving up.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Records fetched ahead per assigned partition, waiting for its sandbox
    /// thread (librdkafka's `queued.min.messages`): fetching a partition stops
    /// above it and resumes below it.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Use wasmtime's pooling allocator (pre-reserved slots, copy-on-write
    /// images). Turn off only on hosts with tight virtual-memory limits.
    #[serde(default = "default_true")]
    pub pooling: bool,
    /// Memory the worker may commit to its sandboxes, checked at start-up
    /// against every pipeline's worst case. Default: the cgroup's memory
    /// limit, when there is one.
    #[serde(default)]
    pub memory_budget_bytes: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            cache_max_bytes: default_cache_max_bytes(),
            cache_key_file: None,
            epoch_tick_ms: default_epoch_tick_ms(),
            drain_timeout_ms: default_drain_timeout_ms(),
            max_in_flight: default_max_in_flight(),
            pooling: true,
            memory_budget_bytes: None,
        }
    }
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from(".cache/pipeline-worker")
}
/// Half the Helm chart's 1 GiB emptyDir: a dozen Python artifacts (~33 MB).
fn default_cache_max_bytes() -> u64 {
    512 << 20
}
fn default_epoch_tick_ms() -> u64 {
    10
}
fn default_drain_timeout_ms() -> u64 {
    20_000
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address for `/livez`, `/readyz` and `/metrics`; unset = no HTTP server.
    #[serde(default)]
    pub http_listen: Option<std::net::SocketAddr>,
    /// `text` or `json`; the `--log-format` flag wins when given.
    #[serde(default)]
    pub log_format: Option<String>,
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://otel-collector:4318`
    /// (`/v1/traces` and `/v1/metrics` are appended). Falls back to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; unset = no export, no spans.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// How often metrics (and batches of spans) are exported.
    #[serde(default = "default_otlp_interval_ms")]
    pub otlp_interval_ms: u64,
    /// Share of traces started here that are recorded and exported (records
    /// with a sampled parent follow the parent). 1.0 = every record.
    #[serde(default = "default_sample_ratio")]
    pub trace_sample_ratio: f64,
    /// `/readyz` counts a tenant pipeline still waiting for its first
    /// activation as ready (it has joined no group and processes nothing).
    /// Off by default: a worker is ready only when every pipeline runs.
    #[serde(default)]
    pub ready_without_activation: bool,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_otlp_interval_ms() -> u64 {
    10_000
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            http_listen: None,
            log_format: None,
            otlp_endpoint: None,
            otlp_interval_ms: default_otlp_interval_ms(),
            trace_sample_ratio: default_sample_ratio(),
            ready_without_activation: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    pub input_topics: Vec<String>,
    /// Path to the component (`.wasm`), relative to the config file. With a
    /// `tenant` and a `[registry]`, optional: the pipeline then runs what the
    /// activation log says, and an activation replaces this file.
    #[serde(default)]
    pub component: Option<PathBuf>,
    /// The tenant that owns the pipeline: only its token may activate
    /// functions on it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Declared output topics; the first is the default for records that name none.
    pub output_topics: Vec<String>,
    pub dead_letter_topic: String,
    /// Records per call when the component exports the batch entry point.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Sandbox threads for this pipeline; partitions are spread over them and a
    /// partition always stays on one thread, which keeps its order.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// What a record with a null value (a tombstone) does; see [`TombstoneMode`].
    #[serde(default)]
    pub tombstones: TombstoneMode,
    /// At-least-once (default) or exactly-once (Kafka transactions).
    #[serde(default)]
    pub delivery: DeliveryMode,
    /// Exactly-once: longest a transaction stays open before it commits.
    #[serde(default = "default_transaction_interval_ms")]
    pub transaction_interval_ms: u64,
    /// Exactly-once: records one transaction takes at most.
    #[serde(default = "default_transaction_max_records")]
    pub transaction_max_records: usize,
    #[serde(default)]
    pub limits: Limits,
    /// How record values are encoded; matters only to a columnar function.
    #[serde(default)]
    pub format: DataFormat,
    /// The Arrow schema a columnar function's batches have (`[[pipelines.schema]]`).
    /// A columnar function needs it; a per-record function ignores it.
    #[serde(default)]
    pub schema: Option<Vec<SchemaField>>,
}

/// Per pipeline: how a columnar function's input values are read and its
/// outputs written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// One JSON object per record, decoded with arrow-json into the schema.
    #[default]
    Json,
    /// Each value is an Arrow IPC stream of rows (reserved; not implemented yet).
    ArrowIpc,
}

/// One field of a pipeline's declared Arrow schema.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaField {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// The members of a `struct` (or `list<struct>`) field.
    #[serde(default)]
    pub fields: Option<Vec<SchemaField>>,
}

/// A field type as written in the config (`int64`, `list<utf8>`, ...).
/// Parsed when the config is read, so an unknown type names its key.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    Scalar(arrow_schema::DataType),
    Struct,
    List(Box<FieldType>),
}

/// For messages: every type a schema field may have.
pub const SCHEMA_TYPES: &str = "int32, int64, float32, float64, utf8, bool, timestamp[s], timestamp[ms], timestamp[us], timestamp[ns], date32, list<T>, struct (with `fields`)";

impl FieldType {
    pub fn parse(s: &str) -> Option<FieldType> {
        use arrow_schema::{DataType, TimeUnit};
        let s = s.trim();
        if let Some(inner) = s.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
            return FieldType::parse(inner).map(|t| FieldType::List(Box::new(t)));
        }
        Some(FieldType::Scalar(match s {
            "struct" => return Some(FieldType::Struct),
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "float32" => DataType::Float32,
            "float64" => DataType::Float64,
            "utf8" | "string" => DataType::Utf8,
            "bool" | "boolean" => DataType::Boolean,
            "date32" => DataType::Date32,
            "timestamp[s]" => DataType::Timestamp(TimeUnit::Second, None),
            "timestamp[ms]" => DataType::Timestamp(TimeUnit::Millisecond, None),
            "timestamp[us]" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "timestamp[ns]" => DataType::Timestamp(TimeUnit::Nanosecond, None),
            _ => return None,
        }))
    }

    fn needs_fields(&self) -> bool {
        match self {
            FieldType::Struct => true,
            FieldType::List(t) => t.needs_fields(),
            FieldType::Scalar(_) => false,
        }
    }
}

impl<'de> Deserialize<'de> for FieldType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FieldType::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown type {s:?}; known types: {SCHEMA_TYPES}"))
        })
    }
}

/// Mapping columns of a columnar function's result; an input field may not
/// take these names.
pub const MAPPING_COLUMNS: [&str; 3] = ["_row", "_topic", "_error"];

/// The Arrow schema of `fields`, every mistake named by its key under `key`
/// (e.g. `pipelines[0].schema`).
pub fn arrow_schema(
    key: &str,
    fields: &[SchemaField],
) -> Result<arrow_schema::Schema, ConfigError> {
    if fields.is_empty() {
        return Err(invalid(
            key,
            "declares no field; add at least one [[pipelines.schema]] table",
        ));
    }
    let fields = arrow_fields(key, fields, true)?;
    Ok(arrow_schema::Schema::new(fields))
}

fn arrow_fields(
    key: &str,
    fields: &[SchemaField],
    top: bool,
) -> Result<Vec<arrow_schema::Field>, ConfigError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(fields.len());
    for (j, f) in fields.iter().enumerate() {
        let k = format!("{key}[{j}]");
        if f.name.is_empty() {
            return Err(invalid(format!("{k}.name"), "must not be empty"));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(invalid(
                format!("{k}.name"),
                format!("duplicate field name {:?}", f.name),
            ));
        }
        if top && MAPPING_COLUMNS.contains(&f.name.as_str()) {
            return Err(invalid(
                format!("{k}.name"),
                format!("{:?} is reserved for the mapping columns {MAPPING_COLUMNS:?} of a columnar result", f.name),
            ));
        }
        let ty = field_type(&k, f, &f.ty)?;
        out.push(arrow_schema::Field::new(&f.name, ty, f.nullable));
    }
    Ok(out)
}

fn field_type(
    k: &str,
    f: &SchemaField,
    ty: &FieldType,
) -> Result<arrow_schema::DataType, ConfigError> {
    use arrow_schema::DataType;
    if !ty.needs_fields() && f.fields.is_some() {
        return Err(invalid(
            format!("{k}.fields"),
            "only a struct (or list<struct>) field has `fields`",
        ));
    }
    Ok(match ty {
        FieldType::Scalar(t) => t.clone(),
        FieldType::Struct => {
            let members = f.fields.as_deref().unwrap_or_default();
            if members.is_empty() {
                return Err(invalid(
                    format!("{k}.fields"),
                    "a struct field needs its members: add [[pipelines.schema.fields]] tables",
                ));
            }
            DataType::Struct(arrow_fields(&format!("{k}.fields"), members, false)?.into())
        }
        FieldType::List(inner) => DataType::List(Arc::new(arrow_schema::Field::new_list_field(
            field_type(k, f, inner)?,
            true,
        ))),
    })
}

impl PipelineConfig {
    /// The declared schema as Arrow, `None` without one. `index` is the
    /// pipeline's position, for the key in an error.
    pub fn arrow_schema(
        &self,
        index: Option<usize>,
    ) -> Result<Option<arrow_schema::SchemaRef>, ConfigError> {
        let key = match index {
            Some(i) => format!("pipelines[{i}].schema"),
            None => format!("pipelines[name = {:?}].schema", self.name),
        };
        self.schema
            .as_deref()
            .map(|fields| arrow_schema(&key, fields).map(Arc::new))
            .transpose()
    }
}

/// Per pipeline: how outputs, dead letters and input offsets reach Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// One shared idempotent producer; offsets committed after acks.
    #[default]
    AtLeastOnce,
    /// Per pipeline a transactional producer: a unit of work's outputs, dead
    /// letters and input offsets commit in one Kafka transaction (KIP-447).
    ExactlyOnce,
}

fn default_transaction_interval_ms() -> u64 {
    100
}
fn default_transaction_max_records() -> usize {
    10_000
}

/// Per pipeline: what happens to a record whose value is null (a Kafka
/// tombstone, a delete in a compacted topic). Null is distinct from empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TombstoneMode {
    /// Forwarded unchanged (key, headers, timestamp) to the first output
    /// topic without calling the function, so compacted topics keep deletes.
    #[default]
    Pass,
    /// Delivered to the function as a null value; needs a component built
    /// against `pipeline:transform@0.2` or later.
    Function,
    /// Skipped: committed, nothing produced.
    Drop,
    /// Sent to the dead-letter topic with kind `tombstone`.
    DeadLetter,
}

fn default_batch_size() -> usize {
    64
}
fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Per-function caps, per record. A batch call gets `n` times the per-record
/// fuel but one deadline in total (so a stuck record costs at most one extra
/// deadline), and a batch that trips a cap is re-run one record at a time so
/// only the offending record is dead-lettered.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wasm fuel per record. Unset = no fuel metering (it roughly doubles the
    /// per-call cost of a Python component; the deadline still applies).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per record: epoch interruption for running wasm, a
    /// timer around the call for time blocked in WASI (sleep, poll, reads).
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Cap on the whole instance: all its linear memories plus its tables
    /// (8 bytes per element) together; growth past it traps.
    #[serde(default = "default_memory_bytes")]
    pub memory_bytes: u64,
    /// Maximum wasm stack.
    #[serde(default = "default_stack_bytes")]
    pub max_stack_bytes: usize,
    /// Bytes the guest may hand the host in one host call (`log` messages, ...).
    #[serde(default = "default_hostcall_fuel")]
    pub hostcall_fuel: usize,
    /// Resources (streams, handles) one instance may hold.
    #[serde(default = "default_max_resources")]
    pub max_resources: usize,
    /// Total key + value + header bytes of the outputs of one record. Must
    /// leave [`RECORD_OVERHEAD_BYTES`] under the producer's
    /// `message.max.bytes`, so the sandbox never admits what the producer
    /// would refuse.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// Outputs one record may fan out to; more dead-letters the record with
    /// kind `output-count`.
    #[serde(default = "default_max_outputs")]
    pub max_outputs: usize,
    /// Table elements per table.
    #[serde(default = "default_table_elements")]
    pub max_table_elements: usize,
    /// Records one instance serves before it is replaced by a fresh one (a
    /// trap always replaces it). 1 = a fresh instance per record; module-level
    /// state of the function lives at most this long.
    #[serde(default = "default_instance_max_records")]
    pub instance_max_records: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: None,
            deadline_ms: default_deadline_ms(),
            memory_bytes: default_memory_bytes(),
            max_stack_bytes: default_stack_bytes(),
            hostcall_fuel: default_hostcall_fuel(),
            max_resources: default_max_resources(),
            max_output_bytes: default_max_output_bytes(),
            max_outputs: default_max_outputs(),
            max_table_elements: default_table_elements(),
            instance_max_records: default_instance_max_records(),
        }
    }
}

fn default_deadline_ms() -> u64 {
    1_000
}
fn default_memory_bytes() -> u64 {
    128 << 20
}
fn default_stack_bytes() -> usize {
    512 << 10
}
fn default_hostcall_fuel() -> usize {
    1 << 20
}
fn default_max_resources() -> usize {
    1_000
}
/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room kept under the producer's `message.max.bytes` for what the worker adds
/// to an output (`pw.function.version`, `traceparent`) and the record framing.
pub const RECORD_OVERHEAD_BYTES: usize = 1_024;
/// Largest `max_stack_bytes`: the sandbox reserves this much (plus host
/// headroom) per execution stack.
pub const MAX_STACK_BYTES: usize = 16 << 20;

fn default_max_output_bytes() -> usize {
    DEFAULT_MESSAGE_MAX_BYTES - RECORD_OVERHEAD_BYTES
}
fn default_max_outputs() -> usize {
    1_000
}
fn default_table_elements() -> usize {
    100_000
}
fn default_instance_max_records() -> u64 {
    10_000
}

/// librdkafka keys the worker sets itself because correctness depends on them.
const MANAGED_KAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "partition.assignment.strategy",
];

impl Config {
    /// Reads, applies `PIPELINE_WORKER__*` overrides, parses and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_with_env(&text, path, std::env::vars())
    }

    /// `path` is used for messages and to resolve relative component paths.
    pub fn from_str_with_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut doc = toml::Value::Table(table);
        let mut overrides = Vec::new();
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                let written = apply_override(&mut doc, &var, rest, &value)?;
                overrides.push((var, written));
            }
        }
        // Through serde_path_to_error: serde alone says "unknown field `foo`"
        // without saying in which table or array element.
        let mut config: Config = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            // `message()`, not Display: that appends toml's own key
            // path, which lacks the array index.
            let message = with_hint(e.inner().message());
            match blame(&overrides, &key) {
                Some(var) => ConfigError::Env {
                    var: var.to_string(),
                    message: format!("key `{key}`: {message}"),
                },
                None => ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!("key `{key}`: {message}"),
                },
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.base_dir = base.to_path_buf();
        for p in &mut config.pipelines {
            if let Some(c) = &mut p.component {
                if c.is_relative() {
                    *c = base.join(&*c);
                }
            }
        }
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => match blame(&overrides, &key) {
                Some(var) => ConfigError::Invalid {
                    message: format!("{message} (set by environment variable {var})"),
                    key,
                },
                None => ConfigError::Invalid { key, message },
            },
            e => e,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must not be empty"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if !matches!(self.kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(invalid(
                "kafka.auto_offset_reset",
                format!(
                    "must be \"earliest\" or \"latest\", got {:?}",
                    self.kafka.auto_offset_reset
                ),
            ));
        }
        self.validate_registry()?;
        for key in self.kafka.librdkafka.keys() {
            if MANAGED_KAFKA_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    format!("kafka.librdkafka.\"{key}\""),
                    "is set by the worker itself (it is what makes delivery at-least-once); use the dedicated key under [kafka] if there is one",
                ));
            }
        }
        self.validate_delivery()?;
        if let Some(f) = &self.telemetry.log_format {
            if f != "text" && f != "json" {
                return Err(invalid(
                    "telemetry.log_format",
                    format!("must be \"text\" or \"json\", got {f:?}"),
                ));
            }
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            if !e.starts_with("http://") {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    format!("{e:?} must be an http:// URL of an OTLP/HTTP receiver (e.g. http://otel-collector:4318)"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.trace_sample_ratio) {
            return Err(invalid(
                "telemetry.trace_sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.telemetry.otlp_interval_ms < 100 {
            return Err(invalid(
                "telemetry.otlp_interval_ms",
                "must be at least 100",
            ));
        }
        if self.runtime.epoch_tick_ms == 0 {
            return Err(invalid("runtime.epoch_tick_ms", "must be at least 1"));
        }
        if self.runtime.cache_max_bytes == 0 {
            return Err(invalid("runtime.cache_max_bytes", "must be positive"));
        }
        if self.runtime.max_in_flight == 0 {
            return Err(invalid("runtime.max_in_flight", "must be at least 1"));
        }
        if self.runtime.memory_budget_bytes == Some(0) {
            return Err(invalid(
                "runtime.memory_budget_bytes",
                "must be positive (omit it for the cgroup limit)",
            ));
        }
        self.validate_tenants()?;
        if self.pipelines.is_empty() {
            return Err(invalid(
                "pipelines",
                "no pipeline declared; add at least one [[pipelines]] table",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let k = |field: &str| format!("pipelines[{i}].{field}");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    k("name"),
                    format!("{:?} must be non-empty and use only [A-Za-z0-9_-]", p.name),
                ));
            }
            if !names.insert(&p.name) {
                return Err(invalid(
                    k("name"),
                    format!("duplicate pipeline name {:?}", p.name),
                ));
            }
            if let Some(t) = &p.tenant {
                if !valid_name(t) {
                    return Err(invalid(k("tenant"), format!("{t:?} {NAME_RULE}")));
                }
            }
            if p.component.is_none() && (p.tenant.is_none() || self.registry.is_none()) {
                return Err(invalid(
                    k("component"),
                    "missing: give a component path, or a tenant and a [registry] so the pipeline runs the function activated for it",
                ));
            }
            if p.input_topics.is_empty() {
                return Err(invalid(k("input_topics"), "must name at least one topic"));
            }
            if p.output_topics.is_empty() {
                return Err(invalid(k("output_topics"), "must name at least one topic"));
            }
            for (field, topics) in [
                ("input_topics", &p.input_topics),
                ("output_topics", &p.output_topics),
            ] {
                for (j, t) in topics.iter().enumerate() {
                    check_topic(&format!("pipelines[{i}].{field}[{j}]"), t)?;
                }
            }
            check_topic(&k("dead_letter_topic"), &p.dead_letter_topic)?;
            for t in &p.input_topics {
                if p.output_topics.contains(t) || &p.dead_letter_topic == t {
                    return Err(invalid(
                        k("input_topics"),
                        format!("topic {t:?} is both input and output; the pipeline would consume its own results"),
                    ));
                }
            }
            if p.batch_size == 0 || p.batch_size > 10_000 {
                return Err(invalid(k("batch_size"), "must be between 1 and 10000"));
            }
            if p.concurrency == 0 || p.concurrency > 256 {
                return Err(invalid(k("concurrency"), "must be between 1 and 256"));
            }
            p.arrow_schema(Some(i))?;
            if p.format == DataFormat::ArrowIpc {
                return Err(invalid(
                    k("format"),
                    "\"arrow-ipc\" is not supported yet; use \"json\"",
                ));
            }
            let l = &p.limits;
            let lk = |field: &str| format!("pipelines[{i}].limits.{field}");
            if l.fuel == Some(0) {
                return Err(invalid(
                    lk("fuel"),
                    "must be positive (omit it to disable fuel metering)",
                ));
            }
            if l.deadline_ms == 0 {
                return Err(invalid(lk("deadline_ms"), "must be positive"));
            }
            if l.deadline_ms < self.runtime.epoch_tick_ms {
                return Err(invalid(
                    lk("deadline_ms"),
                    format!(
                        "{} ms is shorter than runtime.epoch_tick_ms ({} ms), the deadline's resolution",
                        l.deadline_ms, self.runtime.epoch_tick_ms
                    ),
                ));
            }
            if l.memory_bytes < (1 << 16) {
                return Err(invalid(
                    lk("memory_bytes"),
                    "must be at least one wasm page (65536)",
                ));
            }
            if l.max_stack_bytes < 4096 || l.max_stack_bytes > MAX_STACK_BYTES {
                return Err(invalid(
                    lk("max_stack_bytes"),
                    format!("must be between 4096 and {MAX_STACK_BYTES}"),
                ));
            }
            if l.max_output_bytes == 0 {
                return Err(invalid(lk("max_output_bytes"), "must be positive"));
            }
            let producer_max = self.message_max_bytes()?;
            if l.max_output_bytes.saturating_add(RECORD_OVERHEAD_BYTES) > producer_max {
                return Err(invalid(
                    lk("max_output_bytes"),
                    format!(
                        "{} plus {RECORD_OVERHEAD_BYTES} bytes of record overhead exceeds the producer's kafka.librdkafka.\"message.max.bytes\" ({producer_max}); the producer would refuse such outputs. Lower max_output_bytes to at most {} or raise message.max.bytes",
                        l.max_output_bytes,
                        producer_max.saturating_sub(RECORD_OVERHEAD_BYTES)
                    ),
                ));
            }
            if l.max_outputs == 0 {
                return Err(invalid(lk("max_outputs"), "must be at least 1"));
            }
            if l.instance_max_records == 0 {
                return Err(invalid(lk("instance_max_records"), "must be at least 1"));
            }
            if l.max_resources == 0 {
                return Err(invalid(lk("max_resources"), "must be positive"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The producer's `message.max.bytes`: the operator's override or librdkafka's default.
    pub fn message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.kafka.librdkafka.get("message.max.bytes") {
            None => Ok(DEFAULT_MESSAGE_MAX_BYTES),
            Some(v) => v.trim().parse().map_err(|_| {
                invalid(
                    "kafka.librdkafka.\"message.max.bytes\"",
                    format!("{v:?} is not a whole number of bytes"),
                )
            }),
        }
    }
}

const NAME_RULE: &str = "must be 1-63 characters of [a-z0-9_-], starting with a letter or digit";

/// Tenant and function names: they become object-store path segments.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// librdkafka's default `transaction.timeout.ms`, what an exactly-once
/// producer gets unless its interval needs longer.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;
/// The bounds on one commit or abort of an exactly-once pipeline
/// (`crate::txn::Timeouts`): at most 15 s, at least 1 s.
pub const TRANSACTION_COMMIT_MAX_MS: u64 = 15_000;
pub const TRANSACTION_COMMIT_MIN_MS: u64 = 1_000;

/// The `transaction.timeout.ms` of an exactly-once pipeline's producer:
/// the operator's, else librdkafka's default (60 s), raised for long
/// intervals so that the interval and two commit bounds (a commit, and an
/// abort when it fails) always fit.
pub fn transaction_timeout_ms(user: Option<u64>, interval_ms: u64) -> u64 {
    user.unwrap_or_else(|| {
        DEFAULT_TRANSACTION_TIMEOUT_MS.max(interval_ms + 2 * TRANSACTION_COMMIT_MAX_MS)
    })
}

impl Config {
    fn validate_tenants(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let k = |f: &str| format!("tenants[{i}].{f}");
            if !valid_name(&t.name) {
                return Err(invalid(k("name"), format!("{:?} {NAME_RULE}", t.name)));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(k("name"), format!("duplicate tenant {:?}", t.name)));
            }
            for (rate, burst, rk, bk) in [
                (
                    t.records_per_second,
                    t.records_burst,
                    "records_per_second",
                    "records_burst",
                ),
                (
                    t.bytes_per_second,
                    t.bytes_burst,
                    "bytes_per_second",
                    "bytes_burst",
                ),
            ] {
                if rate == Some(0) {
                    return Err(invalid(k(rk), "must be positive (omit it for no limit)"));
                }
                match (rate, burst) {
                    (_, Some(0)) => return Err(invalid(k(bk), "must be positive")),
                    (None, Some(_)) => {
                        return Err(invalid(
                            k(bk),
                            format!("needs {rk} (a burst of what rate?)"),
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(s) = t.cpu_share {
                if !(s > 0.0 && s <= 1.0) {
                    return Err(invalid(
                        k("cpu_share"),
                        format!("{s} must be above 0 and at most 1 (a share of the worker's CPUs)"),
                    ));
                }
            }
        }
        if !self.tenants.is_empty() {
            for (i, p) in self.pipelines.iter().enumerate() {
                if let Some(t) = &p.tenant {
                    if !seen.contains(t.as_str()) {
                        return Err(invalid(
                            format!("pipelines[{i}].tenant"),
                            format!(
                                "{t:?} is not in [[tenants]] (declared: {})",
                                self.tenants
                                    .iter()
                                    .map(|t| t.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Exactly-once settings, and the librdkafka overrides that would break
    /// it. `transactional.id` is refused for every pipeline: the map is
    /// shared by all clients, and a transactional at-least-once producer
    /// would refuse every record sent outside a transaction.
    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let lk = |k: &str| format!("kafka.librdkafka.\"{k}\"");
        if self.kafka.librdkafka.contains_key("transactional.id") {
            return Err(invalid(
                lk("transactional.id"),
                "is set by the worker itself for each exactly-once pipeline (pipeline-worker-<group>-<worker id>); set kafka.worker_id to choose the worker identity",
            ));
        }
        if let Some(w) = &self.kafka.worker_id {
            if w.trim().is_empty() || w.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(invalid(
                    "kafka.worker_id",
                    format!("{w:?} must be non-empty, without spaces or control characters"),
                ));
            }
        }
        let ms = |key: &str| -> Result<Option<u64>, ConfigError> {
            self.kafka
                .librdkafka
                .get(key)
                .map(|v| {
                    v.trim().parse().map_err(|_| {
                        invalid(
                            lk(key),
                            format!("{v:?} is not a whole number of milliseconds"),
                        )
                    })
                })
                .transpose()
        };
        let user_timeout = ms("transaction.timeout.ms")?;
        for (i, p) in self.pipelines.iter().enumerate() {
            let k = |field: &str| format!("pipelines[{i}].{field}");
            if !(10..=300_000).contains(&p.transaction_interval_ms) {
                return Err(invalid(
                    k("transaction_interval_ms"),
                    format!(
                        "{} must be between 10 and 300000",
                        p.transaction_interval_ms
                    ),
                ));
            }
            if !(1..=1_000_000).contains(&p.transaction_max_records) {
                return Err(invalid(
                    k("transaction_max_records"),
                    format!(
                        "{} must be between 1 and 1000000",
                        p.transaction_max_records
                    ),
                ));
            }
            if p.delivery != DeliveryMode::ExactlyOnce {
                continue;
            }
            if let Some(v) = self.kafka.librdkafka.get("isolation.level") {
                if v.trim() != "read_committed" {
                    return Err(invalid(
                        lk("isolation.level"),
                        format!("{v:?} would let {} = \"exactly-once\" read records of aborted transactions; remove it (the worker sets read_committed)", k("delivery")),
                    ));
                }
            }
            let timeout = transaction_timeout_ms(user_timeout, p.transaction_interval_ms);
            let least = p.transaction_interval_ms + 2 * TRANSACTION_COMMIT_MIN_MS;
            if timeout < least {
                return Err(invalid(
                    lk("transaction.timeout.ms"),
                    format!(
                        "{timeout} ms is below {} ({} ms) + 2 x {TRANSACTION_COMMIT_MIN_MS} ms = {least} ms: a transaction stays open for the interval and then its commit (and an abort if that fails), and the broker aborts one open longer than transaction.timeout.ms",
                        k("transaction_interval_ms"),
                        p.transaction_interval_ms
                    ),
                ));
            }
            // librdkafka refuses a transactional producer whose requests or
            // deliveries may outlive its transactions.
            for (key, slack) in [
                ("socket.timeout.ms", 100),
                ("message.timeout.ms", 0),
                ("delivery.timeout.ms", 0),
            ] {
                if let Some(v) = ms(key)? {
                    if v > timeout + slack {
                        return Err(invalid(
                            lk(key),
                            format!("{v} ms is above the transaction timeout of {} = \"exactly-once\" ({timeout} ms, transaction.timeout.ms): librdkafka refuses a transactional producer whose requests or deliveries outlive its transactions; lower it or raise kafka.librdkafka.\"transaction.timeout.ms\"", k("delivery")),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether any pipeline runs exactly-once.
    pub fn any_exactly_once(&self) -> bool {
        self.pipelines
            .iter()
            .any(|p| p.delivery == DeliveryMode::ExactlyOnce)
    }

    fn validate_registry(&self) -> Result<(), ConfigError> {
        if let Some(r) = &self.registry {
            if r.store.trim().is_empty() {
                return Err(invalid("registry.store", "must not be empty"));
            }
            check_topic("registry.activations_topic", &r.activations_topic)?;
        }
        if let Some(c) = &self.control {
            if self.registry.is_none() {
                return Err(invalid(
                    "control",
                    "needs a [registry] (where uploads are stored and activations logged)",
                ));
            }
            if c.tenants.is_empty() {
                return Err(invalid("control.tenants", "declare at least one tenant"));
            }
            self.validate_control_limits(c)?;
            let mut seen = std::collections::HashSet::new();
            for (i, t) in c.tenants.iter().enumerate() {
                let k = |f: &str| format!("control.tenants[{i}].{f}");
                if !valid_name(&t.name) {
                    return Err(invalid(k("name"), format!("{:?} {NAME_RULE}", t.name)));
                }
                if !seen.insert(&t.name) {
                    return Err(invalid(k("name"), format!("duplicate tenant {:?}", t.name)));
                }
                match (&t.token_sha256, &t.token_env) {
                    (Some(h), None) => {
                        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(invalid(
                                k("token_sha256"),
                                "must be 64 hex digits (sha256sum of the token)",
                            ));
                        }
                    }
                    (None, Some(_)) => {}
                    _ => {
                        return Err(invalid(
                            k("token_sha256"),
                            "give exactly one of token_sha256 and token_env",
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_control_limits(&self, c: &ControlConfig) -> Result<(), ConfigError> {
        let positive = [
            ("max_component_bytes", c.max_component_bytes as u64),
            ("max_concurrent_uploads", c.max_concurrent_uploads as u64),
            (
                "max_concurrent_uploads_per_tenant",
                c.max_concurrent_uploads_per_tenant as u64,
            ),
            ("uploads_per_minute", c.uploads_per_minute.into()),
            ("upload_burst", c.upload_burst.into()),
            ("compile_timeout_ms", c.compile_timeout_ms),
            ("compile_concurrency", c.compile_concurrency as u64),
            (
                "compile_concurrency_per_tenant",
                c.compile_concurrency_per_tenant as u64,
            ),
            ("header_read_timeout_ms", c.header_read_timeout_ms),
            ("body_read_timeout_ms", c.body_read_timeout_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(format!("control.{key}"), "must be positive"));
            }
        }
        if c.max_concurrent_uploads_per_tenant > c.max_concurrent_uploads {
            return Err(invalid(
                "control.max_concurrent_uploads_per_tenant",
                format!(
                    "{} exceeds control.max_concurrent_uploads ({})",
                    c.max_concurrent_uploads_per_tenant, c.max_concurrent_uploads
                ),
            ));
        }
        // With one tenant taking every compile worker, another tenant's
        // upload would wait behind its compiles.
        if c.tenants.len() > 1 && c.compile_concurrency_per_tenant >= c.compile_concurrency {
            return Err(invalid(
                "control.compile_concurrency_per_tenant",
                format!(
                    "must be below control.compile_concurrency ({}) so that one tenant cannot take every compile worker",
                    c.compile_concurrency
                ),
            ));
        }
        if c.compile_concurrency_per_tenant > c.compile_concurrency {
            return Err(invalid(
                "control.compile_concurrency_per_tenant",
                format!(
                    "exceeds control.compile_concurrency ({})",
                    c.compile_concurrency
                ),
            ));
        }
        for (i, t) in c.tenants.iter().enumerate() {
            if t.uploads_per_minute == Some(0) {
                return Err(invalid(
                    format!("control.tenants[{i}].uploads_per_minute"),
                    "must be positive",
                ));
            }
            if t.upload_burst == Some(0) {
                return Err(invalid(
                    format!("control.tenants[{i}].upload_burst"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }
}

fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "{topic:?} is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters)"
            ),
        ))
    }
}

/// What one `PIPELINE_WORKER__*` variable wrote: the key path of the value
/// it set, or of the first table it had to create on the way there, in the
/// form errors use (`pipelines[0].limits`). An error at or below it is the
/// variable's, not the file's.
type Written = Vec<KeySegment>;

#[derive(Debug, Clone, PartialEq)]
enum KeySegment {
    Key(String),
    Index(usize),
}

fn render_key(segments: &[KeySegment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            KeySegment::Index(i) => out.push_str(&format!("[{i}]")),
            KeySegment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// The variable whose write contains `key` (the last one, as later
/// variables win). `key` is as serde_path_to_error or `validate` print it;
/// a `validate` key may quote a dotted map key (`kafka.librdkafka."a.b"`).
fn blame<'a>(overrides: &'a [(String, Written)], key: &str) -> Option<&'a str> {
    let key = key.replace('"', "");
    overrides.iter().rev().find_map(|(var, written)| {
        let w = render_key(written);
        let inside = key == w
            || key
                .strip_prefix(w.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['));
        inside.then_some(var.as_str())
    })
}

/// serde's unknown-field message lists the expected keys: name the closest
/// one, since a typo is the usual cause.
fn with_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, candidate)) => format!("{message} (did you mean `{candidate}`?)"),
        None => message.to_string(),
    }
}

fn apply_override(
    doc: &mut toml::Value,
    var: &str,
    path: &str,
    raw: &str,
) -> Result<Written, ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(env_err("empty key segment".into()));
    }
    // librdkafka values are strings: a numeric password must stay a string.
    let value = if segments.len() > 2 && segments[0] == "kafka" && segments[1] == "librdkafka" {
        toml::Value::String(raw.to_string())
    } else {
        parse_env_value(raw)
    };
    let mut written: Written = Vec::new();
    // Once a table had to be created, everything below it is this variable's.
    let mut created = false;
    let mut cur: &mut toml::Value = doc;
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match cur {
            toml::Value::Table(t) => {
                if !created {
                    written.push(KeySegment::Key(seg.clone()));
                    created = !t.contains_key(seg.as_str());
                }
                if last {
                    t.insert(seg.clone(), value);
                    return Ok(written);
                }
                cur = t
                    .entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
            toml::Value::Array(a) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| env_err(format!("`{seg}` must be an array index")))?;
                let len = a.len();
                let slot = a.get_mut(idx).ok_or_else(|| {
                    env_err(format!(
                        "index {idx} is out of range (the array has {len} elements)"
                    ))
                })?;
                if !created {
                    written.push(KeySegment::Index(idx));
                }
                if last {
                    *slot = value;
                    return Ok(written);
                }
                cur = slot;
            }
            _ => {
                return Err(env_err(format!(
                    "`{}` is not a table or an array",
                    segments[..n].join(".")
                )))
            }
        }
    }
    Ok(written)
}

fn parse_env_value(raw: &str) -> toml::Value {
    // A bare TOML value (`42`, `true`, `["a","b"]`) when it parses as one.
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[kafka]
brokers = "b:9092"

[[pipelines]]
name = "p"
input_topics = ["in"]
output_topics = ["out"]
dead_letter_topic = "dlq"
component = "p.wasm"

[[pipelines]]
name = "q"
input_topics = ["in2"]
output_topics = ["out"]
dead_letter_topic = "dlq"
component = "q.wasm"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_str_with_env(
            text,
            Path::new("w.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const SCHEMA: &str = r#"
[[pipelines.schema]]
name = "id"
type = "int64"
nullable = false
[[pipelines.schema]]
name = "tags"
type = "list<utf8>"
[[pipelines.schema]]
name = "context"
type = "struct"
[[pipelines.schema.fields]]
name = "tier"
type = "utf8"
[[pipelines.schema]]
name = "at"
type = "timestamp[ms]"
"#;

    #[test]
    fn schema_parses_into_arrow() {
        use arrow_schema::{DataType, TimeUnit};
        let c = load(&format!("{BASE}{SCHEMA}"), &[]).unwrap();
        assert!(c.pipelines[0].schema.is_none());
        let s = c.pipelines[1].arrow_schema(Some(1)).unwrap().unwrap();
        assert_eq!(s.fields().len(), 4);
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert!(!s.field(0).is_nullable());
        assert!(s.field(1).is_nullable());
        assert!(
            matches!(s.field(1).data_type(), DataType::List(f) if f.data_type() == &DataType::Utf8)
        );
        assert!(matches!(s.field(2).data_type(), DataType::Struct(f) if f[0].name() == "tier"));
        assert_eq!(
            s.field(3).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
    }

    #[test]
    fn schema_errors_name_the_exact_key() {
        let bad_type = SCHEMA.replace("\"list<utf8>\"", "\"list<text>\"");
        let e = load(&format!("{BASE}{bad_type}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `pipelines[1].schema[1].type`: unknown type \"list<text>\""),
            "{e}"
        );
        assert!(e.contains("known types: int32, int64"), "{e}");
        let no_fields = SCHEMA.replace(
            "[[pipelines.schema.fields]]\nname = \"tier\"\ntype = \"utf8\"\n",
            "",
        );
        let e = load(&format!("{BASE}{no_fields}"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].schema[2].fields`"), "{e}");
        let dup = SCHEMA.replace("name = \"at\"", "name = \"id\"");
        let e = load(&format!("{BASE}{dup}"), &[]).unwrap_err().to_string();
        assert!(
            e.contains("`pipelines[1].schema[3].name`: duplicate field name \"id\""),
            "{e}"
        );
        let reserved = SCHEMA.replace("name = \"at\"", "name = \"_row\"");
        let e = load(&format!("{BASE}{reserved}"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`pipelines[1].schema[3].name`") && e.contains("reserved"),
            "{e}"
        );
        let nested = SCHEMA.replace(
            "name = \"tier\"\ntype = \"utf8\"",
            "name = \"tier\"\ntype = \"utf9\"",
        );
        let e = load(&format!("{BASE}{nested}"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].schema[2].fields[0].type`"), "{e}");
        let unknown = SCHEMA.replace("nullable = false", "nulable = false");
        let e = load(&format!("{BASE}{unknown}"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].schema[0].nulable`"), "{e}");
        let ipc = load(&format!("{BASE}format = \"arrow-ipc\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(ipc.contains("`pipelines[1].format`"), "{ipc}");
    }

    #[test]
    fn unknown_keys_carry_their_index_and_a_hint() {
        let e = load(&format!("{BASE}[pipelines.limits]\ndeadlin_ms = 5\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config file w.toml: key `pipelines[1].limits.deadlin_ms`: unknown field `deadlin_ms`"),
            "{e}"
        );
        assert!(e.ends_with("(did you mean `deadline_ms`?)"), "{e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }

    #[test]
    fn overrides_are_blamed_for_what_they_wrote() {
        let e = load(BASE, &[("PIPELINE_WORKER__KAFKA__BROKER", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "environment variable PIPELINE_WORKER__KAFKA__BROKER: key `kafka.broker`"
            ),
            "{e}"
        );
        // A whole new table: the error is at its root, still the variable's.
        let e = load(BASE, &[("PIPELINE_WORKER__NOPE__X", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PIPELINE_WORKER__NOPE__X") && e.contains("`nope`"),
            "{e}"
        );
        let e = load(
            BASE,
            &[("PIPELINE_WORKER__PIPELINES__1__LIMITS__DEADLINE_MS", "0")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("pipelines[1].limits.deadline_ms")
                && e.contains("PIPELINE_WORKER__PIPELINES__1__LIMITS__DEADLINE_MS"),
            "{e}"
        );
        // An override of another key is not blamed for the file's mistake.
        let e = load(
            &BASE.replace("brokers =", "broker ="),
            &[("PIPELINE_WORKER__KAFKA__GROUP_ID", "g")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file w.toml: key `kafka.broker`"),
            "{e}"
        );
    }

    #[test]
    fn no_hint_for_a_key_like_none() {
        let e = load(&format!("{BASE}zzzzzz = 1\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn exactly_once_settings_are_checked_with_their_key() {
        let eos = |extra: &str| load(&format!("{BASE}delivery = \"exactly-once\"\n{extra}"), &[]);
        let c = eos("").unwrap();
        assert_eq!(c.pipelines[1].delivery, DeliveryMode::ExactlyOnce);
        assert_eq!(c.pipelines[0].delivery, DeliveryMode::AtLeastOnce);
        assert_eq!(c.pipelines[1].transaction_interval_ms, 100);
        let e = eos("transaction_interval_ms = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].transaction_interval_ms`"), "{e}");
        let e = eos("transaction_max_records = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].transaction_max_records`"), "{e}");
        let e = load(&format!("{BASE}delivery = \"exactly_once\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`pipelines[1].delivery`"), "{e}");
        let with = |k: &str, v: &str| {
            load(
                &BASE
                    .replace(
                        "brokers = \"b:9092\"",
                        &format!("brokers = \"b:9092\"\nlibrdkafka = {{ \"{k}\" = \"{v}\" }}"),
                    )
                    .replace(
                        "component = \"q.wasm\"",
                        "component = \"q.wasm\"\ndelivery = \"exactly-once\"",
                    ),
                &[],
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let e = with("isolation.level", "read_uncommitted");
        assert!(
            e.contains("`kafka.librdkafka.\"isolation.level\"`")
                && e.contains("pipelines[1].delivery"),
            "{e}"
        );
        let e = with("transactional.id", "mine");
        assert!(e.contains("`kafka.librdkafka.\"transactional.id\"`"), "{e}");
        let e = with("transaction.timeout.ms", "50");
        assert!(
            e.contains("`kafka.librdkafka.\"transaction.timeout.ms\"`")
                && e.contains("pipelines[1].transaction_interval_ms"),
            "{e}"
        );
        // Room for the interval but not for a commit and an abort after it.
        let e = with("transaction.timeout.ms", "2099");
        assert!(e.contains("2100 ms"), "{e}");
        // librdkafka would refuse the transactional producer itself.
        let e = with("message.timeout.ms", "300000");
        assert!(
            e.contains("`kafka.librdkafka.\"message.timeout.ms\"`") && e.contains("60000 ms"),
            "{e}"
        );
        let e = with("socket.timeout.ms", "60101");
        assert!(
            e.contains("`kafka.librdkafka.\"socket.timeout.ms\"`"),
            "{e}"
        );
        let e = with("enable.idempotence", "false");
        assert!(
            e.contains("`kafka.librdkafka.\"enable.idempotence\"`"),
            "{e}"
        );
        // read_uncommitted on an at-least-once-only config is the operator's call.
        assert!(load(
            &BASE.replace(
                "brokers = \"b:9092\"",
                "brokers = \"b:9092\"\nlibrdkafka = { \"isolation.level\" = \"read_uncommitted\" }"
            ),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn control_limits_are_checked_with_their_keys() {
        let control = |extra: &str, tenant_extra: &str| {
            format!(
                "[registry]\nstore = \"s\"\n[control]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
                 [[control.tenants]]\nname = \"a\"\ntoken_env = \"A\"\n{tenant_extra}\n\
                 [[control.tenants]]\nname = \"b\"\ntoken_env = \"B\"\n{BASE}"
            )
        };
        let c = load(&control("", ""), &[]).unwrap().control.unwrap();
        assert_eq!((c.max_concurrent_uploads, c.compile_concurrency), (8, 2));
        let t = load(&control("", "upload_burst = 3"), &[]).unwrap();
        assert_eq!(t.control.unwrap().tenants[0].upload_burst, Some(3));
        for (extra, tenant_extra, key) in [
            ("compile_timeout_ms = 0", "", "control.compile_timeout_ms"),
            (
                "body_read_timeout_ms = 0",
                "",
                "control.body_read_timeout_ms",
            ),
            (
                "max_concurrent_uploads = 1",
                "",
                "control.max_concurrent_uploads_per_tenant",
            ),
            (
                "compile_concurrency = 1",
                "",
                "control.compile_concurrency_per_tenant",
            ),
            (
                "",
                "uploads_per_minute = 0",
                "control.tenants[0].uploads_per_minute",
            ),
        ] {
            let e = load(&control(extra, tenant_extra), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("`{key}`")),
                "{extra}{tenant_extra}: {e}"
            );
        }
    }
}
