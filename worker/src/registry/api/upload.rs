//! The upload pipeline: admission (per-tenant and overall concurrency, a
//! per-tenant rate), the body (bounded in size and time), validation and
//! precompilation (a queue per tenant, shared workers, a timeout), then the
//! store (blob, artifacts, manifest last).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use governor::clock::{Clock, DefaultClock};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::super::store::{now_rfc3339, VersionManifest};
use super::auth::Tenant;
use super::staging::{self, Staged};
use super::{
    check_function_name, err, internal, load_error, AbortOnDrop, Api, ApiError, ApiResult,
};
use crate::config::{ControlConfig, Limits};
use crate::sandbox::{Function, LoadError, SandboxOptions};

/// Fault hook for tests: `<tenant>:<file>` holds that tenant's compiles,
/// once they have their compile slots, until `<file>` exists (at most
/// [`FAULT_HOLD_MAX`]); `<file>.held` is created when a hold begins. It
/// stands in for a slow compile (a large component) whose end the test
/// decides, so that "B finished while A was still compiling" is a fact, not
/// a wall-clock guess.
pub const FAULT_HOLD_COMPILE: &str = "PIPELINE_WORKER_FAULT_HOLD_COMPILE";
const FAULT_HOLD_MAX: Duration = Duration::from_secs(60);

/// A compile held by [`FAULT_HOLD_COMPILE`].
pub struct FaultHold(std::path::PathBuf);

impl FaultHold {
    pub fn wait(&self, origin: &str) {
        let mut held = self.0.clone().into_os_string();
        held.push(".held");
        let held = std::path::PathBuf::from(held);
        if let Err(e) = std::fs::write(&held, origin) {
            tracing::warn!(file = %held.display(), error = %e, "fault injection: cannot write the hold marker");
        }
        tracing::warn!(%origin, release = %self.0.display(), "fault injection: {FAULT_HOLD_COMPILE} holds this compile");
        let until = Instant::now() + FAULT_HOLD_MAX;
        while !self.0.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a 429 for the concurrency bound suggests: uploads take from a
/// second (Rust) to tens of seconds (Python).
const BUSY_RETRY_SECS: u64 = 5;

/// Admission and compile scheduling, per tenant and overall.
pub struct Gate {
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    compiles: Arc<Semaphore>,
    /// Bodies of uploads refused before reading them, being read and
    /// discarded (see [`staging::discard`]); as many as uploads may run.
    drains: Arc<Semaphore>,
    tenants: HashMap<String, TenantGate>,
    clock: DefaultClock,
    pub compile_timeout: Duration,
    /// Digest → lock; entries go when no upload holds or waits for them.
    same_bytes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// [`FAULT_HOLD_COMPILE`]: (tenant, release file).
    fault: Option<(String, std::path::PathBuf)>,
}

struct TenantGate {
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    compiles: Arc<Semaphore>,
    rate: governor::DefaultDirectRateLimiter,
}

/// Held by an upload from admission until it is stored or refused.
pub struct UploadPermit {
    _all: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
}

/// A compile's tenant slot and shared slot.
pub struct CompileSlots {
    _tenant: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(c: &ControlConfig) -> Self {
        let clock = DefaultClock::default();
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let tenants = c
            .tenants
            .iter()
            .map(|t| {
                let per_minute = nz(t.uploads_per_minute.unwrap_or(c.uploads_per_minute));
                let burst = nz(t.upload_burst.unwrap_or(c.upload_burst));
                let quota = governor::Quota::per_minute(per_minute).allow_burst(burst);
                let gate = TenantGate {
                    uploads: Arc::new(Semaphore::new(c.max_concurrent_uploads_per_tenant)),
                    max_uploads: c.max_concurrent_uploads_per_tenant,
                    compiles: Arc::new(Semaphore::new(c.compile_concurrency_per_tenant)),
                    rate: governor::RateLimiter::direct_with_clock(quota, clock.clone()),
                };
                (t.name.clone(), gate)
            })
            .collect();
        Self {
            uploads: Arc::new(Semaphore::new(c.max_concurrent_uploads)),
            max_uploads: c.max_concurrent_uploads,
            compiles: Arc::new(Semaphore::new(c.compile_concurrency)),
            drains: Arc::new(Semaphore::new(c.max_concurrent_uploads)),
            tenants,
            clock,
            compile_timeout: Duration::from_millis(c.compile_timeout_ms),
            same_bytes: Mutex::new(HashMap::new()),
            fault: std::env::var(FAULT_HOLD_COMPILE).ok().and_then(|v| {
                let (tenant, file) = v.split_once(':')?;
                Some((tenant.to_string(), file.into()))
            }),
        }
    }

    fn fault_hold(&self, tenant: &str) -> Option<FaultHold> {
        let (t, file) = self.fault.as_ref()?;
        (t == tenant).then(|| FaultHold(file.clone()))
    }

    fn tenant(&self, tenant: &str) -> ApiResult<&TenantGate> {
        self.tenants
            .get(tenant)
            .ok_or_else(|| internal(format!("tenant {tenant:?} has no upload gate")))
    }

    /// A slot to read a refused upload's body; none when as many are being
    /// read as uploads may run (then the connection is closed unread).
    fn drain_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.drains.clone().try_acquire_owned().ok()
    }

    /// Concurrency first (a refused upload costs no rate token), then rate.
    fn admit(&self, tenant: &str) -> ApiResult<UploadPermit> {
        let t = self.tenant(tenant)?;
        let busy = |message: String| ApiError {
            retry_after: Some(BUSY_RETRY_SECS),
            ..err(StatusCode::TOO_MANY_REQUESTS, "too-many-uploads", message)
        };
        let _tenant = t.uploads.clone().try_acquire_owned().map_err(|_| {
            busy(format!(
                "tenant {tenant:?} already has {} uploads in progress (control.max_concurrent_uploads_per_tenant)",
                t.max_uploads
            ))
        })?;
        let _all = self.uploads.clone().try_acquire_owned().map_err(|_| {
            busy(format!(
                "the control plane already has {} uploads in progress (control.max_concurrent_uploads)",
                self.max_uploads
            ))
        })?;
        if let Err(not_until) = t.rate.check() {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError {
                retry_after: Some(secs),
                ..err(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!("tenant {tenant:?} is over its upload rate (control.uploads_per_minute, control.upload_burst); retry in {secs} s"),
                )
            });
        }
        Ok(UploadPermit { _all, _tenant })
    }

    /// The tenant's own queue first, then a shared worker. The shared
    /// semaphore is FIFO and each tenant has at most its own slots' worth of
    /// compiles waiting in it, so the tenants take turns; with
    /// `compile_concurrency_per_tenant < compile_concurrency` one tenant's
    /// compiles never hold every worker.
    async fn compile_slot(&self, tenant: &str) -> ApiResult<CompileSlots> {
        let t = self.tenant(tenant)?;
        let _tenant = t.compiles.clone().acquire_owned().await.map_err(internal)?;
        let _shared = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        Ok(CompileSlots { _tenant, _shared })
    }

    fn same_bytes(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.same_bytes.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(digest.to_string()).or_default().clone()
    }
}

/// Compiles under every limit set. An artifact found already in the local
/// cache (another tenant's upload of the same bytes, or a worker sharing the
/// directory) is not used: it is compiled again, so that neither
/// `compile_ms` nor the time to answer tells a tenant that someone else
/// uploaded these bytes.
fn compile_for_tenant(
    name: &str,
    origin: &str,
    bytes: &[u8],
    limits: &[Limits],
    opts: &SandboxOptions,
) -> Result<Vec<Arc<Function>>, LoadError> {
    let load = || {
        limits
            .iter()
            .map(|l| Function::load_versioned(name, None, origin, bytes, l, opts))
            .collect::<Result<Vec<_>, _>>()
    };
    let functions = load()?;
    if !functions.iter().any(|f| f.load_report.from_cache) {
        return Ok(functions);
    }
    let cached: Vec<String> = functions
        .iter()
        .filter(|f| f.load_report.from_cache)
        .map(|f| f.artifact_name.clone())
        .collect();
    drop(functions);
    for a in &cached {
        opts.cache.remove(a);
    }
    load()
}

/// With `Accept: application/x-ndjson`, the answer to an upload that passed
/// the checks needing no compilation is a stream: `{"event":"progress",...}`
/// every second while it compiles, then `{"event":"result","status":...}`
/// with the manifest (201) or the error (4xx/5xx) a plain request would get.
pub(super) async fn upload(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    let (permit, staged) = match precheck(&api, &tenant, &name, &headers, body).await {
        Ok(x) => x,
        Err(e) => {
            api.metrics.upload(e.status.as_u16(), e.code);
            return e.into_response();
        }
    };
    let counted = api.clone();
    let job = tokio::spawn(async move {
        let r = compile_and_store(counted.clone(), tenant, name, staged).await;
        drop(permit);
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

/// Everything that needs no compilation: name, admission (concurrency, rate),
/// size, magic number, component layer. Returns the upload's admission
/// permit (held until it is stored or refused) and the staged body.
async fn precheck(
    api: &Api,
    tenant: &str,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<(UploadPermit, Staged)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let permit = match check_function_name(name).and_then(|()| api.gate.admit(tenant)) {
        Ok(p) => p,
        Err(e) => {
            if let Some(_slot) = api.gate.drain_slot() {
                staging::discard(api, body, declared).await;
            }
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
    let staged = match staging::receive(api, tenant, body, declared).await? {
        Ok(s) => s,
        Err(seen) => return Err(too_large(declared.unwrap_or(seen).to_string())),
    };
    let head = &staged.head;
    if staged.size == 0 {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "empty-body",
            "the request body must be the component (.wasm)",
        ));
    }
    if head.len() < 8 || &head[0..4] != b"\0asm" {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-wasm",
            "the body is not WebAssembly (no \\0asm magic number)",
        ));
    }
    if head[6..8] == [0, 0] {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "core-module",
            "this is a core WebAssembly module; upload a component (WASI 0.2: cargo --target wasm32-wasip2, componentize-py, jco componentize)",
        ));
    }
    Ok((permit, staged))
}

/// Validates by compiling and test-instantiating under every engine
/// configuration the tenant's pipelines use, then stores blob, artifacts and
/// manifest. Runs as its own task: a client that disconnects does not cut
/// it short halfway through storing.
async fn compile_and_store(
    api: Arc<Api>,
    tenant: String,
    name: String,
    staged: Staged,
) -> ApiResult<VersionManifest> {
    let origin = format!("upload {tenant}/{name}");
    let limits = api.limits_for(&tenant);
    let size = staged.size;
    // Uploads of the same bytes, by any tenant, compile and store one at a
    // time: each compiles for itself (see below), and none removes the
    // local artifact another is about to store.
    let digest_lock = api.gate.same_bytes(&staged.digest).lock_owned().await;
    let slots = api.gate.compile_slot(&tenant).await?;
    let started = Instant::now();
    tracing::info!(tenant = %tenant, function = %name, size_bytes = size, engine_configs = limits.len(), "upload received; validating and precompiling");
    // Whoever sets it first owns the outcome: the compile (finished in
    // time) or the timeout (the compile then cleans up after itself).
    let claimed = Arc::new(AtomicBool::new(false));
    let hold = api.gate.fault_hold(&tenant);
    let mut compile = {
        let (opts, name, origin, claimed) = (
            api.opts.clone(),
            name.clone(),
            origin.clone(),
            claimed.clone(),
        );
        tokio::task::spawn_blocking(move || {
            // An abandoned compile keeps its tenant's compile slot and the
            // shared one until it actually ends: wasmtime cannot stop it,
            // and the slots are what bound the CPU it takes.
            let _slots = slots;
            if let Some(hold) = hold {
                hold.wait(&origin);
            }
            // In memory only from here (one read of the staged file), so
            // queued uploads hold disk; the file goes once it is read.
            let bytes = match staged.read() {
                Ok(b) => Bytes::from(b),
                Err(source) => {
                    let path = staged.path().display().to_string();
                    return (Err(LoadError::Read { path, source }), None);
                }
            };
            let staged_digest = staged.digest.clone();
            drop(staged);
            let r = compile_for_tenant(&name, &origin, &bytes, &limits, &opts)
                .map(|f| (f, bytes, staged_digest));
            if claimed.swap(true, Ordering::SeqCst) {
                if let Ok((functions, _, _)) = &r {
                    for f in functions {
                        opts.cache.remove(&f.artifact_name);
                    }
                }
                tracing::info!(%origin, took_ms = started.elapsed().as_millis() as u64, "abandoned compile ended");
                return (r, None);
            }
            (r, Some(digest_lock))
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
    let loaded = match tokio::time::timeout(api.gate.compile_timeout, &mut compile).await {
        Ok(r) => r,
        Err(_) if !claimed.swap(true, Ordering::SeqCst) => {
            drop(progress);
            api.metrics.compiled(started.elapsed());
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile-timeout",
                format!(
                    "validation and precompilation took longer than control.compile_timeout_ms ({} ms); nothing was stored",
                    api.gate.compile_timeout.as_millis()
                ),
            ));
        }
        // It finished as the timer fired: the compile claimed the outcome.
        Err(_) => compile.await,
    };
    drop(progress);
    api.metrics.compiled(started.elapsed());
    let (r, _same_bytes) = loaded.map_err(internal)?;
    let (functions, bytes, staged_digest) = r.map_err(load_error)?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let first = &functions[0];
    let digest = first.digest.clone();
    if digest != staged_digest {
        // The file changed between receiving and reading: store nothing.
        return Err(internal(format!(
            "the staged upload hashes to {digest}, but {staged_digest} was received"
        )));
    }

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
    if let Err(e) = api.reg.store.put_blob(&digest, bytes).await {
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
