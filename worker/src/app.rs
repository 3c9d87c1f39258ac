//! Top level: from a validated config to running pipelines, and back down on
//! SIGTERM. The only place that uses `anyhow`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::Producer as _;

use crate::config::{Config, PipelineConfig};
use crate::pipeline::{self, FunctionSlot, PipelineHandle, Shutdown};
use crate::registry::{self, activations::LogReader, Registry};
use crate::sandbox::{ArtifactCache, EpochTicker, Function, SandboxOptions};
use crate::sandbox::{CacheKey, CacheKeyError, CACHE_KEY_ENV};
use crate::sink::{FatalError, FatalKind, Sink};
use crate::telemetry::{self, otel, PipelineView, TelemetryState};

/// Fails only on an unusable cache key (too short, unreadable, or inside the
/// cache directory), naming its variable or config key.
pub fn sandbox_options(config: &Config) -> Result<SandboxOptions, CacheKeyError> {
    let max_threads: usize = config
        .pipelines
        .iter()
        .map(|p| p.concurrency)
        .max()
        .unwrap_or(1);
    let key = cache_key(
        config.runtime.cache_key_file.as_deref(),
        &config.runtime.cache_dir,
    )?;
    Ok(SandboxOptions {
        cache: ArtifactCache::new(&config.runtime.cache_dir)
            .with_max_bytes(config.runtime.cache_max_bytes)
            .with_key(key),
        ticker: EpochTicker::start(Duration::from_millis(config.runtime.epoch_tick_ms)),
        epoch_tick_ms: config.runtime.epoch_tick_ms,
        pooling: config.runtime.pooling,
        max_instances: max_threads as u32,
    })
}

/// The artifact cache key from the environment, `key_file` or the default
/// key file (see [`CacheKey::resolve`]).
pub fn cache_key(
    key_file: Option<&std::path::Path>,
    cache_dir: &std::path::Path,
) -> Result<CacheKey, CacheKeyError> {
    let env = std::env::var(CACHE_KEY_ENV).ok();
    CacheKey::resolve(env.as_deref(), key_file, cache_dir)
}

/// Loads (compiles or fetches from cache) every pipeline's component file.
/// Pipelines without one (managed by the registry) are skipped.
pub fn load_functions(
    config: &Config,
    opts: &SandboxOptions,
) -> anyhow::Result<Vec<(PipelineConfig, Arc<Function>)>> {
    let mut out = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let Some(component) = &p.component else {
            continue;
        };
        let f = Function::load_file(&p.name, component, &p.limits, opts)
            .with_context(|| format!("pipelines[{i}].component ({})", component.display()))?;
        tracing::info!(
            pipeline = %p.name,
            digest = %f.digest,
            size_bytes = f.load_report.size_bytes,
            from_cache = f.load_report.from_cache,
            load_ms = f.load_report.load_ms as u64,
            batch_export = f.load_report.exports_batch,
            "function loaded"
        );
        out.push((p.clone(), f));
    }
    Ok(out)
}

/// A running worker: its pipelines and the means to stop them.
pub struct Worker {
    pub shutdown: Arc<Shutdown>,
    pub pipelines: Vec<PipelineHandle>,
    pub telemetry: Arc<TelemetryState>,
    sink: Arc<Sink>,
}

impl Worker {
    pub fn start(
        config: &Config,
        functions: Vec<(PipelineConfig, Arc<Function>)>,
    ) -> anyhow::Result<Self> {
        Self::start_slots(
            config,
            functions
                .into_iter()
                .map(|(p, f)| (p, Arc::new(FunctionSlot::new(Some(f)))))
                .collect(),
        )
    }

    /// Starts pipelines whose functions may change (or not exist yet).
    pub fn start_slots(
        config: &Config,
        functions: Vec<(PipelineConfig, Arc<FunctionSlot>)>,
    ) -> anyhow::Result<Self> {
        let shutdown = Arc::new(Shutdown::default());
        let sink = Arc::new(
            Sink::create(
                &crate::kafka::producer_config(&config.kafka),
                shutdown.fatal.clone(),
                config.message_max_bytes()?,
            )
            .context("creating the Kafka producer")?,
        );
        check_output_topics(config, &functions, &sink)?;
        let telemetry = Arc::new(TelemetryState::default());
        if let Some(addr) = config.telemetry.http_listen {
            telemetry::serve(addr, telemetry.clone())
                .with_context(|| format!("telemetry.http_listen: cannot listen on {addr}"))?;
        }
        if let Some(endpoint) = otel::endpoint(config.telemetry.otlp_endpoint.as_deref()) {
            otel::init(
                &endpoint,
                telemetry.clone(),
                Duration::from_millis(config.telemetry.otlp_interval_ms),
                config.telemetry.trace_sample_ratio,
            )?;
        }
        let mut pipelines = Vec::new();
        for (p, slot) in functions {
            let handle = pipeline::spawn(
                &p,
                &config.kafka,
                &config.runtime,
                slot.clone(),
                sink.clone(),
                shutdown.clone(),
            )?;
            telemetry
                .pipelines
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(PipelineView {
                    name: handle.name.clone(),
                    group: handle.group.clone(),
                    slot,
                    stats: handle.stats.clone(),
                    trackers: handle.trackers.clone(),
                });
            pipelines.push(handle);
        }
        Ok(Self {
            shutdown,
            pipelines,
            telemetry,
            sink,
        })
    }

    pub fn request_stop(&self) {
        self.telemetry.draining.store(true, Ordering::Relaxed);
        self.shutdown.stop.store(true, Ordering::Relaxed);
    }

    /// Stops fetching, drains, commits. Returns the fatal error, if any.
    pub fn shutdown(self, drain_timeout: Duration) -> Option<String> {
        self.request_stop();
        let started = Instant::now();
        for p in self.pipelines {
            p.join();
        }
        self.sink.flush(
            drain_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(1)),
        );
        otel::shutdown();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "worker stopped"
        );
        self.shutdown.fatal.get()
    }
}

/// `pipeline-worker run`: until SIGTERM/SIGINT or a fatal error.
pub fn run(config: Config) -> anyhow::Result<()> {
    let mut opts = sandbox_options(&config)?;
    let Some(_) = &config.registry else {
        let functions = load_functions(&config, &opts)?;
        let worker = Worker::start(&config, functions)?;
        let _ = worker.telemetry.artifact_cache.set(opts.cache.clone());
        tracing::info!(pipelines = worker.pipelines.len(), brokers = %config.kafka.brokers, "worker running");
        return finish(worker, &config);
    };
    let reg = Registry::open(&config, &config.base_dir).context("registry")?;
    opts.cache = opts.cache.clone().with_remote(reg.remote_artifacts());
    let mut reader = LogReader::new(&config.kafka, reg.activations_topic())?;
    reader
        .catch_up(Duration::from_secs(30))
        .context("reading the activation log before starting")?;
    // The latest activation wins over the component file; a version that
    // cannot be loaded falls back to the file (if any) and is reported.
    let mut slots = Vec::new();
    let mut errors = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let active = reader
            .state()
            .get(&p.name)
            .filter(|a| registry::watcher::applies(a, p));
        let mut error = None;
        let mut f = None;
        if let Some(a) = active {
            match registry::watcher::load(&reg, a, p, &opts) {
                Ok(loaded) => f = Some(loaded),
                Err(e) => {
                    tracing::error!(pipeline = %p.name, version = a.current.version, error = %e, "activated version failed to load");
                    error = Some(e);
                }
            }
        }
        if f.is_none() {
            if let Some(component) = &p.component {
                f = Some(
                    Function::load_file(&p.name, component, &p.limits, &opts).with_context(
                        || format!("pipelines[{i}].component ({})", component.display()),
                    )?,
                );
            }
        }
        let slot = Arc::new(FunctionSlot::new(f));
        if let Some(e) = &error {
            slot.record_failure(e.clone());
        }
        errors.push((active.cloned(), error));
        slots.push((p.clone(), slot));
    }
    let worker = Worker::start_slots(&config, slots.clone())?;
    let _ = worker.telemetry.artifact_cache.set(opts.cache.clone());
    let mut retry = Vec::new();
    for ((p, slot), (active, error)) in slots.iter().zip(errors) {
        if let (Some(a), Some(_)) = (&active, &error) {
            retry.push(a.clone());
        }
        registry::watcher::report(&reg, p, slot, active.as_ref(), error);
    }
    let watcher = registry::watcher::spawn(
        reg.clone(),
        reader,
        slots,
        opts.clone(),
        worker.shutdown.clone(),
        retry,
    );
    tracing::info!(pipelines = worker.pipelines.len(), brokers = %config.kafka.brokers, worker_id = %reg.worker_id, "worker running");
    let result = finish(worker, &config);
    let _ = watcher.join();
    result
}

/// `pipeline-worker control`: only the upload/activation API.
pub fn control(config: Config) -> anyhow::Result<()> {
    let Some(c) = &config.control else {
        anyhow::bail!(
            "config key `control`: missing; add a [control] section with listen and tenants"
        );
    };
    let reg = Registry::open(&config, &config.base_dir).context("registry")?;
    let opts = sandbox_options(&config)?;
    let bound = registry::api::serve(reg.clone(), &config, opts)
        .with_context(|| format!("control.listen: cannot listen on {}", c.listen))?;
    tracing::info!(%bound, store = %reg.store.describe(), "control API listening");
    wait_for_stop(&Shutdown::default());
    Ok(())
}

/// Until SIGTERM/SIGINT or a fatal error; a fatal error comes back as a
/// [`FatalError`], which `main` maps to its exit code.
fn finish(worker: Worker, config: &Config) -> anyhow::Result<()> {
    wait_for_stop(&worker.shutdown);
    let fatal = worker.shutdown.fatal.clone();
    let stats: Vec<_> = worker
        .pipelines
        .iter()
        .map(|p| (p.name.clone(), p.stats.clone()))
        .collect();
    worker.shutdown(Duration::from_millis(config.runtime.drain_timeout_ms));
    // A dead thread is its own exit code, whichever error was set first.
    let dead = stats.iter().find_map(|(name, s)| {
        s.dead_thread()
            .map(|why| format!("pipeline {name}: a thread died: {why}"))
    });
    match (dead, fatal.error()) {
        (Some(message), _) => Err(anyhow::Error::new(FatalError {
            kind: FatalKind::ThreadDied,
            message,
        })),
        (None, Some(e)) => Err(anyhow::Error::new(e)),
        (None, None) => Ok(()),
    }
}

/// How long start-up waits for the cluster's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// How long start-up waits for a missing output topic to appear.
const TOPIC_PATIENCE: Duration = Duration::from_secs(5);

/// Refuses to start when a declared output or dead-letter topic does not
/// exist: producing to it would either fail every record or, with broker
/// auto-creation, create a topic nobody configured. Skipped only when the
/// operator turned `allow.auto.create.topics` on for the worker.
fn check_output_topics(
    config: &Config,
    pipelines: &[(PipelineConfig, Arc<FunctionSlot>)],
    sink: &Sink,
) -> anyhow::Result<()> {
    if pipelines.is_empty() {
        return Ok(());
    }
    let auto_create = config
        .kafka
        .librdkafka
        .get("allow.auto.create.topics")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if auto_create {
        tracing::info!("allow.auto.create.topics is on; not checking that output topics exist");
        return Ok(());
    }
    // All topics, not one by one: a metadata request naming a topic can make
    // a broker with auto.create.topics.enable create it.
    let fetch = || {
        sink.producer()
            .client()
            .fetch_metadata(None, METADATA_TIMEOUT)
            .with_context(|| {
                format!(
                    "kafka.brokers ({}): cannot fetch cluster metadata to check the output topics",
                    config.kafka.brokers
                )
            })
    };
    let has = |m: &rdkafka::metadata::Metadata, t: &str| {
        m.topics()
            .iter()
            .any(|x| x.name() == t && x.error().is_none())
    };
    let required: Vec<&String> = pipelines
        .iter()
        .filter(|(_, slot)| slot.get().is_some())
        .flat_map(|(p, _)| {
            p.output_topics
                .iter()
                .chain(std::iter::once(&p.dead_letter_topic))
        })
        .collect();
    // A topic created just before start-up can take a moment to appear in
    // every broker's metadata: look again for a few seconds before refusing.
    let mut metadata = fetch()?;
    let patience = Instant::now() + TOPIC_PATIENCE;
    while required.iter().any(|t| !has(&metadata, t)) && Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(250));
        metadata = fetch()?;
    }
    let exists = |t: &str| has(&metadata, t);
    for (p, slot) in pipelines {
        if slot.get().is_none() {
            // A managed pipeline with nothing activated does not start (it
            // joins no group) until its first activation; its topics may be
            // created before that.
            let missing: Vec<&String> = p
                .output_topics
                .iter()
                .chain(std::iter::once(&p.dead_letter_topic))
                .filter(|t| !exists(t))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(pipeline = %p.name, topics = ?missing, "declared topics do not exist; records this pipeline refuses or cannot deliver will stop the worker once it is activated");
            }
            continue;
        }
        let i = config
            .pipelines
            .iter()
            .position(|c| c.name == p.name)
            .unwrap_or_default();
        for (j, t) in p.output_topics.iter().enumerate() {
            if !exists(t) {
                anyhow::bail!(
                    "pipelines[{i}].output_topics[{j}]: topic {t:?} does not exist on {}; create it first (the worker does not create topics)",
                    config.kafka.brokers
                );
            }
        }
        let t = &p.dead_letter_topic;
        if !exists(t) {
            anyhow::bail!(
                "pipelines[{i}].dead_letter_topic: topic {t:?} does not exist on {}; create it first (the worker does not create topics)",
                config.kafka.brokers
            );
        }
    }
    Ok(())
}

/// Blocks until SIGTERM/SIGINT or a fatal error.
pub fn wait_for_stop(shutdown: &Shutdown) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); break; }
                _ = tick.tick() => { if shutdown.stopping() { break; } }
            }
        }
    });
}
