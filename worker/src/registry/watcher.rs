//! The worker side of activations: at start-up, the function each pipeline
//! should run according to the log; afterwards, a thread that follows the
//! log, loads each newly activated version in the background (blob →
//! precompiled artifact → `InstancePre`) and swaps it into the pipeline's
//! slot. A version that fails to load leaves the previous one running and
//! is reported (log, metric, status object).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::activations::{Activation, LogReader};
use super::store::{now_rfc3339, WorkerStatus};
use super::Registry;
use crate::config::PipelineConfig;
use crate::pipeline::{FunctionSlot, Shutdown};
use crate::sandbox::{Function, SandboxOptions};

/// Fetches a deployed version and loads it under the pipeline's limits,
/// its pool sized for the pipeline's own sandbox threads: at start-up and on
/// every hot swap alike, since a pool sized for the largest concurrency of
/// the process reserves address space for threads that never run it.
pub fn load(
    reg: &Registry,
    a: &Activation,
    p: &PipelineConfig,
    opts: &SandboxOptions,
) -> Result<Arc<Function>, String> {
    let started = Instant::now();
    reg.trust(&a.artifacts);
    let bytes = reg
        .block_on(reg.store.get_blob(&a.current.digest))
        .map_err(|e| e.to_string())?;
    let origin = format!(
        "{}/{}@{} ({})",
        a.tenant, a.current.function, a.current.version, a.current.digest
    );
    let f = Function::load_versioned(
        &a.current.function,
        Some(&label(a)),
        &origin,
        &bytes,
        &p.limits,
        &opts.sized_for(p.concurrency),
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        pipeline = %p.name,
        function = %a.current.function,
        version = a.current.version,
        digest = %a.current.digest,
        from_cache = f.load_report.from_cache,
        load_ms = started.elapsed().as_millis() as u64,
        pool_slots = f.load_report.pool_slots.unwrap_or(0),
        "activated version loaded"
    );
    Ok(f)
}

/// What outputs of this version are stamped with: `<function>@<version>`.
pub fn label(a: &Activation) -> String {
    format!("{}@{}", a.current.function, a.current.version)
}

/// Whether an activation concerns this pipeline (and its owner wrote it).
pub fn applies(a: &Activation, p: &PipelineConfig) -> bool {
    a.pipeline == p.name && p.tenant.as_deref() == Some(a.tenant.as_str())
}

pub fn report(
    reg: &Registry,
    p: &PipelineConfig,
    slot: &FunctionSlot,
    desired: Option<&Activation>,
    error: Option<String>,
) {
    let running = slot.get();
    let state = match (&error, desired, &running) {
        (Some(_), _, _) => "failed",
        (None, None, None) => "waiting",
        _ => "active",
    };
    let status = WorkerStatus {
        worker: reg.worker_id.clone(),
        pipeline: p.name.clone(),
        state: state.into(),
        running_version: running.as_ref().map(|f| f.version.clone()),
        running_digest: running.as_ref().map(|f| f.digest.clone()),
        desired_version: desired.map(|a| a.current.version),
        desired_digest: desired.map(|a| a.current.digest.clone()),
        error,
        updated_at: now_rfc3339(),
    };
    if let Err(e) = reg.block_on(reg.store.put_status(&status)) {
        tracing::warn!(pipeline = %p.name, error = %e, "cannot write worker status to the store");
    }
}

/// Follows the log until the worker stops. `retry` are activations that
/// failed to load at start-up. A failed load is retried with backoff (1 s,
/// doubling to 60 s) until it succeeds or a newer activation replaces it.
pub fn spawn(
    reg: Arc<Registry>,
    mut reader: LogReader,
    pipelines: Vec<(PipelineConfig, Arc<FunctionSlot>)>,
    opts: SandboxOptions,
    shutdown: Arc<Shutdown>,
    retry: Vec<Activation>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("activation-watcher".into())
        .spawn(move || {
            let by_name: HashMap<String, (PipelineConfig, Arc<FunctionSlot>)> = pipelines
                .into_iter()
                .map(|(p, s)| (p.name.clone(), (p, s)))
                .collect();
            // pipeline → (activation, when to try, backoff)
            let mut pending: HashMap<String, (Activation, Instant, Duration)> = HashMap::new();
            for a in retry {
                let at = Instant::now() + RETRY_FIRST;
                pending.insert(a.pipeline.clone(), (a, at, RETRY_FIRST));
            }
            while !shutdown.stopping() {
                match reader.poll(Duration::from_millis(200)) {
                    Ok(Some(a)) => match by_name.get(&a.pipeline) {
                        Some((p, _)) if applies(&a, p) => {
                            tracing::info!(pipeline = %p.name, function = %a.current.function, version = a.current.version, action = %a.action, "activation received; loading in the background");
                            pending.insert(a.pipeline.clone(), (a, Instant::now(), Duration::ZERO));
                        }
                        Some((p, _)) => {
                            tracing::warn!(pipeline = %p.name, tenant = %a.tenant, "ignoring an activation by a tenant that does not own the pipeline");
                        }
                        None => {}
                    },
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "activation log"),
                }
                let now = Instant::now();
                let due: Vec<String> = pending
                    .iter()
                    .filter(|(_, (_, at, _))| *at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for name in due {
                    let Some((a, _, backoff)) = pending.remove(&name) else {
                        continue;
                    };
                    let Some((p, slot)) = by_name.get(&name) else {
                        continue;
                    };
                    let running = slot.get();
                    if running
                        .as_ref()
                        .is_some_and(|f| f.digest == a.current.digest && f.version == label(&a))
                    {
                        // e.g. a rollback to the version still running after
                        // a failed load: nothing to load, the failure is over.
                        slot.clear_error();
                        report(&reg, p, slot, Some(&a), None);
                        continue;
                    }
                    match load(&reg, &a, p, &opts) {
                        Ok(f) => {
                            // A refused swap (e.g. a 0.1 function under
                            // tombstones = "function") keeps the old version.
                            let refused = (!slot.swap(f)).then(|| {
                                slot.last_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .clone()
                                    .unwrap_or_default()
                            });
                            report(&reg, p, slot, Some(&a), refused);
                        }
                        Err(e) => {
                            let next = (backoff * 2).clamp(RETRY_FIRST, RETRY_MAX);
                            tracing::error!(pipeline = %p.name, function = %a.current.function, version = a.current.version, error = %e, retry_in_s = next.as_secs(), "activated version failed to load; keeping the previous one");
                            slot.record_failure(e.clone());
                            report(&reg, p, slot, Some(&a), Some(e));
                            pending.insert(name, (a, Instant::now() + next, next));
                        }
                    }
                }
            }
            // A stopped worker is not one the status API should list.
            for (p, _) in by_name.values() {
                if let Err(e) = reg.block_on(reg.store.delete_status(&p.name, &reg.worker_id)) {
                    tracing::debug!(pipeline = %p.name, error = %e, "cannot remove worker status");
                }
            }
        })
        .expect("spawn activation watcher")
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
