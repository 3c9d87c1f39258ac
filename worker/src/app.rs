//! Top level: from a validated config to running pipelines, and back down on
//! SIGTERM. The only place that uses `anyhow`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::ThreadedProducer;

use crate::config::{Config, PipelineConfig};
use crate::pipeline::{self, Control, PipelineHandle};
use crate::sandbox::{ArtifactCache, EpochTicker, Function, SandboxOptions};
use crate::sink::{Sink, SinkContext};
use crate::telemetry::{self, PipelineView, TelemetryState};

pub fn sandbox_options(config: &Config) -> SandboxOptions {
    let max_threads: usize = config
        .pipelines
        .iter()
        .map(|p| p.concurrency)
        .max()
        .unwrap_or(1);
    SandboxOptions {
        cache: ArtifactCache::new(&config.runtime.cache_dir),
        ticker: EpochTicker::start(Duration::from_millis(config.runtime.epoch_tick_ms)),
        epoch_tick_ms: config.runtime.epoch_tick_ms,
        pooling: config.runtime.pooling,
        max_instances: max_threads as u32,
    }
}

/// Loads (compiles or fetches from cache) every pipeline's component.
pub fn load_functions(
    config: &Config,
    opts: &SandboxOptions,
) -> anyhow::Result<Vec<(PipelineConfig, Arc<Function>)>> {
    let mut out = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let f = Function::load_file(&p.name, &p.component, &p.limits, opts)
            .with_context(|| format!("pipelines[{i}].component ({})", p.component.display()))?;
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
    pub control: Arc<Control>,
    pub pipelines: Vec<PipelineHandle>,
    pub telemetry: Arc<TelemetryState>,
    sink: Arc<Sink>,
}

impl Worker {
    pub fn start(
        config: &Config,
        functions: Vec<(PipelineConfig, Arc<Function>)>,
    ) -> anyhow::Result<Self> {
        let control = Arc::new(Control::default());
        let producer: ThreadedProducer<SinkContext> = pipeline::producer_config(&config.kafka)
            .create_with_context(SinkContext {
                fatal: control.fatal.clone(),
            })
            .context("creating the Kafka producer")?;
        let sink = Arc::new(Sink::new(producer, control.fatal.clone()));
        let telemetry = Arc::new(TelemetryState::default());
        if let Some(addr) = config.telemetry.http_listen {
            telemetry::serve(addr, telemetry.clone())
                .with_context(|| format!("telemetry.http_listen: cannot listen on {addr}"))?;
        }
        let mut pipelines = Vec::new();
        for (p, f) in functions {
            let handle = pipeline::spawn(
                &p,
                &config.kafka,
                &config.runtime,
                f.clone(),
                sink.clone(),
                control.clone(),
            )?;
            telemetry
                .pipelines
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(PipelineView {
                    name: handle.name.clone(),
                    group: handle.group.clone(),
                    function_digest: f.digest.clone(),
                    stats: handle.stats.clone(),
                    trackers: handle.trackers.clone(),
                });
            pipelines.push(handle);
        }
        Ok(Self {
            control,
            pipelines,
            telemetry,
            sink,
        })
    }

    pub fn request_stop(&self) {
        self.telemetry.draining.store(true, Ordering::Relaxed);
        self.control.stop.store(true, Ordering::Relaxed);
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
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "worker stopped"
        );
        self.control.fatal.get()
    }
}

/// `pipeline-worker run`: until SIGTERM/SIGINT or a fatal error.
pub fn run(config: Config) -> anyhow::Result<()> {
    let opts = sandbox_options(&config);
    let functions = load_functions(&config, &opts)?;
    let worker = Worker::start(&config, functions)?;
    tracing::info!(pipelines = worker.pipelines.len(), brokers = %config.kafka.brokers, "worker running");
    wait_for_stop(&worker.control);
    if let Some(e) = worker.shutdown(Duration::from_millis(config.runtime.drain_timeout_ms)) {
        anyhow::bail!("stopped on a fatal error: {e}");
    }
    Ok(())
}

/// Blocks until SIGTERM/SIGINT or a fatal error.
pub fn wait_for_stop(control: &Control) {
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
                _ = tick.tick() => { if control.stopping() { break; } }
            }
        }
    });
}
