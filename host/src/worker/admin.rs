//! The worker's admin endpoints: flush both caches, show and swap the cache policy, show
//! the audit log. With an admin token configured every one of them needs it; without one,
//! swapping is disabled and flushing and showing stay open (SGLang's `/flush_cache` is
//! open). The token is checked by a layer (see `routes`), before any body is read.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::state::Worker;
use crate::api::admin::AuditAnswer;
use crate::http::{actor, swap_uploaded};

/// `POST /flush_cache`: empties both cache levels.
pub(super) async fn flush_cache(State(w): State<Arc<Worker>>) -> Response {
    // The policy is told of every entry dropped: off the async threads.
    if tokio::task::spawn_blocking(move || w.caches.flush()).await.is_err() {
        return crate::api::ApiError::internal("flushing the caches failed").into_response();
    }
    Json(json!({"flushed": true})).into_response()
}

/// `GET /admin/cache-policy`: what serves each cache level.
pub(super) async fn cache_policy_info(State(w): State<Arc<Worker>>) -> Response {
    Json(w.caches.info()).into_response()
}

/// `PUT /admin/cache-policy`: the body is a component (or empty with `?name=<built-in>`);
/// every other query parameter is a setting. Both cache levels change, or neither.
pub(super) async fn swap_cache_policy(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let by = actor(&headers);
    swap_uploaded(&body, q, move |source, settings| w.caches.swap(&source, &settings, &by)).await
}

/// The last cache-policy changes, oldest first.
pub(super) async fn audit(State(w): State<Arc<Worker>>) -> Response {
    Json(AuditAnswer { entries: w.caches.audit().recent() }).into_response()
}
