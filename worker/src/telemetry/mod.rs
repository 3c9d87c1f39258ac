//! Health and metrics over HTTP: `/livez` (the process answers), `/readyz`
//! (every pipeline joined its group, components loaded, a broker reachable,
//! no pipeline thread dead, not draining) and `/metrics` (Prometheus text). Names follow the
//! OpenTelemetry messaging semantic conventions where one exists
//! (`messaging.client.consumed.messages` → `messaging_client_consumed_messages_total`).
//! Off unless `[telemetry] http_listen` is set: nothing on the hot path
//! depends on it, the counters are plain relaxed atomics either way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub mod otel;

use crate::pipeline::FunctionSlot;
use crate::sandbox::{ArtifactCache, CacheStats, ERROR_KINDS};
use crate::source::Trackers;
pub use crate::stats::{Histogram, BUCKETS};
use crate::stats::{PipelineStats, VersionStats};

pub struct PipelineView {
    pub name: String,
    pub group: String,
    /// The tenant of a registry-managed pipeline (named while it waits for
    /// its first activation).
    pub tenant: Option<String>,
    pub slot: Arc<FunctionSlot>,
    pub stats: Arc<PipelineStats>,
    pub trackers: Arc<Trackers>,
}

#[derive(Default)]
pub struct TelemetryState {
    pub pipelines: std::sync::RwLock<Vec<PipelineView>>,
    pub draining: AtomicBool,
    /// `telemetry.ready_without_activation`: a pipeline waiting for its
    /// first activation does not hold readiness back.
    pub ready_without_activation: bool,
    /// The process's artifact cache, for its size and eviction metrics.
    pub artifact_cache: std::sync::OnceLock<ArtifactCache>,
}

impl TelemetryState {
    /// Why the worker is not ready, or empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.draining.load(Ordering::Relaxed) {
            why.push("draining".to_string());
        }
        let ps = self.pipelines.read().unwrap_or_else(|p| p.into_inner());
        if ps.is_empty() {
            why.push("no pipeline started yet".into());
        }
        for p in ps.iter() {
            if let Some(dead) = p.stats.dead_thread() {
                // The process is exiting on it; say which pipeline and why.
                why.push(format!("pipeline {}: {dead}", p.name));
                continue;
            }
            if p.slot.get().is_none() {
                // It has joined no group and processes nothing: traffic sent
                // to this worker for it would wait, so it is not ready unless
                // the operator said a rollout may go on without it.
                if !self.ready_without_activation {
                    let tenant = p
                        .tenant
                        .as_deref()
                        .map(|t| format!(" (tenant {t})"))
                        .unwrap_or_default();
                    why.push(format!(
                        "pipeline {}{tenant} waits for its first activation",
                        p.name
                    ));
                }
                continue;
            }
            if !p.stats.joined.load(Ordering::Relaxed) {
                why.push(format!(
                    "pipeline {} has not joined group {}",
                    p.name, p.group
                ));
            } else if !p.stats.broker_up.load(Ordering::Relaxed) {
                why.push(format!("pipeline {}: no broker reachable", p.name));
            }
        }
        why
    }
}

/// Serves until the process exits, on its own thread.
pub fn serve(addr: SocketAddr, state: Arc<TelemetryState>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("telemetry-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("telemetry runtime");
            rt.block_on(async move {
                let app = Router::new()
                    .route("/livez", get(|| async { "ok\n" }))
                    .route("/readyz", get(readyz))
                    .route("/metrics", get(metrics))
                    .with_state(state);
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "telemetry server stopped");
                }
            });
        })?;
    tracing::info!(%bound, "serving /livez /readyz /metrics");
    Ok(bound)
}

async fn readyz(State(s): State<Arc<TelemetryState>>) -> impl IntoResponse {
    let why = s.not_ready();
    if why.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
    }
}

async fn metrics(State(s): State<Arc<TelemetryState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&s),
    )
}

/// Prometheus text exposition of every pipeline's counters. Pipeline-level
/// series (consumed, lag, in flight, load failures) carry the pipeline
/// labels; what a function did carries `function` and `function_version` too,
/// one series per version that ran here.
pub fn render(s: &TelemetryState) -> String {
    let ps = s.pipelines.read().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let l = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let base = |p: &PipelineView| {
        format!(
            "messaging_system=\"kafka\",messaging_consumer_group_name=\"{}\",pipeline=\"{}\"",
            p.group, p.name
        )
    };
    let versions: Vec<(String, Arc<VersionStats>)> = ps
        .iter()
        .flat_map(|p| {
            let b = base(p);
            p.stats.versions().into_iter().map(move |v| {
                (
                    format!(
                        "{b},function=\"{}\",function_version=\"{}\"",
                        v.function, v.version
                    ),
                    v,
                )
            })
        })
        .collect();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_version = |pick: fn(&VersionStats) -> &std::sync::atomic::AtomicU64| {
        versions
            .iter()
            .map(|(labels, v)| (labels.clone(), pick(v).load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
    };
    family(
        "messaging_client_consumed_messages_total",
        "counter",
        "Records consumed from the input topics.",
        ps.iter().map(|p| (base(p), l(&p.stats.consumed))).collect(),
    );
    family(
        "messaging_client_sent_messages_total",
        "counter",
        "Output records handed to the producer (dead letters not included).",
        per_version(|v| &v.produced),
    );
    family(
        "pipeline_records_filtered_total",
        "counter",
        "Input records for which the function returned no output.",
        per_version(|v| &v.filtered),
    );
    family(
        "pipeline_records_dead_lettered_total",
        "counter",
        "Input records sent to the dead-letter topic, by error kind.",
        versions
            .iter()
            .flat_map(|(labels, v)| {
                ERROR_KINDS.iter().enumerate().map(move |(i, k)| {
                    (
                        format!("{labels},error_kind=\"{k}\""),
                        v.errors_by_kind[i].load(Ordering::Relaxed),
                    )
                })
            })
            .collect(),
    );
    family(
        "pipeline_traps_total",
        "counter",
        "Records whose function trapped or hit a limit (fuel, deadline, memory, stack, output size, instantiation).",
        per_version(|v| &v.traps),
    );
    family(
        "pipeline_fuel_consumed_total",
        "counter",
        "Wasm fuel consumed (only when limits.fuel is set).",
        per_version(|v| &v.fuel_consumed),
    );
    family(
        "pipeline_wasm_execution_nanoseconds_total",
        "counter",
        "Time spent inside the function.",
        per_version(|v| &v.wasm_nanos),
    );
    family(
        "pipeline_instantiations_total",
        "counter",
        "Fresh instances created (one per batch, plus one after each trap).",
        per_version(|v| &v.instantiations),
    );
    family(
        "pipeline_instantiation_nanoseconds_total",
        "counter",
        "Time spent creating instances (divide by pipeline_instantiations_total for the mean).",
        per_version(|v| &v.instantiate_nanos),
    );
    family(
        "pipeline_in_flight_records",
        "gauge",
        "Records consumed and not yet fully acknowledged downstream.",
        ps.iter()
            .map(|p| (base(p), p.trackers.in_flight() as u64))
            .collect(),
    );
    family(
        "pipeline_function_load_failures_total",
        "counter",
        "Activated versions this worker could not load (it kept the previous one).",
        ps.iter()
            .map(|p| (base(p), l(&p.slot.load_failures)))
            .collect(),
    );
    family(
        "pipeline_function_info",
        "gauge",
        "The function version each pipeline runs on this worker now (value 1).",
        ps.iter()
            .filter_map(|p| {
                p.slot.get().map(|f| {
                    (
                        format!(
                            "{},function=\"{}\",function_version=\"{}\",function_digest=\"{}\"",
                            base(p),
                            f.name,
                            f.version,
                            f.digest
                        ),
                        1,
                    )
                })
            })
            .collect(),
    );
    for (name, help, pick) in [
        (
            "pipeline_transactions_committed_total",
            "Exactly-once pipelines: transactions committed.",
            (|p: &PipelineView| p.stats.transactions.committed.load(Ordering::Relaxed))
                as fn(&PipelineView) -> u64,
        ),
        (
            "pipeline_transactions_aborted_total",
            "Exactly-once pipelines: transactions aborted (and their partitions rewound).",
            |p: &PipelineView| p.stats.transactions.aborted.load(Ordering::Relaxed),
        ),
        (
            "pipeline_transaction_commit_microseconds_total",
            "Exactly-once pipelines: time spent committing (divide by pipeline_transactions_committed_total for the mean).",
            |p: &PipelineView| p.stats.transactions.commit_micros.load(Ordering::Relaxed),
        ),
    ] {
        family(name, "counter", help, ps.iter().map(|p| (base(p), pick(p))).collect());
    }
    let mut lag_rows = Vec::new();
    for p in ps.iter() {
        let lag = p.stats.lag.lock().unwrap_or_else(|e| e.into_inner());
        for ((topic, part), v) in lag.iter() {
            lag_rows.push((
                format!("{},messaging_destination_name=\"{topic}\",messaging_destination_partition_id=\"{part}\"", base(p)),
                (*v).max(0) as u64,
            ));
        }
    }
    family(
        "messaging_kafka_consumer_lag",
        "gauge",
        "Records between the committed position and the partition end, per assigned partition (librdkafka statistics).",
        lag_rows,
    );
    for (name, help, pick) in [
        (
            "messaging_process_duration_seconds",
            "Per record: from its batch entering the sandbox to its outputs being handed to the producer.",
            (|v: &VersionStats| &v.process_duration) as fn(&VersionStats) -> &Histogram,
        ),
        (
            "pipeline_wasm_execution_seconds",
            "Time inside the function per batch of records (one observation per batch).",
            |v: &VersionStats| &v.wasm_duration,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (labels, v) in &versions {
            pick(v).render(&mut out, name, labels);
        }
    }
    render_throttled(&mut out, &ps);
    if let Some(cache) = s.artifact_cache.get() {
        render_artifact_cache(&mut out, &cache.stats());
    }
    out
}

/// Seconds each pipeline's sandbox threads were held by its tenant's quota
/// or the deadline backoff (summed over threads), by reason.
fn render_throttled(out: &mut String, ps: &[PipelineView]) {
    let name = "pipeline_throttled_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time the pipeline's sandbox threads spent paused by the tenant's quota (records, bytes, cpu) or the deadline backoff, summed over its threads.\n# TYPE {name} counter"
    );
    for p in ps {
        for r in crate::stats::ThrottleReason::ALL {
            let _ = writeln!(
                out,
                "{name}{{messaging_system=\"kafka\",messaging_consumer_group_name=\"{}\",pipeline=\"{}\",tenant=\"{}\",reason=\"{}\"}} {}",
                p.group,
                p.name,
                p.tenant.as_deref().unwrap_or(""),
                r.label(),
                p.stats.throttled_seconds_by(r)
            );
        }
    }
}

/// The artifact cache's series, process-wide (no pipeline labels); the
/// control plane's `/metrics` renders them too.
pub fn render_artifact_cache(out: &mut String, c: &CacheStats) {
    for (name, kind, help, v) in [
        (
            "pipeline_artifact_cache_size_bytes",
            "gauge",
            "Bytes of precompiled artifacts in runtime.cache_dir, as last measured by this process.",
            c.size_bytes,
        ),
        (
            "pipeline_artifact_cache_limit_bytes",
            "gauge",
            "runtime.cache_max_bytes; the size exceeds it only when artifacts in use alone do.",
            c.limit_bytes,
        ),
        (
            "pipeline_artifact_cache_evictions_total",
            "counter",
            "Artifacts this process evicted (least recently used first) to stay within runtime.cache_max_bytes.",
            c.evictions,
        ),
        (
            "pipeline_artifact_cache_over_limit",
            "gauge",
            "1 when the artifacts in use alone exceeded runtime.cache_max_bytes at the last write.",
            u64::from(c.over_limit),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    let name = "pipeline_artifact_cache_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} Cached artifacts not loaded, each recompiled instead: hash-mismatch (tampered or corrupt), bad-mac (its sidecar does not verify with this cache key: tampered, or another key), unknown-hash (no sidecar, nothing trusted vouches for it).\n# TYPE {name} counter"
    );
    let _ = writeln!(
        out,
        "{name}{{reason=\"hash-mismatch\"}} {}",
        c.rejected_mismatch
    );
    let _ = writeln!(out, "{name}{{reason=\"bad-mac\"}} {}", c.rejected_bad_mac);
    let _ = writeln!(
        out,
        "{name}{{reason=\"unknown-hash\"}} {}",
        c.rejected_unknown
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, slot: Option<Arc<crate::sandbox::Function>>) -> PipelineView {
        PipelineView {
            name: name.into(),
            group: format!("g.{name}"),
            tenant: Some("acme".into()),
            slot: Arc::new(FunctionSlot::new(slot)),
            stats: Arc::default(),
            trackers: Arc::default(),
        }
    }

    #[test]
    fn a_pipeline_waiting_for_activation_is_not_ready() {
        let s = TelemetryState::default();
        s.pipelines.write().unwrap().push(view("p", None));
        assert_eq!(
            s.not_ready(),
            vec!["pipeline p (tenant acme) waits for its first activation".to_string()]
        );
    }

    #[test]
    fn ready_without_activation_lets_it_pass() {
        let s = TelemetryState {
            ready_without_activation: true,
            ..Default::default()
        };
        s.pipelines.write().unwrap().push(view("p", None));
        assert!(s.not_ready().is_empty(), "{:?}", s.not_ready());
        s.draining.store(true, Ordering::Relaxed);
        assert_eq!(s.not_ready(), vec!["draining".to_string()]);
    }
}
