//! The control API: uploads, versions, activations and rollbacks, per
//! tenant. Served by `pipeline-worker control` (or inside `run` when
//! `[control]` is set). Every request carries `Authorization: Bearer
//! <token>`; the token names the tenant, and a tenant sees and changes only
//! its own functions and pipelines. Every rejection is a 4xx with a JSON
//! body `{"error": {"code": ..., "message": ...}}`; a rejected upload
//! stores nothing.
//!
//! ```text
//! POST   /v1/functions/{name}/versions          body: the component → 201 manifest
//! GET    /v1/functions                          the tenant's functions
//! GET    /v1/functions/{name}                   its versions, and where each is active
//! GET    /v1/functions/{name}/versions/{v}
//! DELETE /v1/functions/{name}/versions/{v}      409 while active
//! GET    /v1/pipelines                          the tenant's pipelines, active version, workers
//! GET    /v1/pipelines/{p}
//! POST   /v1/pipelines/{p}/activate             {"function": ..., "version": n?} → 202
//! POST   /v1/pipelines/{p}/rollback             → 202, or 409 with nothing to roll back to
//! GET    /metrics                               Prometheus text, no token (see metrics.rs)
//! ```

//! Split by concern: [`auth`] (tokens, checked before any body byte),
//! [`upload`] (admission, compile queue and timeout, store), [`staging`]
//! (the body, streamed to a file), [`routes`]
//! (everything else); this module holds the shared state and the server.

mod auth;
mod routes;
mod staging;
mod upload;

pub use upload::FAULT_HOLD_COMPILE;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::activations::{ActivationState, LogReader, LogWriter};
use super::metrics::ControlMetrics;
use super::store::VersionManifest;
use super::Registry;
use crate::config::{valid_name, Config, Limits, PipelineConfig};
use crate::sandbox::{LoadError, SandboxOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("config key `control.tenants[{index}].token_env`: environment variable {var} is not set or empty")]
    TokenEnv { index: usize, var: String },
    #[error("upload staging directory {dir}: {source}")]
    Staging { dir: String, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Log(#[from] super::activations::LogError),
}

/// An API error: status, a stable machine-readable code, a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, for a 429.
    retry_after: Option<u64>,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, error = %self.message, "control API error");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, error = %self.message, "control API request rejected");
        }
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut r = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"pipeline-worker\""),
            );
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        r
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    err(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

type ApiResult<T> = Result<T, ApiError>;

struct Api {
    reg: Arc<Registry>,
    pipelines: Vec<PipelineConfig>,
    tokens: auth::Tokens,
    max_bytes: usize,
    body_timeout: Duration,
    /// Where upload bodies are streamed to (see [`staging`]).
    staging: std::path::PathBuf,
    opts: SandboxOptions,
    writer: LogWriter,
    reader: Mutex<LogReader>,
    /// Upload admission (concurrency, rate) and the compile queues.
    gate: upload::Gate,
    /// Activations are read-modify-write of the log: one at a time.
    mutate: tokio::sync::Mutex<()>,
    metrics: ControlMetrics,
}

/// Binds now (so a bad address fails start-up) and serves on the registry's
/// runtime until the process exits.
pub fn serve(
    reg: Arc<Registry>,
    config: &Config,
    opts: SandboxOptions,
) -> Result<SocketAddr, ServeError> {
    let control = config
        .control
        .as_ref()
        .expect("serve needs a [control] section");
    let writer = LogWriter::new(&config.kafka, reg.activations_topic())?;
    let reader = LogReader::new(&config.kafka, reg.activations_topic())?;
    let staging = staging::dir(reg.store.local_dir(), opts.cache.dir());
    let swept = staging::prepare(&staging).map_err(|e| ServeError::Staging {
        dir: staging.display().to_string(),
        source: e,
    })?;
    if swept > 0 {
        tracing::info!(dir = %staging.display(), files = swept, "removed upload bodies left by an earlier control plane");
    }
    let api = Arc::new(Api {
        reg: reg.clone(),
        pipelines: config.pipelines.clone(),
        tokens: auth::Tokens::from_config(control)?,
        max_bytes: control.max_component_bytes,
        body_timeout: Duration::from_millis(control.body_read_timeout_ms),
        staging,
        opts,
        writer,
        reader: Mutex::new(reader),
        gate: upload::Gate::new(control),
        mutate: tokio::sync::Mutex::new(()),
        metrics: ControlMetrics::default(),
    });
    let listener = std::net::TcpListener::bind(control.listen)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let header_timeout = Duration::from_millis(control.header_read_timeout_ms);
    let app = router(api.clone());
    reg.handle().spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control API listener");
                return;
            }
        };
        accept_loop(listener, app, header_timeout, api).await;
    });
    Ok(bound)
}

/// hyper's HTTP/1 server directly, not `axum::serve`, which has no header
/// read timeout: a client that trickles its request head is cut off after
/// `control.header_read_timeout_ms`.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    api: Arc<Api>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "control API accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let api = api.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    api.metrics.http_timeout("headers");
                }
                tracing::debug!(error = %e, "control API connection");
            }
        });
    }
}

fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/v1/functions", get(routes::list_functions))
        .route("/v1/functions/{name}", get(routes::show_function))
        // The upload enforces its own (configurable) limit, with a JSON error;
        // every other body is a small JSON document.
        .route(
            "/v1/functions/{name}/versions",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/functions/{name}/versions/{version}",
            get(routes::show_version).delete(routes::delete_version),
        )
        .route("/v1/pipelines", get(routes::list_pipelines))
        .route("/v1/pipelines/{pipeline}", get(routes::show_pipeline))
        .route("/v1/pipelines/{pipeline}/activate", post(routes::activate))
        .route("/v1/pipelines/{pipeline}/rollback", post(routes::rollback))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(v1)
        .route("/metrics", get(metrics))
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                "no-such-route",
                "no such API route; see /v1/functions and /v1/pipelines",
            )
        })
        .method_not_allowed_fallback(|| async {
            err(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(api)
}

/// Every request body but an upload's is a small JSON document.
const SMALL_BODY: usize = 64 * 1024;

/// A small JSON body, read within `control.body_read_timeout_ms`.
async fn read_small_body(api: &Api, body: Body) -> ApiResult<Bytes> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + api.body_timeout;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                api.metrics.http_timeout("body");
                return Err(body_timeout(api));
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Ok(Some(Err(e))) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    format!("reading the request body: {e}"),
                ))
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > SMALL_BODY {
                    return Err(err(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        format!("request body exceeds {SMALL_BODY} bytes"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

fn body_timeout(api: &Api) -> ApiError {
    err(
        StatusCode::REQUEST_TIMEOUT,
        "body-timeout",
        format!(
            "the request body did not arrive within control.body_read_timeout_ms ({} ms)",
            api.body_timeout.as_millis()
        ),
    )
}

impl Api {
    /// The pipeline, if the tenant owns it: 404 if it does not exist, 403 if
    /// another tenant (or the operator's static config) owns it.
    fn owned_pipeline(&self, tenant: &str, name: &str) -> ApiResult<&PipelineConfig> {
        let p = self
            .pipelines
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "pipeline-not-found",
                    format!("no pipeline {name:?}"),
                )
            })?;
        if p.tenant.as_deref() != Some(tenant) {
            return Err(err(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("pipeline {name:?} does not belong to tenant {tenant:?}"),
            ));
        }
        Ok(p)
    }

    /// Every engine configuration the tenant's pipelines run with (artifacts
    /// are precompiled for each); the defaults when it owns none yet.
    fn limits_for(&self, tenant: &str) -> Vec<Limits> {
        let mut out: Vec<Limits> = Vec::new();
        for p in self
            .pipelines
            .iter()
            .filter(|p| p.tenant.as_deref() == Some(tenant))
        {
            if !out.contains(&p.limits) {
                out.push(p.limits.clone());
            }
        }
        if out.is_empty() {
            out.push(Limits::default());
        }
        out
    }

    async fn state(self: &Arc<Self>) -> ApiResult<ActivationState> {
        let api = self.clone();
        let state = tokio::task::spawn_blocking(move || {
            let mut r = api.reader.lock().unwrap_or_else(|p| p.into_inner());
            r.catch_up(Duration::from_secs(10))
                .map(|_| r.state().clone())
        })
        .await
        .map_err(internal)?
        .map_err(|e| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "activation-log-unavailable",
                e.to_string(),
            )
        })?;
        self.opts.cache.hold_active(
            state
                .values()
                .flat_map(|a| a.artifacts.keys().cloned())
                .collect::<Vec<_>>(),
        );
        Ok(state)
    }

    async fn manifest(
        &self,
        tenant: &str,
        function: &str,
        version: u64,
    ) -> ApiResult<VersionManifest> {
        self.reg
            .store
            .get_manifest(tenant, function, version)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "version-not-found",
                    format!("function {function:?} has no version {version}"),
                )
            })
    }

    /// A failed upload leaves nothing behind that no version references.
    async fn abandon(
        &self,
        digest: &str,
        artifacts: &std::collections::BTreeMap<String, String>,
        e: ApiError,
    ) -> ApiError {
        if let Ok(false) = self.reg.store.digest_in_use(digest).await {
            for a in artifacts.keys() {
                let _ = self.reg.store.delete_artifact(a).await;
            }
            let _ = self.reg.store.delete_blob(digest).await;
        }
        e
    }

    fn active_in(
        &self,
        state: &ActivationState,
        tenant: &str,
        function: &str,
        version: u64,
    ) -> Vec<String> {
        state
            .values()
            .filter(|a| {
                a.tenant == tenant && a.current.function == function && a.current.version == version
            })
            .map(|a| a.pipeline.clone())
            .collect()
    }
}

/// Stops the progress logger when the upload ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_version(v: &str) -> ApiResult<u64> {
    v.parse().map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid-version",
            format!("version {v:?} must be a positive integer"),
        )
    })
}

fn check_function_name(name: &str) -> ApiResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            "invalid-name",
            format!("function name {name:?} must be 1-63 characters of [a-z0-9_-], starting with a letter or digit"),
        ))
    }
}

fn load_error(e: LoadError) -> ApiError {
    let code = match &e {
        LoadError::NotAComponent { .. } => "not-a-component",
        LoadError::ForbiddenImport { .. } => "forbidden-import",
        LoadError::WrongWorld { .. } => "wrong-world",
        LoadError::UnsupportedWorldVersion { .. } => "unsupported-world-version",
        LoadError::Compile { .. } => "compile-failed",
        LoadError::Link { .. } => "link-failed",
        LoadError::Instantiate { .. } => "instantiate-failed",
        LoadError::Read { .. } | LoadError::Cache(_) => return internal(e),
    };
    err(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            crate::telemetry::metrics::CONTENT_TYPE,
        )],
        api.metrics.render(&api.opts.cache.stats()),
    )
}
