//! The sandbox: loads a customer component once (compile or cached artifact →
//! `InstancePre`) and runs records through fresh instances of it under the
//! pipeline's caps. Nothing a guest does can panic or abort the host: every
//! failure comes back as a [`RecordError`] for that record.

mod cache;
mod engine;
mod host;
mod imports;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Engine, Store, Trap};

use crate::config::Limits;
pub use cache::{digest, ArtifactCache, RemoteArtifacts};
pub use engine::EpochTicker;
pub use host::{GuestLog, HostState};
pub use imports::{check_component_shape, ALLOWED_IMPORTS, WORLD_PACKAGE, WORLD_VERSION_REQ};

pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk-wit/wit",
        world: "transform-batch",
    });
}

use bindings::exports::pipeline::transform::{batch_transformer, transformer};
pub use bindings::pipeline::transform::types::{Header, InputRecord, OutputRecord, TransformError};

/// Why one record did not produce outputs. `kind()` is what goes into the
/// dead-letter `pw.error.kind` header and the trap counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("function failed: {0}")]
    Failed(String),
    #[error("out of fuel (limit {limit} per record)")]
    OutOfFuel { limit: u64 },
    #[error("wall-clock deadline of {deadline_ms} ms exceeded")]
    Deadline { deadline_ms: u64 },
    #[error("memory limit exceeded: {0}")]
    Memory(String),
    #[error("wasm stack overflow (max_stack_bytes {0})")]
    StackOverflow(usize),
    #[error("output {} exceeds max_output_bytes {limit}", size.map(|s| format!("of {s} bytes")).unwrap_or_default())]
    OutputTooLarge { size: Option<usize>, limit: usize },
    #[error("output names topic {topic:?}, which is not one of the pipeline's output topics {declared:?}")]
    UnknownTopic {
        topic: String,
        declared: Vec<String>,
    },
    #[error("trap: {0}")]
    Trap(String),
    #[error("could not instantiate the function: {0}")]
    Instantiate(String),
}

/// Every value of [`RecordError::kind`], for metrics.
pub const ERROR_KINDS: [&str; 10] = [
    "invalid-input",
    "failed",
    "fuel",
    "deadline",
    "memory",
    "stack",
    "output-size",
    "unknown-topic",
    "trap",
    "instantiate",
];

impl RecordError {
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::InvalidInput(_) => "invalid-input",
            RecordError::Failed(_) => "failed",
            RecordError::OutOfFuel { .. } => "fuel",
            RecordError::Deadline { .. } => "deadline",
            RecordError::Memory(_) => "memory",
            RecordError::StackOverflow(_) => "stack",
            RecordError::OutputTooLarge { .. } => "output-size",
            RecordError::UnknownTopic { .. } => "unknown-topic",
            RecordError::Trap(_) => "trap",
            RecordError::Instantiate(_) => "instantiate",
        }
    }
}

/// Errors loading a component; they name the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not a WebAssembly component: {reason}")]
    NotAComponent { origin: String, reason: String },
    #[error("{origin}: imports `{import}`, which the sandbox does not grant (allowed: pipeline:transform/host and WASI 0.2 cli, clocks, filesystem, io, random, sockets — the last two linked deny-all)")]
    ForbiddenImport { origin: String, import: String },
    #[error("{origin}: {reason}")]
    WrongWorld { origin: String, reason: String },
    #[error("{origin}: targets {WORLD_PACKAGE}@{found}; this worker accepts {WORLD_PACKAGE}@{WORLD_VERSION_REQ}.x")]
    UnsupportedWorldVersion { origin: String, found: String },
    #[error("{origin}: does not compile: {reason}")]
    Compile { origin: String, reason: String },
    #[error("{origin}: cannot be linked: {reason}")]
    Link { origin: String, reason: String },
    #[error("{origin}: test instantiation failed under the configured limits: {reason}")]
    Instantiate { origin: String, reason: String },
    #[error("artifact cache: {0}")]
    Cache(String),
}

/// One loaded function, shared by all sandbox threads of a pipeline.
pub struct Function {
    pub name: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// What outputs are stamped with (`pw.function.version`): the registry
    /// version number, or the digest's first 12 hex digits for a file.
    pub version: String,
    /// File name of the precompiled artifact (in the cache and the store).
    pub artifact_name: String,
    /// The export that made it ours, e.g. `pipeline:transform/transformer@0.1.0`.
    pub world: String,
    pub limits: Limits,
    engine: Engine,
    pre: InstancePre<HostState>,
    single: transformer::GuestIndices,
    batch: Option<batch_transformer::GuestIndices>,
    log: Arc<GuestLog>,
    ticks_per_record: u64,
    /// Keeps the ticker alive as long as a function may run.
    _ticker: Arc<EpochTicker>,
    /// Time the load took and whether the artifact came from the cache.
    pub load_report: LoadReport,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub from_cache: bool,
    pub load_ms: u128,
    pub exports_batch: bool,
    pub size_bytes: usize,
}

impl Function {
    /// Loads from a file. See [`Function::load_bytes`].
    pub fn load_file(
        name: &str,
        path: &Path,
        limits: &Limits,
        sandbox: &SandboxOptions,
    ) -> Result<Arc<Function>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::load_bytes(name, &path.display().to_string(), &bytes, limits, sandbox)
    }

    /// Validates the component (a component, our world, allowed imports),
    /// compiles it or loads the cached artifact, and test-instantiates it once
    /// so a component that cannot run under the limits fails here, not on the
    /// first record.
    pub fn load_bytes(
        name: &str,
        origin: &str,
        bytes: &[u8],
        limits: &Limits,
        sandbox: &SandboxOptions,
    ) -> Result<Arc<Function>, LoadError> {
        Self::load_versioned(name, None, origin, bytes, limits, sandbox)
    }

    /// [`Function::load_bytes`] with the version outputs are stamped with.
    pub fn load_versioned(
        name: &str,
        version: Option<&str>,
        origin: &str,
        bytes: &[u8],
        limits: &Limits,
        sandbox: &SandboxOptions,
    ) -> Result<Arc<Function>, LoadError> {
        let started = Instant::now();
        if !wasmparser_is_component(bytes) {
            return Err(LoadError::NotAComponent {
                origin: origin.into(),
                reason: describe_non_component(bytes),
            });
        }
        let engine = engine::build(limits, sandbox).map_err(|e| LoadError::Compile {
            origin: origin.into(),
            reason: format!("engine configuration: {e:#}"),
        })?;
        let digest = cache::digest(bytes);
        let (component, from_cache) = sandbox
            .cache
            .load_or_compile(&engine, &digest, bytes)
            .map_err(|e| match e {
                cache::CacheError::Compile(reason) => LoadError::Compile {
                    origin: origin.into(),
                    reason,
                },
                other => LoadError::Cache(other.to_string()),
            })?;
        let world = check_component_shape(&engine, &component, origin)?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        host::add_to_linker(&mut linker).map_err(|e| LoadError::Link {
            origin: origin.into(),
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                origin: origin.into(),
                reason: format!("{e:#}"),
            })?;
        let single = transformer::GuestIndices::new(&pre).map_err(|e| LoadError::WrongWorld {
            origin: origin.into(),
            reason: format!("does not export pipeline:transform/transformer: {e:#}"),
        })?;
        let batch = batch_transformer::GuestIndices::new(&pre).ok();
        let tick = sandbox.epoch_tick_ms.max(1);
        let artifact_name = ArtifactCache::artifact_name(&engine, &digest);
        let version = match version {
            Some(v) => v.to_string(),
            None => digest.trim_start_matches("sha256:")[..12].to_string(),
        };
        let function = Function {
            name: name.to_string(),
            digest,
            version,
            artifact_name,
            world,
            limits: limits.clone(),
            engine,
            pre,
            single,
            batch,
            log: Arc::new(GuestLog::new(name)),
            ticks_per_record: limits.deadline_ms.div_ceil(tick).max(1),
            _ticker: sandbox.ticker.clone(),
            load_report: LoadReport {
                from_cache,
                load_ms: 0,
                exports_batch: false,
                size_bytes: bytes.len(),
            },
        };
        sandbox.ticker.register(&function.engine);
        function.instantiate().map_err(|e| LoadError::Instantiate {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
        let exports_batch = function.batch.is_some();
        Ok(Arc::new(Function {
            load_report: LoadReport {
                from_cache,
                load_ms: started.elapsed().as_millis(),
                exports_batch,
                size_bytes: bytes.len(),
            },
            ..function
        }))
    }

    pub fn exports_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Creates and drops one instance (benchmarks, health probes).
    pub fn instantiate_only(&self) -> Result<(), RecordError> {
        self.instantiate().map(drop)
    }

    fn instantiate(&self) -> Result<Live, RecordError> {
        let mut store = Store::new(&self.engine, HostState::new(&self.limits, self.log.clone()));
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.limits.hostcall_fuel);
        // A guest may only run while the host has armed a deadline for a call.
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.ticks_per_record);
        if self.limits.fuel.is_some() {
            store
                .set_fuel(self.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| RecordError::Instantiate(format!("{e:#}")))?;
        }
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&mut store, e, &self.limits, 1))?;
        let single = self
            .single
            .load(&mut store, &instance)
            .map_err(|e| RecordError::Instantiate(format!("{e:#}")))?;
        let batch = match &self.batch {
            Some(b) => Some(
                b.load(&mut store, &instance)
                    .map_err(|e| RecordError::Instantiate(format!("{e:#}")))?,
            ),
            None => None,
        };
        Ok(Live {
            store,
            single,
            batch,
        })
    }
}

/// Options shared by every function of the process.
#[derive(Clone)]
pub struct SandboxOptions {
    pub cache: ArtifactCache,
    pub ticker: Arc<EpochTicker>,
    pub epoch_tick_ms: u64,
    pub pooling: bool,
    /// Sandbox threads that may hold an instance at once (sizes the pool).
    pub max_instances: u32,
}

struct Live {
    store: Store<HostState>,
    single: transformer::Guest,
    batch: Option<batch_transformer::Guest>,
}

/// Per-call measurements for telemetry and `test` output.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    pub fuel_consumed: u64,
    pub wasm_nanos: u64,
    pub instantiations: u32,
    pub instantiate_nanos: u64,
}

pub type RecordResult = Result<Vec<OutputRecord>, RecordError>;

/// Bytes of record structure (topic names, header keys, list headers) allowed
/// on top of `max_output_bytes` when lifting results.
const OUTPUT_SLACK: usize = 64 * 1024;

/// Runs records through one function. One per sandbox thread; owns at most
/// one live instance, which serves up to `limits.instance_max_records`
/// records and is discarded after any trap (the next record gets a fresh
/// instance from the `InstancePre`).
pub struct Runner {
    function: Arc<Function>,
    pub stats: CallStats,
    /// The instance kept between batches, and how many records it served.
    live: Option<(Live, u64)>,
}

impl Runner {
    pub fn new(function: Arc<Function>) -> Self {
        Self {
            function,
            stats: CallStats::default(),
            live: None,
        }
    }

    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    /// The kept instance if it may serve `n` more records, else a fresh one.
    fn checkout(&mut self, f: &Function, n: u64) -> Result<(Live, u64), RecordError> {
        match self.live.take() {
            Some((l, served)) if served + n <= f.limits.instance_max_records => Ok((l, served)),
            _ => self.fresh(f).map(|l| (l, 0)),
        }
    }

    /// One result per input, in order.
    pub fn run_batch(&mut self, inputs: &[InputRecord]) -> Vec<RecordResult> {
        let f = self.function.clone();
        if inputs.len() > 1
            && f.batch.is_some()
            && inputs.len() as u64 <= f.limits.instance_max_records
        {
            if let Some(results) = self.try_batch_call(&f, inputs) {
                return results;
            }
            // A trap inside a batch call cannot be pinned on a record: replay
            // them one by one in fresh instances so only the culprit fails.
        }
        let mut out = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (l, served) = match self.checkout(&f, 1) {
                Ok(x) => x,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let (l, result) = self.call_one(&f, l, input);
            self.live = l.map(|l| (l, served + 1));
            out.push(result);
        }
        out
    }

    fn fresh(&mut self, f: &Function) -> Result<Live, RecordError> {
        self.stats.instantiations += 1;
        let started = Instant::now();
        let live = f.instantiate();
        self.stats.instantiate_nanos += started.elapsed().as_nanos() as u64;
        live
    }

    fn arm(&mut self, f: &Function, live: &mut Live, records: u64) -> Result<(), RecordError> {
        live.store
            .set_epoch_deadline(f.ticks_per_record.saturating_mul(records));
        // Results are lifted into the host under hostcall fuel too: leave room
        // for `max_output_bytes` per record, so a bigger output is cut off
        // while it is copied, before the host holds all of it.
        let per_record = f.limits.max_output_bytes.saturating_add(OUTPUT_SLACK);
        live.store.set_hostcall_fuel(
            f.limits
                .hostcall_fuel
                .max(per_record.saturating_mul(records as usize)),
        );
        if let Some(fuel) = f.limits.fuel {
            live.store
                .set_fuel(fuel.saturating_mul(records))
                .map_err(|e| RecordError::Trap(format!("{e:#}")))?;
        }
        Ok(())
    }

    fn account(&mut self, f: &Function, live: &Live, records: u64, started: Instant) {
        self.stats.wasm_nanos += started.elapsed().as_nanos() as u64;
        if let Some(fuel) = f.limits.fuel {
            let left = live.store.get_fuel().unwrap_or(0);
            self.stats.fuel_consumed += fuel.saturating_mul(records).saturating_sub(left);
        }
    }

    fn call_one(
        &mut self,
        f: &Function,
        mut live: Live,
        input: &InputRecord,
    ) -> (Option<Live>, RecordResult) {
        if let Err(e) = self.arm(f, &mut live, 1) {
            return (None, Err(e));
        }
        let started = Instant::now();
        let result = live.single.call_transform(&mut live.store, input);
        self.account(f, &live, 1, started);
        live.store.data_mut().flush_output();
        match result {
            Ok(r) => {
                let r = guest_result(r, &f.limits);
                (Some(live), r)
            }
            Err(e) => {
                // Any error out of a call leaves the instance in an unknown
                // state: drop it, the next record gets a fresh one.
                (None, Err(classify(&mut live.store, e, &f.limits, 1)))
            }
        }
    }

    fn try_batch_call(
        &mut self,
        f: &Function,
        inputs: &[InputRecord],
    ) -> Option<Vec<RecordResult>> {
        let n = inputs.len() as u64;
        let (mut live, served) = self.checkout(f, n).ok()?;
        self.arm(f, &mut live, n).ok()?;
        let batch = live.batch.as_ref()?;
        let started = Instant::now();
        let result = batch.call_transform_batch(&mut live.store, inputs);
        self.account(f, &live, n, started);
        live.store.data_mut().flush_output();
        match result {
            Ok(results) if results.len() == inputs.len() => {
                self.live = Some((live, served + n));
                Some(
                    results
                        .into_iter()
                        .map(|r| guest_result(r, &f.limits))
                        .collect(),
                )
            }
            Ok(results) => {
                tracing::warn!(
                    function = %f.name,
                    expected = inputs.len(),
                    got = results.len(),
                    "batch export returned the wrong number of results; replaying one by one"
                );
                None
            }
            Err(_) => None,
        }
    }
}

fn guest_result(r: Result<Vec<OutputRecord>, TransformError>, limits: &Limits) -> RecordResult {
    match r {
        Ok(outputs) => {
            let size: usize = outputs.iter().map(output_size).sum();
            if size > limits.max_output_bytes {
                Err(RecordError::OutputTooLarge {
                    size: Some(size),
                    limit: limits.max_output_bytes,
                })
            } else {
                Ok(outputs)
            }
        }
        Err(TransformError::InvalidInput(m)) => Err(RecordError::InvalidInput(m)),
        Err(TransformError::Failed(m)) => Err(RecordError::Failed(m)),
    }
}

pub fn output_size(o: &OutputRecord) -> usize {
    o.value.len()
        + o.key.as_ref().map_or(0, |k| k.len())
        + o.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

/// Turns a wasmtime error into the record error the operator will see.
fn classify(
    store: &mut Store<HostState>,
    e: wasmtime::Error,
    limits: &Limits,
    records: u64,
) -> RecordError {
    if let Some(reason) = store.data_mut().limiter.take_tripped() {
        return RecordError::Memory(reason);
    }
    if format!("{e:#}").contains("fuel allocated for hostcalls") {
        return RecordError::OutputTooLarge {
            size: None,
            limit: limits.max_output_bytes,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => RecordError::OutOfFuel {
            limit: limits.fuel.unwrap_or(0),
        },
        Some(Trap::Interrupt) => RecordError::Deadline {
            deadline_ms: limits.deadline_ms * records,
        },
        Some(Trap::StackOverflow) => RecordError::StackOverflow(limits.max_stack_bytes),
        Some(trap) => RecordError::Trap(format!("{trap}: {}", first_line(&format!("{e:#}")))),
        None => {
            let msg = format!("{e:#}");
            if msg.contains("exceeds memory limits")
                || msg.contains("memory") && msg.contains("limit")
            {
                RecordError::Memory(first_line(&msg))
            } else {
                RecordError::Trap(first_line(&msg))
            }
        }
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    truncate(line, 1024)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A component starts with `\0asm`, version 0x0d, layer 1; a core module has layer 0.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6..8] == [1, 0]
}

fn describe_non_component(bytes: &[u8]) -> String {
    if bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6..8] == [0, 0] {
        "this is a core WebAssembly module; build a component (WASI 0.2: cargo --target wasm32-wasip2, componentize-py, jco componentize)".into()
    } else if bytes.len() < 8 {
        format!("only {} bytes", bytes.len())
    } else {
        "missing the \\0asm magic number".into()
    }
}
