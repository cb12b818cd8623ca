//! The router's admin API, served on its own listener (loopback by default), every route
//! behind the bearer token (disabled without one).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{BackendInfo, Gateway};
use crate::http::{Access, AdminAuth, ApiError, parse_json, require_admin, swap_uploaded};
use crate::policy::LoadOptions;
use crate::serve::limit_bodies;

/// The admin routes over `gw`.
pub fn admin_router(gw: Arc<Gateway>) -> Router {
    let limits = &gw.options.limits;
    let rest = Router::new()
        .route("/admin/policy", get(policy_info))
        .route("/admin/policy/rollback", post(rollback))
        .route("/admin/workers", get(list_workers).post(add_worker).delete(remove_worker))
        .route("/admin/feedback", get(feedback));
    let upload = Router::new().route("/admin/policy", put(swap_policy));
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

/// `PUT /admin/policy`: the body is a component (or empty with `?name=<built-in>`); every
/// other query parameter is a setting for `configure`.
async fn swap_policy(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    swap_uploaded(&body, q, move |source, settings| {
        gw.policy.swap(&source, &LoadOptions::with_settings(settings))
    })
    .await
}

async fn rollback(State(gw): State<Arc<Gateway>>) -> Response {
    Json(json!({"rolled_back": true, "policy": gw.policy.rollback()})).into_response()
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

fn check_url(url: &str) -> Result<(), ApiError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ApiError::invalid("url", format!("`{url}` is not an http(s) URL"))),
    }
}

async fn add_worker(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    let b: WorkerBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_url(&b.url) {
        return e.into_response();
    }
    let added = gw.registry.add(&b.url);
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(json!({"added": added, "url": b.url}))).into_response()
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
