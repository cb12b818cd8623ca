//! The router's admin API, served on its own listener (loopback by default), every route
//! behind the bearer token (disabled without one).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::gateway::Gateway;
use super::registry::{BackendInfo, Registry, worker_base_url};
use crate::api::admin::{AuditAnswer, TrialAnswer};
use crate::http::{Access, AdminAuth, ApiError, actor, parse_json, require_admin, uploaded_policy};
use crate::serve::limit_bodies;
use locus_policy::{LoadOptions, PromoteError, TrialError, TrialReport, take_trial_settings};

/// The admin routes over `gw`.
pub fn admin_router(gw: Arc<Gateway>) -> Router {
    let limits = &gw.options.limits;
    let rest = Router::new()
        .route("/admin/policy", get(policy_info))
        .route("/admin/policy/rollback", post(rollback))
        .route("/admin/policy/trial", get(trial))
        .route("/admin/policy/promote", post(promote))
        .route("/admin/policy/abort", post(abort))
        .route("/admin/audit", get(audit))
        .route("/admin/workers", get(list_workers).post(add_worker).delete(remove_worker))
        .route("/admin/feedback", get(feedback))
        .route("/admin/admission", get(admission_info))
        .route("/admin/admission/rollback", post(admission_rollback))
        .route("/admin/api-keys/reload", post(reload_keys));
    let upload = Router::new()
        .route("/admin/policy", put(swap_policy))
        .route("/admin/admission", put(swap_admission));
    let auth = AdminAuth { token: gw.options.admin_token.clone(), access: Access::TokenRequired };
    // The token is checked before a body is read: an upload may be tens of MB.
    limit_bodies(rest, limits, limits.max_body_bytes)
        .merge(limit_bodies(upload, limits, gw.options.max_upload_bytes))
        .layer(from_fn_with_state(auth, require_admin))
        .with_state(gw)
}

async fn policy_info(State(gw): State<Arc<Gateway>>) -> Response {
    Json(json!({"policy": gw.policy.info(), "total_faults": gw.policy.total_faults(),
                "rollbacks": gw.policy.rollbacks()}))
    .into_response()
}

/// `PUT /admin/policy`: the body is a component (or empty with `?name=<built-in>`). With
/// `locus.shadow=true` or `locus.canary=PERCENT` it is tried beside the serving policy
/// instead of replacing it (see [`take_trial_settings`] for the rules' settings); every
/// other query parameter is a setting for `configure`.
async fn swap_policy(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(mut q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let source = match uploaded_policy(&body, &mut q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let mut settings: Vec<(String, String)> = q.into_iter().collect();
    let trial = match take_trial_settings(&mut settings) {
        Ok(t) => t,
        Err(e) => return ApiError::invalid(e.param, e.message).into_response(),
    };
    let by = actor(&headers);
    let opts = LoadOptions::with_settings(settings);
    let g = gw.clone();
    // Compiling takes tens of milliseconds: off the async threads.
    let done = tokio::task::spawn_blocking(move || match trial {
        None => g
            .policy
            .swap(&source, &opts, &by)
            .map(|info| json!({"swapped": true, "policy": info}))
            .map_err(TrialError::from),
        Some((mode, rules)) => g
            .policy
            .try_candidate(&source, &opts, mode, rules, &by)
            .map(|report| json!({"trial": named(report, &g.registry)})),
    })
    .await;
    match done {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(TrialError::Load(e))) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            .with_code("policy_rejected")
            .into_response(),
        Ok(Err(e @ TrialError::Running(_))) => ApiError::new(StatusCode::CONFLICT, e.to_string())
            .with_code("trial_running")
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// The admission policy, the queue and the slots.
async fn admission_info(State(gw): State<Arc<Gateway>>) -> Response {
    let a = gw.queue.admission();
    Json(json!({
        "policy": a.info(),
        "total_faults": a.total_faults(),
        "queueing": gw.queueing(),
        "queued": gw.queue.queued(),
        "dispatched": gw.queue.dispatched(),
        "slots": gw.slots().total,
    }))
    .into_response()
}

/// `PUT /admin/admission`: a component of the `admission` world (or empty with
/// `?name=<built-in>`), query parameters as its settings. Shadow and canary are not
/// offered: one queue has one order.
async fn swap_admission(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(mut q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let source = match uploaded_policy(&body, &mut q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let settings: Vec<(String, String)> = q.into_iter().collect();
    if let Some((k, _)) = settings.iter().find(|(k, _)| k == "locus.shadow" || k == "locus.canary")
    {
        let msg =
            "an admission policy cannot be tried as a shadow or canary: one queue has one order";
        return ApiError::invalid(k.as_str(), msg).into_response();
    }
    let by = actor(&headers);
    let opts = LoadOptions::with_settings(settings);
    let g = gw.clone();
    // Compiling takes tens of milliseconds: off the async threads.
    let done =
        tokio::task::spawn_blocking(move || g.queue.admission().swap(&source, &opts, &by)).await;
    match done {
        Ok(Ok(info)) => Json(json!({"swapped": true, "policy": info})).into_response(),
        Ok(Err(e)) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            .with_code("policy_rejected")
            .into_response(),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn admission_rollback(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let info = gw.queue.admission().rollback(&actor(&headers));
    Json(json!({"rolled_back": true, "policy": info})).into_response()
}

/// Re-reads `--api-keys`; on an error the keys in use are kept.
async fn reload_keys(State(gw): State<Arc<Gateway>>) -> Response {
    if !gw.keys.enabled() {
        return ApiError::new(StatusCode::CONFLICT, "the router runs without --api-keys")
            .with_code("no_api_keys")
            .into_response();
    }
    match gw.keys.reload() {
        Ok(n) => Json(json!({"reloaded": true, "keys": n})).into_response(),
        Err(e) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            .with_code("api_keys_rejected")
            .into_response(),
    }
}

async fn rollback(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    Json(json!({"rolled_back": true, "policy": gw.policy.rollback(&actor(&headers))}))
        .into_response()
}

fn no_trial() -> Response {
    ApiError::new(StatusCode::CONFLICT, PromoteError::NoTrial.to_string())
        .with_code("no_trial")
        .into_response()
}

/// A report with worker ids replaced by the workers' URLs where the router knows them.
fn named(mut report: TrialReport, registry: &Registry) -> TrialReport {
    let urls: BTreeMap<String, String> =
        registry.all().iter().map(|b| (b.id().to_string(), b.url.clone())).collect();
    for side in [&mut report.live, &mut report.candidate] {
        side.per_worker = std::mem::take(&mut side.per_worker)
            .into_iter()
            .map(|(id, n)| (urls.get(&id).cloned().unwrap_or(id), n))
            .collect();
    }
    report
}

/// The running trial side by side (or the last one, with how it ended).
async fn trial(State(gw): State<Arc<Gateway>>) -> Response {
    let report = gw.policy.trial().map(|r| named(r, &gw.registry));
    Json(TrialAnswer { trial: report }).into_response()
}

async fn promote(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match gw.policy.promote(&actor(&headers)) {
        Ok((info, report)) => Json(json!({"promoted": true, "policy": info,
                                          "trial": named(report, &gw.registry)}))
        .into_response(),
        Err(PromoteError::NoTrial) => no_trial(),
        Err(e @ PromoteError::Failed(_)) => ApiError::new(StatusCode::CONFLICT, e.to_string())
            .with_code("candidate_failed")
            .into_response(),
    }
}

async fn abort(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match gw.policy.abort(&actor(&headers)) {
        Some(report) => Json(json!({"aborted": true, "policy": gw.policy.info(),
                        "trial": named(report, &gw.registry)}))
        .into_response(),
        None => no_trial(),
    }
}

/// The last policy changes, oldest first.
async fn audit(State(gw): State<Arc<Gateway>>) -> Response {
    Json(AuditAnswer { entries: gw.policy.audit().recent() }).into_response()
}

async fn list_workers(State(gw): State<Arc<Gateway>>) -> Response {
    let kv = gw.policy.kv();
    let list: Vec<BackendInfo> = gw
        .registry
        .all()
        .iter()
        .map(|b| {
            let mut info: BackendInfo = b.info();
            info.kv_blocks = Some(kv.blocks(b.id()));
            info
        })
        .collect();
    Json(json!({"workers": list})).into_response()
}

/// The last completions told to the routing policy, oldest first.
async fn feedback(State(gw): State<Arc<Gateway>>) -> Response {
    Json(json!({"completions": gw.feedback.recent()})).into_response()
}

#[derive(Deserialize)]
struct WorkerBody {
    url: String,
}

async fn add_worker(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    let b: WorkerBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let url = match worker_base_url(&b.url) {
        Ok(u) => u,
        Err(why) => return ApiError::invalid("url", why).into_response(),
    };
    let added = gw.registry.add(&url);
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(json!({"added": added, "url": url}))).into_response()
}

async fn remove_worker(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(url) = q.get("url") else {
        return ApiError::invalid("url", "give the worker as ?url=...").into_response();
    };
    if gw.registry.remove(url) {
        Json(json!({"removed": true, "url": url})).into_response()
    } else {
        ApiError::new(StatusCode::NOT_FOUND, format!("no worker `{url}`")).into_response()
    }
}
