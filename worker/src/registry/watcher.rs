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
use crate::pipeline::{Control, FunctionSlot};
use crate::sandbox::{Function, SandboxOptions};

/// Fetches a deployed version and loads it under the pipeline's limits.
pub fn load(
    reg: &Registry,
    a: &Activation,
    p: &PipelineConfig,
    opts: &SandboxOptions,
) -> Result<Arc<Function>, String> {
    let started = Instant::now();
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
        opts,
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        pipeline = %p.name,
        function = %a.current.function,
        version = a.current.version,
        digest = %a.current.digest,
        from_cache = f.load_report.from_cache,
        load_ms = started.elapsed().as_millis() as u64,
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

/// Follows the log until the worker stops.
pub fn spawn(
    reg: Arc<Registry>,
    mut reader: LogReader,
    pipelines: Vec<(PipelineConfig, Arc<FunctionSlot>)>,
    opts: SandboxOptions,
    control: Arc<Control>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("activation-watcher".into())
        .spawn(move || {
            let by_name: HashMap<String, (PipelineConfig, Arc<FunctionSlot>)> = pipelines
                .into_iter()
                .map(|(p, s)| (p.name.clone(), (p, s)))
                .collect();
            while !control.stopping() {
                let a = match reader.poll(Duration::from_millis(200)) {
                    Ok(Some(a)) => a,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "activation log");
                        continue;
                    }
                };
                let Some((p, slot)) = by_name.get(&a.pipeline) else {
                    continue;
                };
                if !applies(&a, p) {
                    tracing::warn!(pipeline = %p.name, tenant = %a.tenant, "ignoring an activation by a tenant that does not own the pipeline");
                    continue;
                }
                if slot
                    .get()
                    .is_some_and(|f| f.digest == a.current.digest && f.version == label(&a))
                {
                    continue;
                }
                tracing::info!(pipeline = %p.name, function = %a.current.function, version = a.current.version, action = %a.action, "activation received; loading in the background");
                match load(&reg, &a, p, &opts) {
                    Ok(f) => {
                        slot.swap(f);
                        report(&reg, p, slot, Some(&a), None);
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %p.name, function = %a.current.function, version = a.current.version, error = %e, "activated version failed to load; keeping the previous one");
                        slot.record_failure(e.clone());
                        report(&reg, p, slot, Some(&a), Some(e));
                    }
                }
            }
        })
        .expect("spawn activation watcher")
}
