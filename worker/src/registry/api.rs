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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::activations::{
    Activation, ActivationState, Deployed, LogReader, LogWriter, HISTORY_DEPTH,
};
use super::metrics::ControlMetrics;
use super::store::{now_rfc3339, VersionManifest};
use super::Registry;
use crate::config::{valid_name, Config, Limits, PipelineConfig};
use crate::sandbox::{Function, LoadError, SandboxOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("config key `control.tenants[{index}].token_env`: environment variable {var} is not set or empty")]
    TokenEnv { index: usize, var: String },
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
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
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
    /// (tenant, sha256(token))
    tenants: Vec<(String, [u8; 32])>,
    max_bytes: usize,
    opts: SandboxOptions,
    writer: LogWriter,
    reader: Mutex<LogReader>,
    /// Compiling is CPU-bound: one upload compiles at a time.
    compile: Arc<tokio::sync::Semaphore>,
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
    let mut tenants = Vec::new();
    for (index, t) in control.tenants.iter().enumerate() {
        let hash = match (&t.token_sha256, &t.token_env) {
            (Some(hex), _) => {
                let mut h = [0u8; 32];
                for (i, b) in h.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                h
            }
            (None, Some(var)) => {
                let token = std::env::var(var).unwrap_or_default();
                if token.trim().is_empty() {
                    return Err(ServeError::TokenEnv {
                        index,
                        var: var.clone(),
                    });
                }
                Sha256::digest(token.trim().as_bytes()).into()
            }
            (None, None) => unreachable!("config validation requires one"),
        };
        tenants.push((t.name.clone(), hash));
    }
    let writer = LogWriter::new(&config.kafka, reg.activations_topic())?;
    let reader = LogReader::new(&config.kafka, reg.activations_topic())?;
    let api = Arc::new(Api {
        reg: reg.clone(),
        pipelines: config.pipelines.clone(),
        tenants,
        max_bytes: control.max_component_bytes,
        opts,
        writer,
        reader: Mutex::new(reader),
        compile: Arc::new(tokio::sync::Semaphore::new(1)),
        mutate: tokio::sync::Mutex::new(()),
        metrics: ControlMetrics::default(),
    });
    let listener = std::net::TcpListener::bind(control.listen)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = router(api);
    reg.handle().spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "control API listener");
                return;
            }
        };
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control API stopped");
        }
    });
    Ok(bound)
}

fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/functions", get(list_functions))
        .route("/v1/functions/{name}", get(show_function))
        // The upload enforces its own (configurable) limit, with a JSON error;
        // every other body is a small JSON document.
        .route(
            "/v1/functions/{name}/versions",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/functions/{name}/versions/{version}",
            get(show_version).delete(delete_version),
        )
        .route("/v1/pipelines", get(list_pipelines))
        .route("/v1/pipelines/{pipeline}", get(show_pipeline))
        .route("/v1/pipelines/{pipeline}/activate", post(activate))
        .route("/v1/pipelines/{pipeline}/rollback", post(rollback))
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
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(api)
}

impl Api {
    /// The tenant the bearer token belongs to.
    fn auth(&self, headers: &HeaderMap) -> ApiResult<String> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing Authorization: Bearer <token>",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                err(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every tenant without stopping early.
        let mut found = None;
        for (name, h) in &self.tenants {
            let diff = h.iter().zip(hash.iter()).fold(0u8, |a, (x, y)| a | (x ^ y));
            if diff == 0 {
                found = Some(name.clone());
            }
        }
        found.ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "the token is not valid for any tenant",
            )
        })
    }

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

/// With `Accept: application/x-ndjson`, the answer to an upload that passed
/// the checks needing no compilation is a stream: `{"event":"progress",...}`
/// every second while it compiles, then `{"event":"result","status":...}`
/// with the manifest (201) or the error (4xx/5xx) a plain request would get.
async fn upload(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let (tenant, bytes) = match precheck(&api, &name, &headers, body).await {
        Ok(x) => x,
        Err(e) => {
            api.metrics.upload(e.status.as_u16(), e.code);
            return e.into_response();
        }
    };
    let counted = api.clone();
    let job = tokio::spawn(async move {
        let r = compile_and_store(counted.clone(), tenant, name, bytes).await;
        match &r {
            Ok(_) => counted.metrics.upload(0, ""),
            Err(e) => counted.metrics.upload(e.status.as_u16(), e.code),
        }
        r
    });
    if !ndjson {
        return match job.await {
            Ok(Ok(m)) => (StatusCode::CREATED, Json(m)).into_response(),
            Ok(Err(e)) => e.into_response(),
            Err(e) => internal(e).into_response(),
        };
    }
    let started = Instant::now();
    let stream = futures::stream::unfold(Some(job), move |job| async move {
        let mut job = job?;
        let line = tokio::select! {
            r = &mut job => {
                let (status, body) = match r {
                    Ok(Ok(m)) => (201, json!({"manifest": m})),
                    Ok(Err(e)) => (e.status.as_u16(), json!({"error": {"code": e.code, "message": e.message}})),
                    Err(e) => (500, json!({"error": {"code": "internal", "message": e.to_string()}})),
                };
                let mut v = json!({"event": "result", "status": status});
                v.as_object_mut().expect("object").extend(body.as_object().expect("object").clone());
                return Some((Ok::<_, std::io::Error>(format!("{v}\n")), None));
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                json!({"event": "progress", "stage": "validating and precompiling", "elapsed_ms": started.elapsed().as_millis() as u64})
            }
        };
        Some((Ok(format!("{line}\n")), Some(job)))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Everything that needs no compilation: token, name, size, magic number,
/// component layer. Returns the tenant and the bytes.
async fn precheck(
    api: &Api,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(String, Bytes)> {
    let checked = api
        .auth(headers)
        .and_then(|t| check_function_name(name).map(|()| t));
    let tenant = match checked {
        Ok(t) => t,
        Err(e) => {
            // Read the body anyway (discarding it, up to the size limit):
            // answering before it is sent resets the connection and the
            // client never sees the 401.
            discard(body, api.max_bytes).await;
            return Err(e);
        }
    };
    let too_large = |size: String| {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!(
                "component of {size} bytes exceeds control.max_component_bytes ({})",
                api.max_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = match read_limited(body, api.max_bytes).await {
        Ok(b) => b,
        Err(seen) => return Err(too_large(declared.unwrap_or(seen).to_string())),
    };
    if bytes.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "empty-body",
            "the request body must be the component (.wasm)",
        ));
    }
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-wasm",
            "the body is not WebAssembly (no \\0asm magic number)",
        ));
    }
    if bytes[6..8] == [0, 0] {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "core-module",
            "this is a core WebAssembly module; upload a component (WASI 0.2: cargo --target wasm32-wasip2, componentize-py, jco componentize)",
        ));
    }
    Ok((tenant, bytes))
}

/// Validates by compiling and test-instantiating under every engine
/// configuration the tenant's pipelines use, then stores blob, artifacts and
/// manifest. Runs as its own task: a client that disconnects does not cut
/// it short halfway through storing.
async fn compile_and_store(
    api: Arc<Api>,
    tenant: String,
    name: String,
    bytes: Bytes,
) -> ApiResult<VersionManifest> {
    // Held by the compile itself.
    let permit = api
        .compile
        .clone()
        .acquire_owned()
        .await
        .map_err(internal)?;
    let origin = format!("upload {tenant}/{name}");
    let limits = api.limits_for(&tenant);
    let started = Instant::now();
    let size = bytes.len();
    tracing::info!(tenant = %tenant, function = %name, size_bytes = size, engine_configs = limits.len(), "upload received; validating and precompiling");
    let compile = {
        let (bytes, opts, name, origin) = (
            bytes.clone(),
            api.opts.clone(),
            name.clone(),
            origin.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            limits
                .iter()
                .map(|l| Function::load_versioned(&name, None, &origin, &bytes, l, &opts))
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let progress = {
        let (tenant, name) = (tenant.clone(), name.clone());
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::info!(tenant = %tenant, function = %name, elapsed_s = started.elapsed().as_secs(), "still precompiling");
            }
        }))
    };
    let loaded = compile.await;
    drop(progress);
    api.metrics.compiled(started.elapsed());
    let functions = loaded.map_err(internal)?.map_err(load_error)?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let first = &functions[0];
    let digest = first.digest.clone();

    // Blob, then artifacts, then the manifest: a version exists only once
    // everything it needs does. Under the lock, so a concurrent delete of
    // another version with the same digest cannot remove the blob meanwhile.
    let _g = api.mutate.lock().await;
    let mut artifacts = std::collections::BTreeMap::new();
    for f in &functions {
        // Two limit sets can share one engine configuration, so one artifact.
        if artifacts.contains_key(&f.artifact_name) {
            continue;
        }
        match stored_artifact(&api, &f.artifact_name).await {
            Ok(Some(hash)) => {
                artifacts.insert(f.artifact_name.clone(), hash);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(api.abandon(&digest, &artifacts, e).await),
        }
        // What this process compiled, checked against the hash it recorded:
        // the manifest vouches for it to every worker.
        let cache = api.opts.cache.clone();
        let name = f.artifact_name.clone();
        let art = match tokio::task::spawn_blocking(move || cache.read_trusted(&name)).await {
            Ok(Ok(art)) => art,
            Ok(Err(e)) => return Err(api.abandon(&digest, &artifacts, internal(e)).await),
            Err(e) => return Err(api.abandon(&digest, &artifacts, internal(e)).await),
        };
        artifacts.insert(f.artifact_name.clone(), crate::sandbox::digest(&art));
        if let Err(e) = api.reg.store.put_artifact(&f.artifact_name, art).await {
            return Err(api.abandon(&digest, &artifacts, internal(e)).await);
        }
        // Workers fetch it from the store; a copy here would only fill the disk.
        api.opts.cache.remove(&f.artifact_name);
    }
    if let Err(e) = api.reg.store.put_blob(&digest, bytes.to_vec()).await {
        return Err(api.abandon(&digest, &artifacts, internal(e)).await);
    }
    for _attempt in 0..8 {
        let next = match api.reg.store.next_version(&tenant, &name).await {
            Ok(n) => n,
            Err(e) => return Err(api.abandon(&digest, &artifacts, internal(e)).await),
        };
        let m = VersionManifest {
            tenant: tenant.clone(),
            function: name.clone(),
            version: next,
            digest: digest.clone(),
            size_bytes: size as u64,
            world: first.world.clone(),
            exports_batch: first.exports_batch(),
            created_at: now_rfc3339(),
            compile_ms,
            artifacts: artifacts.clone(),
        };
        match api.reg.store.create_manifest(&m).await {
            Ok(true) => {
                tracing::info!(tenant = %tenant, function = %name, version = m.version, digest = %digest, compile_ms, "function version stored");
                return Ok(m);
            }
            Ok(false) => continue,
            Err(e) => return Err(api.abandon(&digest, &artifacts, internal(e)).await),
        }
    }
    let e = err(
        StatusCode::CONFLICT,
        "version-race",
        "concurrent uploads kept taking the next version number; retry",
    );
    Err(api.abandon(&digest, &artifacts, e).await)
}

/// The hash of an artifact already in the store that this process compiled
/// (a concurrent upload of the same component stored it and removed the
/// local copy). `None` when the local copy is to be used.
async fn stored_artifact(api: &Api, name: &str) -> ApiResult<Option<String>> {
    if api.opts.cache.dir().join(name).exists() {
        return Ok(None);
    }
    let Some(trusted) = api.opts.cache.trusted_hash(name) else {
        return Ok(None);
    };
    match api.reg.store.get_artifact(name).await.map_err(internal)? {
        Some(bytes) if crate::sandbox::digest(&bytes) == trusted => Ok(Some(trusted)),
        _ => Ok(None),
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(&api.opts.cache.stats()),
    )
}

async fn discard(body: Body, max: usize) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len();
        if seen > max {
            break;
        }
    }
}

/// The body if it fits in `max` bytes; else how much was seen. An oversized
/// body is still read to its end (and dropped) so the client receives the 413
/// instead of a reset connection.
async fn read_limited(body: Body, max: usize) -> Result<Bytes, usize> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        seen += chunk.len();
        if seen <= max {
            buf.extend_from_slice(&chunk);
        } else if seen > max.saturating_mul(2) {
            break;
        }
    }
    if seen > max {
        Err(seen)
    } else {
        Ok(Bytes::from(buf))
    }
}

async fn list_functions(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    let state = api.state().await?;
    let mut out = Vec::new();
    for name in api
        .reg
        .store
        .list_functions(&tenant)
        .await
        .map_err(internal)?
    {
        let versions = api
            .reg
            .store
            .list_versions(&tenant, &name)
            .await
            .map_err(internal)?;
        let Some(latest) = versions.last() else {
            continue;
        };
        let active: Vec<Value> = state
            .values()
            .filter(|a| a.tenant == tenant && a.current.function == name)
            .map(|a| json!({"pipeline": a.pipeline, "version": a.current.version}))
            .collect();
        out.push(json!({
            "name": name,
            "versions": versions.len(),
            "latest_version": latest.version,
            "latest_digest": latest.digest,
            "active": active,
        }));
    }
    Ok(Json(json!({"tenant": tenant, "functions": out})))
}

async fn show_function(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    check_function_name(&name)?;
    let state = api.state().await?;
    let versions = api
        .reg
        .store
        .list_versions(&tenant, &name)
        .await
        .map_err(internal)?;
    if versions.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            "function-not-found",
            format!("tenant {tenant:?} has no function {name:?}"),
        ));
    }
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|m| {
            let active_in = api.active_in(&state, &tenant, &name, m.version);
            let mut v = serde_json::to_value(&m).expect("manifest serializes");
            v["active_in"] = json!(active_in);
            v
        })
        .collect();
    Ok(Json(
        json!({"name": name, "tenant": tenant, "versions": versions}),
    ))
}

async fn show_version(
    State(api): State<Arc<Api>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    check_function_name(&name)?;
    let version = parse_version(&version)?;
    let m = api.manifest(&tenant, &name, version).await?;
    let state = api.state().await?;
    let mut v = serde_json::to_value(&m).expect("manifest serializes");
    v["active_in"] = json!(api.active_in(&state, &tenant, &name, version));
    Ok(Json(v))
}

async fn delete_version(
    State(api): State<Arc<Api>>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    check_function_name(&name)?;
    let version = parse_version(&version)?;
    let _g = api.mutate.lock().await;
    let m = api.manifest(&tenant, &name, version).await?;
    let state = api.state().await?;
    let active = api.active_in(&state, &tenant, &name, version);
    if !active.is_empty() {
        return Err(err(
            StatusCode::CONFLICT,
            "version-active",
            format!("{name} version {version} is active in pipeline(s) {}; activate another version first", active.join(", ")),
        ));
    }
    let store = &api.reg.store;
    store
        .delete_manifest(&tenant, &name, version)
        .await
        .map_err(internal)?;
    let mut blob_deleted = false;
    if !store.digest_in_use(&m.digest).await.map_err(internal)? {
        for a in m.artifacts.keys() {
            store.delete_artifact(a).await.map_err(internal)?;
        }
        store.delete_blob(&m.digest).await.map_err(internal)?;
        blob_deleted = true;
    }
    tracing::info!(tenant = %tenant, function = %name, version, blob_deleted, "function version deleted");
    Ok(Json(
        json!({"deleted": {"function": name, "version": version, "digest": m.digest}, "blob_deleted": blob_deleted}),
    ))
}

async fn pipeline_view(api: &Api, p: &PipelineConfig, state: &ActivationState) -> ApiResult<Value> {
    let workers = api.reg.store.list_status(&p.name).await.map_err(internal)?;
    let a = state
        .get(&p.name)
        .filter(|a| Some(a.tenant.as_str()) == p.tenant.as_deref());
    Ok(json!({
        "name": p.name,
        "input_topics": p.input_topics,
        "output_topics": p.output_topics,
        "active": a.map(|a| &a.current),
        "activated_at": a.map(|a| &a.activated_at),
        "history": a.map(|a| &a.history),
        "workers": workers,
    }))
}

async fn list_pipelines(State(api): State<Arc<Api>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    let state = api.state().await?;
    let mut out = Vec::new();
    for p in api
        .pipelines
        .iter()
        .filter(|p| p.tenant.as_deref() == Some(tenant.as_str()))
    {
        out.push(pipeline_view(&api, p, &state).await?);
    }
    Ok(Json(json!({"tenant": tenant, "pipelines": out})))
}

async fn show_pipeline(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let tenant = api.auth(&headers)?;
    let p = api.owned_pipeline(&tenant, &pipeline)?;
    let state = api.state().await?;
    Ok(Json(pipeline_view(&api, p, &state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    function: String,
    /// Latest when omitted.
    #[serde(default)]
    version: Option<u64>,
}

async fn activate(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = api.auth(&headers)?;
    let p = api.owned_pipeline(&tenant, &pipeline)?.clone();
    let req: ActivateBody = serde_json::from_slice(&body).map_err(|e| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            format!("expected {{\"function\": \"<name>\", \"version\": <n>}}: {e}"),
        )
    })?;
    check_function_name(&req.function)?;
    // Under the lock: a delete cannot remove the version between the lookup
    // and the log write.
    let _g = api.mutate.lock().await;
    let m = match req.version {
        Some(v) => api.manifest(&tenant, &req.function, v).await?,
        None => api
            .reg
            .store
            .list_versions(&tenant, &req.function)
            .await
            .map_err(internal)?
            .pop()
            .ok_or_else(|| {
                err(
                    StatusCode::NOT_FOUND,
                    "function-not-found",
                    format!("tenant {tenant:?} has no function {:?}", req.function),
                )
            })?,
    };
    let state = api.state().await?;
    let prev = state.get(&p.name).filter(|a| a.tenant == tenant);
    let current = Deployed {
        function: m.function.clone(),
        version: m.version,
        digest: m.digest.clone(),
    };
    if prev.is_some_and(|a| a.current == current) {
        return Ok((
            StatusCode::OK,
            Json(json!({"activation": prev, "unchanged": true})),
        ));
    }
    let mut history: Vec<Deployed> = prev
        .map(|a| {
            std::iter::once(a.current.clone())
                .chain(a.history.iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    history.truncate(HISTORY_DEPTH);
    write_activation(&api, &tenant, &p, current, history, m.artifacts, "activate").await
}

async fn rollback(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let tenant = api.auth(&headers)?;
    let p = api.owned_pipeline(&tenant, &pipeline)?.clone();
    let _g = api.mutate.lock().await;
    let state = api.state().await?;
    let Some(prev) = state.get(&p.name).filter(|a| a.tenant == tenant) else {
        return Err(err(
            StatusCode::CONFLICT,
            "nothing-active",
            format!("pipeline {pipeline:?} has no activation to roll back"),
        ));
    };
    // The most recent earlier deployment whose version still exists.
    for (i, d) in prev.history.iter().enumerate() {
        let manifest = api
            .reg
            .store
            .get_manifest(&tenant, &d.function, d.version)
            .await
            .map_err(internal)?
            .filter(|m| m.digest == d.digest);
        if let Some(m) = manifest {
            let history = prev.history[i + 1..].to_vec();
            return write_activation(
                &api,
                &tenant,
                &p,
                d.clone(),
                history,
                m.artifacts,
                "rollback",
            )
            .await;
        }
    }
    Err(err(
        StatusCode::CONFLICT,
        "no-previous-version",
        format!(
            "pipeline {pipeline:?} has no earlier version to roll back to (it runs {} version {})",
            prev.current.function, prev.current.version
        ),
    ))
}

async fn write_activation(
    api: &Api,
    tenant: &str,
    p: &PipelineConfig,
    current: Deployed,
    history: Vec<Deployed>,
    artifacts: std::collections::BTreeMap<String, String>,
    action: &str,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let mut a = Activation {
        artifacts,
        pipeline: p.name.clone(),
        tenant: tenant.to_string(),
        current,
        action: action.to_string(),
        activated_at: now_rfc3339(),
        history,
        offset: 0,
    };
    a.offset = api.writer.append(&a).await.map_err(|e| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "activation-log-unavailable",
            e.to_string(),
        )
    })?;
    api.metrics.activation(action);
    tracing::info!(tenant, pipeline = %p.name, function = %a.current.function, version = a.current.version, action, offset = a.offset, "activation written");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"activation": a, "offset": a.offset})),
    ))
}
