//! The routes besides the upload: listing, showing and deleting versions,
//! pipelines, activation and rollback. The tenant comes from
//! [`super::auth::require_token`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::activations::{Activation, ActivationState, Deployed, HISTORY_DEPTH};
use super::super::store::now_rfc3339;
use super::auth::Tenant;
use super::{check_function_name, err, internal, parse_version, read_small_body, Api, ApiResult};
use crate::config::PipelineConfig;

pub(super) async fn list_functions(
    State(api): State<Arc<Api>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn show_function(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn show_version(
    State(api): State<Arc<Api>>,
    Path((name, version)): Path<(String, String)>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
    check_function_name(&name)?;
    let version = parse_version(&version)?;
    let m = api.manifest(&tenant, &name, version).await?;
    let state = api.state().await?;
    let mut v = serde_json::to_value(&m).expect("manifest serializes");
    v["active_in"] = json!(api.active_in(&state, &tenant, &name, version));
    Ok(Json(v))
}

pub(super) async fn delete_version(
    State(api): State<Arc<Api>>,
    Path((name, version)): Path<(String, String)>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
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
    // Whether the blob went too depends on other tenants' versions of the
    // same bytes, so it is logged but never told to the client.
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
        json!({"deleted": {"function": name, "version": version, "digest": m.digest}}),
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

pub(super) async fn list_pipelines(
    State(api): State<Arc<Api>>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn show_pipeline(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Json<Value>> {
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

pub(super) async fn activate(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = api.owned_pipeline(&tenant, &pipeline)?.clone();
    let body = read_small_body(&api, body).await?;
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

pub(super) async fn rollback(
    State(api): State<Arc<Api>>,
    Path(pipeline): Path<String>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
