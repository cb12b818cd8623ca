//! The router's admin API, served on its own listener (loopback by default), every route
//! behind the bearer token; and the policy file watch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{BackendInfo, Gateway};
use crate::http::{ApiError, check_bearer, parse_json, uploaded_policy};
use crate::policy::{LoadOptions, PolicySource};

/// The admin routes over `gw`.
pub fn admin_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/admin/policy", get(policy_info).put(swap_policy))
        .route("/admin/policy/rollback", post(rollback))
        .route("/admin/workers", get(list_workers).post(add_worker).delete(remove_worker))
        .with_state(gw)
}

fn auth(gw: &Gateway, headers: &HeaderMap) -> Result<(), ApiError> {
    check_bearer(headers, gw.options.admin_token.as_deref())
}

async fn policy_info(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    Json(json!({"policy": gw.policy.info(), "total_faults": gw.policy.total_faults(),
                "rollbacks": gw.policy.rollbacks()}))
    .into_response()
}

/// `PUT /admin/policy`: the body is a component (or empty with `?name=<built-in>`); every
/// other query parameter is a setting for `configure`.
async fn swap_policy(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(mut q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    let source = match uploaded_policy(&body, &mut q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let opts = LoadOptions::with_settings(q.into_iter().collect());
    let gw2 = gw.clone();
    // Compiling takes tens of milliseconds: keep it off the async threads.
    let result = tokio::task::spawn_blocking(move || gw2.policy.swap(&source, &opts)).await;
    match result {
        Ok(Ok(info)) => Json(json!({"swapped": true, "policy": info})).into_response(),
        Ok(Err(e)) => ApiError {
            field: Some(e.step.to_string()),
            ..ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        }
        .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn rollback(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    Json(json!({"rolled_back": true, "policy": gw.policy.rollback()})).into_response()
}

async fn list_workers(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    let list: Vec<BackendInfo> = gw
        .backends()
        .iter()
        .map(|b| BackendInfo {
            url: b.url.clone(),
            id: format!("{:016x}", b.id),
            healthy: b.healthy(),
            in_flight: b.in_flight.load(std::sync::atomic::Ordering::Relaxed),
        })
        .collect();
    Json(json!({"workers": list})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerBody {
    url: String,
}

fn check_url(url: &str) -> Result<(), ApiError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ApiError::invalid("url", format!("`{url}` is not an http(s) URL"))),
    }
}

async fn add_worker(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    let b: WorkerBody = match parse_json(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_url(&b.url) {
        return e.into_response();
    }
    let added = gw.add_backend(&b.url);
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(json!({"added": added, "url": b.url}))).into_response()
}

async fn remove_worker(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(e) = auth(&gw, &headers) {
        return e.into_response();
    }
    let Some(url) = q.get("url") else {
        return ApiError::invalid("url", "give the worker as ?url=...").into_response();
    };
    if gw.remove_backend(url) {
        Json(json!({"removed": true, "url": url})).into_response()
    } else {
        ApiError::new(StatusCode::NOT_FOUND, format!("no worker `{url}`")).into_response()
    }
}

/// Swaps the policy whenever `path` changes on disk, with the same checks as a `PUT`;
/// a file that fails them is logged and the serving policy stays.
pub fn watch(gw: Arc<Gateway>, path: PathBuf) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create()) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the policy file");
            return;
        }
    };
    // Watch the directory: editors and `cp` replace files rather than write them in place.
    let dir =
        path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, path = %dir.display(), "cannot watch the policy file");
        return;
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Let a burst of events (truncate, write, close) settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if last.as_ref() == Some(&bytes) {
                continue;
            }
            last = Some(bytes);
            let source = PolicySource::File(path.clone());
            let opts = LoadOptions::with_settings(gw.options.settings.clone());
            let g = gw.clone();
            match tokio::task::spawn_blocking(move || g.policy.swap(&source, &opts)).await {
                Ok(Ok(info)) => {
                    tracing::info!(policy = %info.name, sha256 = %info.sha256, "policy file changed: swapped")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policy file changed but was rejected; the old policy keeps serving")
                }
                Err(e) => tracing::error!(error = %e, "policy reload failed"),
            }
        }
    });
}
