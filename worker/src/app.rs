//! Top level: from a validated config to running pipelines, and back down on
//! SIGTERM. The only place that uses `anyhow`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::Producer as _;

use crate::config::{Config, DeliveryMode, PipelineConfig};
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
        let f = Function::load_file(
            &p.name,
            component,
            &p.limits,
            &opts.sized_for(p.concurrency),
        )
        .with_context(|| format!("pipelines[{i}].component ({})", component.display()))?;
        crate::pipeline::check_columnar(&p.name, Some(i), p.schema.is_some(), &f)?;
        tracing::info!(
            pipeline = %p.name,
            digest = %f.digest,
            size_bytes = f.load_report.size_bytes,
            from_cache = f.load_report.from_cache,
            load_ms = f.load_report.load_ms as u64,
            batch_export = f.load_report.exports_batch,
            pool_slots = f.load_report.pool_slots.unwrap_or(0),
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
        let telemetry = Arc::new(TelemetryState {
            ready_without_activation: config.telemetry.ready_without_activation,
            ..TelemetryState::default()
        });
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
        let quotas = crate::quota::Quotas::from_config(config);
        let mut pipelines = Vec::new();
        for (p, slot) in functions {
            let setup = exactly_once_setup(config, &p)?;
            let handle = pipeline::spawn(
                &p,
                &config.kafka,
                &config.runtime,
                slot.clone(),
                sink.clone(),
                shutdown.clone(),
                quotas.for_pipeline(&p),
                setup.as_ref(),
            )?;
            telemetry
                .pipelines
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(PipelineView {
                    name: handle.name.clone(),
                    group: handle.group.clone(),
                    tenant: p.tenant.clone(),
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

/// The transactional settings of an exactly-once pipeline; `None` for
/// at-least-once. Refused without a stable worker identity.
fn exactly_once_setup(
    config: &Config,
    p: &PipelineConfig,
) -> anyhow::Result<Option<pipeline::TxnSetup>> {
    if p.delivery != DeliveryMode::ExactlyOnce {
        return Ok(None);
    }
    let i = config
        .pipelines
        .iter()
        .position(|c| c.name == p.name)
        .unwrap_or_default();
    let registry_id = config
        .registry
        .as_ref()
        .and_then(|r| r.worker_id.as_deref());
    let Some(worker) = crate::kafka::worker_identity(&config.kafka, registry_id) else {
        anyhow::bail!(
            "pipelines[{i}].delivery = \"exactly-once\" needs a stable worker identity for its transactional.id: set kafka.worker_id (or registry.worker_id, or HOSTNAME)"
        );
    };
    Ok(Some(pipeline::TxnSetup {
        key: format!("pipelines[{i}].delivery"),
        transactional_id: crate::kafka::transactional_id(&config.kafka, p, &worker),
        interval: Duration::from_millis(p.transaction_interval_ms),
        max_records: p.transaction_max_records,
        timeouts: crate::txn::Timeouts::derive(
            crate::config::transaction_timeout_ms(
                config
                    .kafka
                    .librdkafka
                    .get("transaction.timeout.ms")
                    .and_then(|v| v.trim().parse().ok()),
                p.transaction_interval_ms,
            ),
            p.transaction_interval_ms,
            config.runtime.drain_timeout_ms,
        )
        .map_err(|e| anyhow::anyhow!("kafka.librdkafka.\"transaction.timeout.ms\": {e}"))?,
        message_max_bytes: config.message_max_bytes()?,
        output_topics: p.output_topics.clone(),
    }))
}

/// `pipeline-worker run`: until SIGTERM/SIGINT or a fatal error.
pub fn run(config: Config) -> anyhow::Result<()> {
    check_memory_budget(&config)?;
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
                    Function::load_file(
                        &p.name,
                        component,
                        &p.limits,
                        &opts.sized_for(p.concurrency),
                    )
                    .with_context(|| {
                        format!("pipelines[{i}].component ({})", component.display())
                    })?,
                );
            }
        }
        if let Some(f) = &f {
            crate::pipeline::check_columnar(&p.name, Some(i), p.schema.is_some(), f)?;
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

/// Refuses to start when the pipelines' worst-case memory exceeds the
/// budget (`run` and `validate`).
pub fn check_memory_budget(config: &Config) -> Result<(), crate::budget::BudgetError> {
    let shares = crate::budget::check(config)?;
    if let Some((budget, source)) = crate::budget::budget(config) {
        let total: u64 = shares.iter().map(|s| s.bytes).sum();
        tracing::info!(
            worst_case_mib = total >> 20,
            budget_mib = budget >> 20,
            budget_source = %source,
            "memory budget checked"
        );
    }
    Ok(())
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

/// The topics pipeline `i` declares, each with the config key that declares
/// it: outputs and dead-letter topic, and inputs when `inputs`.
fn declared_topics(i: usize, p: &PipelineConfig, inputs: bool) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if inputs {
        for (j, t) in p.input_topics.iter().enumerate() {
            out.push((format!("pipelines[{i}].input_topics[{j}]"), t.as_str()));
        }
    }
    for (j, t) in p.output_topics.iter().enumerate() {
        out.push((format!("pipelines[{i}].output_topics[{j}]"), t.as_str()));
    }
    out.push((
        format!("pipelines[{i}].dead_letter_topic"),
        p.dead_letter_topic.as_str(),
    ));
    out
}

fn auto_create_topics(config: &Config) -> bool {
    config
        .kafka
        .librdkafka
        .get("allow.auto.create.topics")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Fetches the cluster's metadata (all topics, not one by one: a metadata
/// request naming a topic can make a broker with auto.create.topics.enable
/// create it) and returns it with the `required` topics missing from it.
/// A topic created just before can take a moment to appear in every
/// broker's metadata, so missing ones are looked for again until `patience`;
/// nothing waits past `deadline`.
fn missing_topics<'a, C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    purpose: &str,
    required: &'a [(String, &'a str)],
    deadline: Instant,
    patience: Instant,
) -> anyhow::Result<(rdkafka::metadata::Metadata, Vec<&'a (String, &'a str)>)> {
    let fetch = || {
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        // The error's Display already names its code; as a source it would
        // be printed twice.
        client.fetch_metadata(None, timeout).map_err(|e| {
            anyhow::anyhow!(
                "kafka.brokers ({brokers}): cannot fetch cluster metadata {purpose}: {e}"
            )
        })
    };
    let missing = |m: &rdkafka::metadata::Metadata| {
        required
            .iter()
            .filter(|(_, t)| {
                !m.topics()
                    .iter()
                    .any(|x| x.name() == *t && x.error().is_none())
            })
            .collect::<Vec<_>>()
    };
    let mut metadata = fetch()?;
    let patience = patience.min(deadline);
    while !missing(&metadata).is_empty() && Instant::now() < patience {
        std::thread::sleep(Duration::from_millis(250));
        metadata = fetch()?;
    }
    let gone = missing(&metadata);
    Ok((metadata, gone))
}

/// One error naming every missing topic by its key.
fn missing_error(brokers: &str, missing: &[&(String, &str)]) -> anyhow::Error {
    let each: Vec<String> = missing
        .iter()
        .map(|(key, t)| format!("{key}: topic {t:?} does not exist on {brokers}"))
        .collect();
    anyhow::anyhow!(
        "{}; create {} first (the worker does not create topics)",
        each.join("; "),
        if missing.len() == 1 { "it" } else { "them" }
    )
}

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
    if auto_create_topics(config) {
        tracing::info!("allow.auto.create.topics is on; not checking that output topics exist");
        return Ok(());
    }
    let index = |p: &PipelineConfig| {
        config
            .pipelines
            .iter()
            .position(|c| c.name == p.name)
            .unwrap_or_default()
    };
    // A managed pipeline with nothing activated does not start (it joins no
    // group) until its first activation; its topics may be created before
    // that, so they are only warned about.
    let (running, waiting): (Vec<_>, Vec<_>) =
        pipelines.iter().partition(|(_, slot)| slot.get().is_some());
    let required: Vec<(String, &str)> = running
        .iter()
        .flat_map(|(p, _)| declared_topics(index(p), p, false))
        .collect();
    let optional: Vec<(String, &str)> = waiting
        .iter()
        .flat_map(|(p, _)| declared_topics(index(p), p, false))
        .collect();
    let now = Instant::now();
    let (metadata, missing) = missing_topics(
        sink.producer().client(),
        &config.kafka.brokers,
        "to check the output topics",
        &required,
        now + METADATA_TIMEOUT + TOPIC_PATIENCE,
        now + TOPIC_PATIENCE,
    )?;
    if !missing.is_empty() {
        return Err(missing_error(&config.kafka.brokers, &missing));
    }
    for (key, t) in &optional {
        let exists = metadata
            .topics()
            .iter()
            .any(|x| x.name() == *t && x.error().is_none());
        if !exists {
            tracing::warn!(key = %key, topic = %t, "declared topic does not exist; records this pipeline refuses or cannot deliver will stop the worker once it is activated");
        }
    }
    Ok(())
}

/// `validate` against the cluster: the brokers answer within `timeout` and
/// every declared topic (inputs, outputs, dead letters, of every pipeline)
/// exists. Returns what was checked, for the user.
pub fn check_cluster(config: &Config, timeout: Duration) -> anyhow::Result<String> {
    let client: rdkafka::consumer::BaseConsumer = crate::kafka::base_client_config(&config.kafka)
        .create()
        .context("creating a Kafka client for the broker check")?;
    let brokers = &config.kafka.brokers;
    let required: Vec<(String, &str)> = if auto_create_topics(config) {
        Vec::new()
    } else {
        config
            .pipelines
            .iter()
            .enumerate()
            .flat_map(|(i, p)| declared_topics(i, p, true))
            .collect()
    };
    let now = Instant::now();
    let (metadata, missing) = missing_topics(
        rdkafka::consumer::Consumer::client(&client),
        brokers,
        &format!("within {}", humantime::format_duration(timeout)),
        &required,
        now + timeout,
        now + TOPIC_PATIENCE.min(timeout),
    )?;
    if !missing.is_empty() {
        return Err(missing_error(brokers, &missing));
    }
    Ok(if auto_create_topics(config) {
        format!(
            "kafka.brokers {brokers}: {} broker(s) answered; topics not checked (allow.auto.create.topics is on)",
            metadata.brokers().len()
        )
    } else {
        format!(
            "kafka.brokers {brokers}: {} broker(s) answered; all {} declared topic(s) exist",
            metadata.brokers().len(),
            required.len()
        )
    })
}

/// Blocks until SIGTERM/SIGINT or a fatal error.
pub fn wait_for_stop(shutdown: &Shutdown) {
    wait_for_stop_then(shutdown, || {})
}

/// Like [`wait_for_stop`], calling `ready` once both signal handlers are
/// installed: a banner that says "Ctrl-C to stop" printed before that would
/// let an early SIGINT kill the process instead of draining it.
pub fn wait_for_stop_then(shutdown: &Shutdown, ready: impl FnOnce()) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        ready();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = tick.tick() => { if shutdown.stopping() { break; } }
            }
        }
    });
}
