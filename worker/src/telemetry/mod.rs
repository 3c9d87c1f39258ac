//! Health and metrics over HTTP: `/livez` (the process answers), `/readyz`
//! (every pipeline joined its group, components loaded, a broker reachable,
//! no pipeline thread dead, not draining) and `/metrics` (Prometheus text). Names follow the
//! OpenTelemetry messaging semantic conventions where one exists
//! (`messaging.client.consumed.messages` → `messaging_client_consumed_messages_total`).
//! Off unless `[telemetry] http_listen` is set: nothing on the hot path
//! depends on it, the counters are plain relaxed atomics either way.
//!
//! Metrics exposition (issue 10, point 5): every metric is declared once in
//! [`metrics`] (names, help, unit, labels, reader); prometheus-client writes
//! `/metrics` from a snapshot of those declarations and `otel` builds the
//! OTLP export from the same snapshot. Not the OpenTelemetry SDK with
//! opentelemetry-prometheus: that exporter is discontinued (protobuf
//! advisory), renames series, and the SDK takes no pre-aggregated histogram,
//! which would have put a lock per record on the hot path. Details in
//! [`metrics`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub mod metrics;
pub mod otel;

use crate::pipeline::FunctionSlot;
use crate::sandbox::ArtifactCache;
use crate::source::Trackers;
use crate::stats::PipelineStats;

#[derive(Clone)]
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
                    .route("/metrics", get(serve_metrics))
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

async fn serve_metrics(State(s): State<Arc<TelemetryState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], render(&s))
}

/// Prometheus text exposition of every declared metric (`metrics::WORKER`
/// and `metrics::CACHE`). Pipeline-level series (consumed, lag, in flight,
/// load failures) carry the pipeline labels; what a function did carries
/// `function` and `function_version` too, one series per version that ran
/// here.
pub fn render(s: &TelemetryState) -> String {
    metrics::prometheus_text(metrics::worker_families(s))
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
