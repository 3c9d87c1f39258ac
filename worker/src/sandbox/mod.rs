//! The sandbox: loads a customer component once (compile or cached artifact →
//! `InstancePre`) and runs records through fresh instances of it under the
//! pipeline's caps. Nothing a guest does can panic or abort the host: every
//! failure comes back as a [`RecordError`] for that record.
//!
//! # Deadlines
//!
//! A call is stopped at its deadline whether the guest computes or waits:
//!
//! * **Computing** (a busy loop, with or without fuel): epoch interruption. A
//!   process-wide ticker bumps every engine's epoch each `epoch_tick_ms`; a
//!   store armed with `ticks_per_record` ticks traps with `Trap::Interrupt`.
//! * **Waiting in the host** (`wasi:clocks` subscribe-duration/-instant then
//!   `poll` or `pollable.block`, a blocking stream read): no wasm runs, so no
//!   epoch check happens and fuel is not consumed either. WASI is therefore
//!   linked async (`add_to_linker_async`) and every export is called async: a
//!   wasm call runs on its own fiber stack, and a WASI wait suspends that
//!   fiber and yields to the runner's tokio current-thread runtime. Each call
//!   and each instantiation is wrapped in `tokio::time::timeout(deadline)`;
//!   when it fires, the call's future (and with it the suspended fiber) is
//!   dropped, the record fails with kind `deadline`, and the instance is
//!   discarded so the next record gets a fresh one. stdin is empty (reads
//!   return end-of-stream at once).
//!
//! A batch call gets one deadline, not one per record: a batch that runs out
//! of it is replayed one record at a time, each with its own deadline, so a
//! culprit costs at most one extra deadline. Fuel stays per record (`fuel ×
//! n` for a batch): it only counts work, it cannot stall.
//!
//! Stacks: wasm runs on the fiber stack, sized explicitly as
//! `max_stack_bytes` + [`engine::HOST_STACK_HEADROOM`] for the host functions
//! that run on it, so `max_stack_bytes` no longer depends on the sandbox
//! thread's own stack.
//!
//! # Host-call bytes
//!
//! wasmtime's hostcall fuel bounds the bytes lifted from the guest per host
//! call (`log`, stdout writes, ...) and for the results of an export call; it
//! is reset from the store's setting at the start of each. The store is set
//! to `max(hostcall_fuel, max_output_bytes + 64 KiB)` for every call,
//! whatever the batch size, so one `log` in a batch of 64 can pass no more
//! than a single record could. A batch whose combined results do not fit is
//! replayed one record at a time.
//!
//! # Versions
//!
//! The host bindgens `pipeline:transform@0.2` ([`bindings`]) and 0.1
//! ([`bindings_v01`]); the export's version picks one at load and records
//! are converted at the boundary (`compat`).

mod cache;
pub mod columnar;
mod compat;
mod engine;
mod host;
mod imports;
pub mod text;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Engine, Store, Trap};

use crate::config::Limits;
pub use cache::{
    digest, ArtifactCache, ArtifactPin, CacheKey, CacheKeyError, CacheStats, RemoteArtifacts,
    KEY_ENV as CACHE_KEY_ENV,
};
pub use engine::{pool_instances, pool_resident_bytes, EpochTicker, HOST_STACK_HEADROOM};
use host::CallEnd;
pub use host::{GuestLog, GuestOutput, HostState, LimitError, TABLE_ELEMENT_BYTES};
pub use imports::{
    check_component_shape, Shape, WitMinor, ALLOWED_IMPORTS, WORLD_PACKAGE, WORLD_VERSION_REQ,
};

/// `pipeline:transform@0.2`, what the host speaks.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../sdk-wit/wit",
        world: "transform-batch",
        exports: { default: async },
    });
}

/// `pipeline:transform@0.1`, kept so components built against it still run.
pub mod bindings_v01 {
    wasmtime::component::bindgen!({
        path: "../sdk-wit/wit-0.1",
        world: "transform-batch",
        exports: { default: async },
    });
}

/// `pipeline:transform@0.2`'s columnar world; its types and host interface
/// are [`bindings`]' own, so one linker serves both.
pub mod bindings_columnar {
    wasmtime::component::bindgen!({
        path: "../sdk-wit/wit",
        world: "transform-columnar",
        exports: { default: async },
        with: {
            "pipeline:transform/types": super::bindings::pipeline::transform::types,
            "pipeline:transform/host": super::bindings::pipeline::transform::host,
        },
    });
}

use bindings::exports::pipeline::transform::{batch_transformer, transformer};
pub use bindings::pipeline::transform::types::{Header, InputRecord, OutputRecord, TransformError};
use bindings_columnar::exports::pipeline::transform::columnar_transformer;
use bindings_v01::exports::pipeline::transform::{
    batch_transformer as batch_transformer_v01, transformer as transformer_v01,
};

/// Why one record did not produce outputs. `kind()` is what goes into the
/// dead-letter `pw.error.kind` header and the trap counters. Guest text in
/// it (a returned message, [`GuestOutput`]) is sanitized and bounded, so the
/// whole message fits [`text::MAX_ERROR_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("function failed: {0}")]
    Failed(String),
    #[error("out of fuel (limit {limit} per record){guest}")]
    OutOfFuel { limit: u64, guest: GuestOutput },
    #[error("wall-clock deadline of {deadline_ms} ms exceeded{guest}")]
    Deadline {
        deadline_ms: u64,
        guest: GuestOutput,
    },
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
    #[error("{count} outputs exceed max_outputs {limit}")]
    OutputCount { count: usize, limit: usize },
    /// A trap (a Rust panic is `unreachable`); `guest` is what the call
    /// wrote to stderr or logged at error level (the panic message).
    #[error("trap: {message}{guest}")]
    Trap { message: String, guest: GuestOutput },
    #[error("could not instantiate the function: {0}")]
    Instantiate(String),
    /// The producer or broker refused an output of this record (too large,
    /// invalid, topic gone or not authorized); the input is dead-lettered.
    #[error("an output was refused by the producer or broker: {0}")]
    ProduceRejected(String),
    /// `tombstones = "dead-letter"`.
    #[error("tombstone (null value) dead-lettered by the pipeline's tombstones = \"dead-letter\"")]
    Tombstone,
}

/// Every value of [`RecordError::kind`], for metrics.
pub const ERROR_KINDS: [&str; 13] = [
    "invalid-input",
    "failed",
    "fuel",
    "deadline",
    "memory",
    "stack",
    "output-size",
    "output-count",
    "unknown-topic",
    "trap",
    "instantiate",
    "produce-rejected",
    "tombstone",
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
            RecordError::OutputCount { .. } => "output-count",
            RecordError::UnknownTopic { .. } => "unknown-topic",
            RecordError::Trap { .. } => "trap",
            RecordError::Instantiate(_) => "instantiate",
            RecordError::ProduceRejected(_) => "produce-rejected",
            RecordError::Tombstone => "tombstone",
        }
    }

    /// Whether the call was stopped by one of the sandbox's caps (deadline,
    /// fuel, memory, stack, output size or count) rather than by the
    /// function's own answer or a plain trap. A function that hits a cap on
    /// every record costs up to the cap each time, so the quota module
    /// backs it off; a cheap failure (an error, a panic) it does not.
    pub fn is_resource_limit(&self) -> bool {
        matches!(
            self,
            RecordError::Deadline { .. }
                | RecordError::OutOfFuel { .. }
                | RecordError::Memory(_)
                | RecordError::StackOverflow(_)
                | RecordError::OutputTooLarge { .. }
                | RecordError::OutputCount { .. }
        )
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
    #[error("{origin}: targets {WORLD_PACKAGE}@{found}; this worker accepts {WORLD_PACKAGE} {WORLD_VERSION_REQ}")]
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
    /// The `pipeline:transform` version of that export, e.g. `0.1.0`.
    pub wit_version: String,
    pub limits: Limits,
    engine: Engine,
    pre: InstancePre<HostState>,
    exports: ExportIndices,
    log: Arc<GuestLog>,
    ticks_per_record: u64,
    /// Drives the load-time test instance and [`Function::instantiate_only`].
    rt: Rt,
    /// Keeps the ticker alive as long as a function may run.
    _ticker: Arc<EpochTicker>,
    /// Time the load took and whether the artifact came from the cache.
    pub load_report: LoadReport,
    /// Keeps the artifact from eviction while this version is loaded.
    _artifact: ArtifactPin,
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub from_cache: bool,
    pub load_ms: u128,
    pub exports_batch: bool,
    pub size_bytes: usize,
    /// Instance slots of this function's pooling allocator (`None` without
    /// pooling): what its address-space reservation scales with.
    pub pool_slots: Option<u32>,
}

/// Where the exports are, per WIT minor.
enum ExportIndices {
    V02 {
        single: transformer::GuestIndices,
        batch: Option<batch_transformer::GuestIndices>,
    },
    V01 {
        single: transformer_v01::GuestIndices,
        batch: Option<batch_transformer_v01::GuestIndices>,
    },
    Columnar {
        columnar: columnar_transformer::GuestIndices,
    },
}

impl ExportIndices {
    fn new(pre: &InstancePre<HostState>, shape: &Shape) -> wasmtime::Result<Self> {
        if shape.columnar {
            return Ok(Self::Columnar {
                columnar: columnar_transformer::GuestIndices::new(pre)?,
            });
        }
        Ok(match shape.minor {
            WitMinor::V0_2 => Self::V02 {
                single: transformer::GuestIndices::new(pre)?,
                batch: batch_transformer::GuestIndices::new(pre).ok(),
            },
            WitMinor::V0_1 => Self::V01 {
                single: transformer_v01::GuestIndices::new(pre)?,
                batch: batch_transformer_v01::GuestIndices::new(pre).ok(),
            },
        })
    }

    fn has_batch(&self) -> bool {
        match self {
            Self::V02 { batch, .. } => batch.is_some(),
            Self::V01 { batch, .. } => batch.is_some(),
            Self::Columnar { .. } => false,
        }
    }

    fn load(
        &self,
        store: &mut Store<HostState>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Self::V02 { single, batch } => Exports::V02 {
                single: single.load(&mut *store, instance)?,
                batch: batch
                    .as_ref()
                    .map(|b| b.load(&mut *store, instance))
                    .transpose()?,
            },
            Self::V01 { single, batch } => Exports::V01 {
                single: single.load(&mut *store, instance)?,
                batch: batch
                    .as_ref()
                    .map(|b| b.load(&mut *store, instance))
                    .transpose()?,
            },
            Self::Columnar { columnar } => Exports::Columnar {
                columnar: columnar.load(&mut *store, instance)?,
            },
        })
    }
}

/// The exports of one live instance.
enum Exports {
    V02 {
        single: transformer::Guest,
        batch: Option<batch_transformer::Guest>,
    },
    V01 {
        single: transformer_v01::Guest,
        batch: Option<batch_transformer_v01::Guest>,
    },
    Columnar {
        columnar: columnar_transformer::Guest,
    },
}

type GuestResult = Result<Vec<OutputRecord>, TransformError>;

impl Exports {
    async fn transform(
        &self,
        store: &mut Store<HostState>,
        input: &InputRecord,
    ) -> wasmtime::Result<GuestResult> {
        match self {
            Self::V02 { single, .. } => single.call_transform(store, input).await,
            Self::V01 { single, .. } => single
                .call_transform(store, &compat::input_to_v01(input))
                .await
                .map(compat::result_from_v01),
            // The runner calls a columnar function only through
            // `transform-columns` (`Runner::run_columnar`).
            Self::Columnar { .. } => Err(wasmtime::Error::msg(
                "a columnar function has no per-record export",
            )),
        }
    }

    /// `None` when the component has no batch export.
    async fn transform_batch(
        &self,
        store: &mut Store<HostState>,
        inputs: &[InputRecord],
    ) -> Option<wasmtime::Result<Vec<GuestResult>>> {
        Some(match self {
            Self::V02 { batch, .. } => batch.as_ref()?.call_transform_batch(store, inputs).await,
            Self::V01 { batch, .. } => {
                let batch = batch.as_ref()?;
                let old: Vec<_> = inputs.iter().map(compat::input_to_v01).collect();
                batch
                    .call_transform_batch(store, &old)
                    .await
                    .map(|rs| rs.into_iter().map(compat::result_from_v01).collect())
            }
            Self::Columnar { .. } => return None,
        })
    }
}

/// A tokio current-thread runtime (timers on) that drives async wasm calls.
/// Dropped with `shutdown_background`, which never blocks, so a `Function`
/// may be dropped anywhere, including inside the control API's async tasks.
struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    fn new() -> Result<Self, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| Rt(Some(rt)))
            .map_err(|e| format!("cannot create the sandbox's async runtime: {e}"))
    }

    /// Runs `fut` to completion, or fails it with [`RecordError::Deadline`]
    /// once `deadline` has passed (dropping the future, and with it any
    /// suspended wasm fiber).
    fn run<T>(
        &self,
        deadline: Duration,
        deadline_ms: u64,
        fut: impl Future<Output = Result<T, RecordError>>,
    ) -> Result<T, RecordError> {
        let rt = self
            .0
            .as_ref()
            .ok_or_else(|| RecordError::Instantiate("no async runtime".into()))?;
        rt.block_on(async {
            match tokio::time::timeout(deadline, fut).await {
                Ok(r) => r,
                Err(_) => Err(RecordError::Deadline {
                    deadline_ms,
                    guest: GuestOutput::default(),
                }),
            }
        })
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
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
    /// Callable from a plain thread or from `tokio::task::spawn_blocking`,
    /// not from inside an async task (it blocks on its own runtime).
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
        let cache::Loaded {
            component,
            from_cache,
            pin,
        } = sandbox
            .cache
            .load_or_compile(&engine, &digest, bytes)
            .map_err(|e| match e {
                cache::CacheError::Compile(reason) => LoadError::Compile {
                    origin: origin.into(),
                    reason,
                },
                other => LoadError::Cache(other.to_string()),
            })?;
        let shape = check_component_shape(&engine, &component, origin)?;

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
        let exports = ExportIndices::new(&pre, &shape).map_err(|e| LoadError::WrongWorld {
            origin: origin.into(),
            reason: format!("does not export {}: {e:#}", shape.export),
        })?;
        let tick = sandbox.epoch_tick_ms.max(1);
        let artifact_name = ArtifactCache::artifact_name(&engine, &digest);
        let version = match version {
            Some(v) => v.to_string(),
            None => digest.trim_start_matches("sha256:")[..12].to_string(),
        };
        let rt = Rt::new().map_err(|reason| LoadError::Instantiate {
            origin: origin.into(),
            reason,
        })?;
        let exports_batch = exports.has_batch();
        let function = Function {
            name: name.to_string(),
            digest,
            version,
            artifact_name,
            world: shape.export,
            wit_version: shape.version,
            limits: limits.clone(),
            engine,
            pre,
            exports,
            log: Arc::new(GuestLog::new(name)),
            ticks_per_record: limits.deadline_ms.div_ceil(tick).max(1),
            rt,
            _ticker: sandbox.ticker.clone(),
            _artifact: pin,
            load_report: LoadReport {
                from_cache,
                load_ms: 0,
                exports_batch,
                size_bytes: bytes.len(),
                pool_slots: sandbox
                    .pooling
                    .then(|| engine::pool_instances(sandbox.max_instances)),
            },
        };
        sandbox.ticker.register(&function.engine);
        function
            .instantiate_only()
            .map_err(|e| LoadError::Instantiate {
                origin: origin.into(),
                reason: e.to_string(),
            })?;
        Ok(Arc::new(Function {
            load_report: LoadReport {
                load_ms: started.elapsed().as_millis(),
                ..function.load_report.clone()
            },
            ..function
        }))
    }

    /// The one log line of a record that failed: where it came from, the
    /// function and version, the kind and the whole message (guest text in
    /// it already bounded), sanitized with newlines escaped so it stays one
    /// line. Rate-limited per function, so a function failing every record
    /// cannot flood the log (the dead letters and counters still hold all).
    pub fn log_record_error(
        &self,
        pipeline: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        err: &RecordError,
    ) {
        let Some(suppressed) = self.log.admit_failure() else {
            return;
        };
        if suppressed > 0 {
            tracing::warn!(pipeline, function = %self.name, suppressed, "failed-record log lines suppressed by the rate limit");
        }
        let error = text::sanitize(&err.to_string(), false);
        tracing::warn!(
            pipeline,
            topic,
            partition,
            offset,
            function = %self.name,
            function_version = %self.version,
            kind = err.kind(),
            error = %error,
            "record dead-lettered"
        );
    }

    pub fn exports_batch(&self) -> bool {
        self.exports.has_batch()
    }

    /// It exports `columnar-transformer`: it needs the pipeline's schema
    /// ([`Runner::with_schema`]) and cannot receive tombstones.
    pub fn is_columnar(&self) -> bool {
        matches!(self.exports, ExportIndices::Columnar { .. })
    }

    /// False for a `pipeline:transform@0.1` component: it cannot tell a null
    /// value from an empty one, so it must not be given tombstones
    /// (`tombstones = "function"`).
    pub fn accepts_null_values(&self) -> bool {
        !self.wit_version.starts_with("0.1.") && !self.is_columnar()
    }

    /// Creates and drops one instance (benchmarks, health probes), under the
    /// deadline.
    pub fn instantiate_only(&self) -> Result<(), RecordError> {
        self.rt
            .run(self.deadline(), self.limits.deadline_ms, async {
                self.instantiate().await.map(drop)
            })
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.limits.deadline_ms)
    }

    /// A fresh instance. Its start functions run under the per-record epoch
    /// deadline and fuel; the caller wraps this in the wall-clock timeout.
    async fn instantiate(&self) -> Result<Live, RecordError> {
        let mut store = Store::new(&self.engine, HostState::new(&self.limits, self.log.clone()));
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.hostcall_budget());
        // A guest may only run while the host has armed a deadline for a call.
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.ticks_per_record);
        if let Some(fuel) = self.limits.fuel {
            store
                .set_fuel(fuel)
                .map_err(|e| RecordError::Instantiate(format!("{e:#}")))?;
        }
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| classify(e, &self.limits))?;
        let exports = self
            .exports
            .load(&mut store, &instance)
            .map_err(|e| RecordError::Instantiate(format!("{e:#}")))?;
        Ok(Live { store, exports })
    }

    /// Hostcall fuel for every call, single or batch (see the module docs).
    fn hostcall_budget(&self) -> usize {
        self.limits
            .hostcall_fuel
            .max(self.limits.max_output_bytes.saturating_add(OUTPUT_SLACK))
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

impl SandboxOptions {
    /// The same options with the pool sized for `threads` sandbox threads:
    /// each function's pool reserves address space per slot (memory cap +
    /// guard per memory), so it is sized from the pipelines that run it,
    /// not from the largest concurrency of the process.
    pub fn sized_for(&self, threads: usize) -> SandboxOptions {
        SandboxOptions {
            max_instances: threads.clamp(1, u32::MAX as usize) as u32,
            ..self.clone()
        }
    }
}

struct Live {
    store: Store<HostState>,
    exports: Exports,
}

/// Per-call measurements for telemetry and `test` output.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallStats {
    pub fuel_consumed: u64,
    pub wasm_nanos: u64,
    pub instantiations: u32,
    pub instantiate_nanos: u64,
    /// Records whose call hit the deadline.
    pub deadline_hits: u64,
    /// Records whose call hit any resource cap, the deadline included
    /// ([`RecordError::is_resource_limit`]); the quota module backs off on them.
    pub resource_hits: u64,
}

pub type RecordResult = Result<Vec<OutputRecord>, RecordError>;

/// Bytes of record structure (topic names, header keys, list headers) allowed
/// on top of `max_output_bytes` when lifting results.
const OUTPUT_SLACK: usize = 64 * 1024;

/// Runs records through one function. One per sandbox thread; owns at most
/// one live instance, which serves up to `limits.instance_max_records`
/// records and is discarded after any trap or timeout (the next record gets
/// a fresh instance from the `InstancePre`). Owns the tokio current-thread
/// runtime its calls run on, so `run_batch` must be called from a plain
/// thread (or `spawn_blocking`), never from inside an async task.
pub struct Runner {
    function: Arc<Function>,
    pub stats: CallStats,
    /// The instance kept between batches, and how many records it served.
    live: Option<(Live, u64)>,
    rt: Result<Rt, String>,
    /// The pipeline's schema, for a columnar function.
    columnar: Option<columnar::Codec>,
}

impl Runner {
    pub fn new(function: Arc<Function>) -> Self {
        Self {
            function,
            stats: CallStats::default(),
            live: None,
            rt: Rt::new(),
            columnar: None,
        }
    }

    /// The pipeline's declared schema, which a columnar function's batches
    /// are decoded into (ignored by a per-record function).
    pub fn with_schema(mut self, schema: Option<arrow_schema::SchemaRef>) -> Self {
        self.columnar = schema.map(columnar::Codec::new);
        self
    }

    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    /// One result per input, in order.
    pub fn run_batch(&mut self, inputs: &[InputRecord]) -> Vec<RecordResult> {
        let results = self.run_batch_uncounted(inputs);
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            if e.is_resource_limit() {
                self.stats.resource_hits += 1;
                if matches!(e, RecordError::Deadline { .. }) {
                    self.stats.deadline_hits += 1;
                }
            }
        }
        results
    }

    fn run_batch_uncounted(&mut self, inputs: &[InputRecord]) -> Vec<RecordResult> {
        let f = self.function.clone();
        if let Err(e) = &self.rt {
            return inputs
                .iter()
                .map(|_| Err(RecordError::Instantiate(e.clone())))
                .collect();
        }
        if f.is_columnar() {
            return self.run_columnar(&f, inputs);
        }
        if inputs.len() > 1
            && f.exports.has_batch()
            && inputs.len() as u64 <= f.limits.instance_max_records
        {
            if let Some(results) = self.try_batch_call(&f, inputs) {
                return results;
            }
            // A trap or timeout inside a batch call cannot be pinned on a
            // record: replay them one by one in fresh instances so only the
            // culprit fails.
        }
        inputs
            .iter()
            .map(|input| self.call_one(&f, input))
            .collect()
    }

    /// The kept instance if it may serve `n` more records, else a fresh one
    /// (under its own deadline).
    fn checkout(&mut self, f: &Function, n: u64) -> Result<(Live, u64), RecordError> {
        if let Some((l, served)) = self.live.take() {
            if served + n <= f.limits.instance_max_records {
                return Ok((l, served));
            }
            // Spent: release its pool slot before taking another one.
            drop(l);
        }
        self.stats.instantiations += 1;
        let started = Instant::now();
        let live = self.block_on(f, f.instantiate());
        self.stats.instantiate_nanos += started.elapsed().as_nanos() as u64;
        live.map(|l| (l, 0))
    }

    /// Keeps the instance for the next call if it may serve another record;
    /// a spent one (always, with `instance_max_records = 1`) is dropped now,
    /// so nothing of the record it served stays in memory while the thread
    /// waits for the next one.
    fn keep(&mut self, f: &Function, live: Live, served: u64) {
        if served < f.limits.instance_max_records {
            self.live = Some((live, served));
        }
    }

    fn block_on<T>(
        &self,
        f: &Function,
        fut: impl Future<Output = Result<T, RecordError>>,
    ) -> Result<T, RecordError> {
        match &self.rt {
            Ok(rt) => rt.run(f.deadline(), f.limits.deadline_ms, fut),
            Err(e) => Err(RecordError::Instantiate(e.clone())),
        }
    }

    /// One deadline per call whatever its size; fuel per record.
    fn arm(&mut self, f: &Function, live: &mut Live, records: u64) -> Result<(), RecordError> {
        live.store.set_epoch_deadline(f.ticks_per_record);
        live.store.set_hostcall_fuel(f.hostcall_budget());
        if let Some(fuel) = f.limits.fuel {
            live.store
                .set_fuel(fuel.saturating_mul(records))
                .map_err(|e| RecordError::Trap {
                    message: format!("{e:#}"),
                    guest: GuestOutput::default(),
                })?;
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

    fn call_one(&mut self, f: &Function, input: &InputRecord) -> RecordResult {
        let (mut live, served) = self.checkout(f, 1)?;
        self.arm(f, &mut live, 1)?;
        live.store.data_mut().begin_call();
        let started = Instant::now();
        let result = self.block_on(f, async {
            let Live { store, exports } = &mut live;
            exports
                .transform(store, input)
                .await
                .map_err(|e| classify(e, &f.limits))
        });
        self.account(f, &live, 1, started);
        // Any error out of a call (a trap, a timeout that dropped the call
        // midway) leaves the instance in an unknown state: drop it, the next
        // record gets a fresh one.
        let r = match result {
            Ok(r) => {
                live.store.data_mut().end_call(CallEnd::Returned);
                r
            }
            Err(e) if e.takes_guest_output() => {
                let guest = live.store.data_mut().end_call(CallEnd::Failed);
                return Err(e.with_guest(guest));
            }
            Err(e) => {
                live.store.data_mut().end_call(CallEnd::Returned);
                return Err(e);
            }
        };
        self.keep(f, live, served + 1);
        guest_result(r, &f.limits)
    }

    fn try_batch_call(
        &mut self,
        f: &Function,
        inputs: &[InputRecord],
    ) -> Option<Vec<RecordResult>> {
        let n = inputs.len() as u64;
        let (mut live, served) = self.checkout(f, n).ok()?;
        self.arm(f, &mut live, n).ok()?;
        live.store.data_mut().begin_call();
        let started = Instant::now();
        let result = self.block_on(f, async {
            let Live { store, exports } = &mut live;
            match exports.transform_batch(store, inputs).await {
                Some(r) => r.map_err(|e| classify(e, &f.limits)),
                None => Err(RecordError::Instantiate("no batch export".into())),
            }
        });
        self.account(f, &live, n, started);
        match result {
            Ok(results) if results.len() == inputs.len() => {
                live.store.data_mut().end_call(CallEnd::Returned);
                self.keep(f, live, served + n);
                Some(
                    results
                        .into_iter()
                        .map(|r| guest_result(r, &f.limits))
                        .collect(),
                )
            }
            Ok(results) => {
                live.store.data_mut().end_call(CallEnd::Replayed);
                tracing::warn!(
                    function = %f.name,
                    expected = inputs.len(),
                    got = results.len(),
                    "batch export returned the wrong number of results; replaying one by one"
                );
                None
            }
            Err(_) => {
                // Replayed record by record: each record's text is captured
                // and logged once, by its own call.
                live.store.data_mut().end_call(CallEnd::Replayed);
                None
            }
        }
    }
}

fn guest_result(r: GuestResult, limits: &Limits) -> RecordResult {
    match r {
        Ok(outputs) => {
            if outputs.len() > limits.max_outputs {
                return Err(RecordError::OutputCount {
                    count: outputs.len(),
                    limit: limits.max_outputs,
                });
            }
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
        Err(TransformError::InvalidInput(m)) => Err(RecordError::InvalidInput(guest_message(&m))),
        Err(TransformError::Failed(m)) => Err(RecordError::Failed(guest_message(&m))),
    }
}

/// A message the guest returned (a Python traceback, a JS stack), sanitized
/// and bounded like captured output: the SDKs bound it already, a raw
/// component may not.
fn guest_message(m: &str) -> String {
    GuestOutput::new(m).as_str().to_string()
}

impl RecordError {
    /// Whether a failed call's captured text belongs in this error: the
    /// kinds that stop a guest mid-way (a panic is a trap). A memory or
    /// stack trap stops it at an instruction that printed nothing, and
    /// guest-returned errors say what the guest chose.
    fn takes_guest_output(&self) -> bool {
        matches!(
            self,
            RecordError::Trap { .. } | RecordError::Deadline { .. } | RecordError::OutOfFuel { .. }
        )
    }

    fn with_guest(self, out: GuestOutput) -> Self {
        match self {
            RecordError::Trap { message, .. } => RecordError::Trap {
                message,
                guest: out,
            },
            RecordError::Deadline { deadline_ms, .. } => RecordError::Deadline {
                deadline_ms,
                guest: out,
            },
            RecordError::OutOfFuel { limit, .. } => RecordError::OutOfFuel { limit, guest: out },
            other => other,
        }
    }

    /// What the guest wrote before a trap, deadline or fuel stop.
    pub fn guest_output(&self) -> Option<&GuestOutput> {
        match self {
            RecordError::Trap { guest, .. }
            | RecordError::Deadline { guest, .. }
            | RecordError::OutOfFuel { guest, .. } => Some(guest).filter(|g| !g.is_empty()),
            _ => None,
        }
    }
}

pub fn output_size(o: &OutputRecord) -> usize {
    o.value.as_ref().map_or(0, |v| v.len())
        + o.key.as_ref().map_or(0, |k| k.len())
        + o.headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

/// `E` anywhere in the error's chain (wasmtime may wrap a host error in
/// backtrace context).
fn find<E: std::error::Error + Send + Sync + 'static>(e: &wasmtime::Error) -> Option<&E> {
    e.downcast_ref::<E>()
        .or_else(|| e.chain().find_map(|c| c.downcast_ref::<E>()))
}

/// The message of wasmtime's hostcall-fuel error. Its type
/// (`HostcallFuelExhausted`, wasmtime/src/runtime/component/func/options.rs)
/// is private, so this is the one error recognised by its text.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Turns a wasmtime error into the record error the operator will see, by
/// the error's type: our limiter's [`LimitError`], then `wasmtime::Trap`.
fn classify(e: wasmtime::Error, limits: &Limits) -> RecordError {
    if let Some(limit) = find::<LimitError>(&e) {
        return RecordError::Memory(limit.to_string());
    }
    if let Some(trap) = find::<Trap>(&e) {
        return match trap {
            Trap::OutOfFuel => RecordError::OutOfFuel {
                limit: limits.fuel.unwrap_or(0),
                guest: GuestOutput::default(),
            },
            Trap::Interrupt => RecordError::Deadline {
                deadline_ms: limits.deadline_ms,
                guest: GuestOutput::default(),
            },
            Trap::StackOverflow => RecordError::StackOverflow(limits.max_stack_bytes),
            trap => {
                // The first line of `{e:#}` is mostly wasmtime's "error while
                // executing at wasm backtrace:" heading, which says nothing.
                let context = first_line(&format!("{e:#}"));
                let message = if context.is_empty() || context.starts_with("error while executing")
                {
                    trap.to_string()
                } else {
                    format!("{trap}: {context}")
                };
                RecordError::Trap {
                    message,
                    guest: GuestOutput::default(),
                }
            }
        };
    }
    let msg = format!("{e:#}");
    if e.chain()
        .any(|c| c.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
    {
        return RecordError::OutputTooLarge {
            size: None,
            limit: limits.max_output_bytes,
        };
    }
    RecordError::Trap {
        message: first_line(&msg),
        guest: GuestOutput::default(),
    }
}

/// Room left in [`text::MAX_ERROR_MESSAGE`] for a trap's own message, next
/// to the prefix and [`text::MAX_GUEST_TEXT`] of guest output.
const MAX_TRAP_LINE: usize = 512;

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    truncate(line, MAX_TRAP_LINE)
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
