//! Who may ask what of a worker beyond generating text. The cluster token (in
//! [`CLUSTER_TOKEN`], shared by a cluster's routers and workers) marks a request as the
//! cluster's own: only such a request may name a KV source, read `/kv/export`, or set the
//! rank it is scheduled at ([`PRIORITY`]). A worker without a cluster token exports
//! nothing and honours no source, and takes ranks from anyone who can reach it (a local
//! cluster on loopback, where the router is the only client).

use axum::http::{HeaderMap, StatusCode};

use super::state::Worker;
use crate::api::{ApiError, CLUSTER_TOKEN, PRIORITY, read_priority};
use crate::http::{Access, bearer, check_admin, constant_time_eq};

/// This worker's cluster token, if it has one.
fn cluster_token(w: &Worker) -> Option<&str> {
    w.options.cluster_token.as_deref().filter(|t| !t.is_empty())
}

/// Whether `headers` carry this worker's cluster token (false when it has none).
pub(super) fn from_cluster(w: &Worker, headers: &HeaderMap) -> bool {
    let given = headers.get(CLUSTER_TOKEN).map(|v| v.as_bytes());
    given.zip(cluster_token(w)).is_some_and(|(g, t)| constant_time_eq(g, t.as_bytes()))
}

/// Whether `headers` carry this worker's cluster token; `Err` says why not.
pub(super) fn cluster_auth(w: &Worker, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = cluster_token(w) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "KV transfer is off: start the worker with --cluster-token (or LOCUS_CLUSTER_TOKEN)",
        ));
    };
    match headers.get(CLUSTER_TOKEN).map(|v| v.as_bytes()) {
        Some(given) if constant_time_eq(given, expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong cluster token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("missing `{CLUSTER_TOKEN}` header"),
        )),
    }
}

/// `/kv_events` tells which prompts are hot: behind the cluster token (in
/// [`CLUSTER_TOKEN`] or as a bearer token) when the worker has one, the admin token serving
/// too; with neither configured it is open.
pub(super) fn events_auth(w: &Worker, headers: &HeaderMap) -> Result<(), ApiError> {
    let admin = w.options.admin_token.as_deref();
    let Some(cluster) = cluster_token(w) else {
        return check_admin(headers, admin, Access::OpenWithoutToken);
    };
    let given =
        [headers.get(CLUSTER_TOKEN).map(|v| v.as_bytes()), bearer(headers).map(str::as_bytes)];
    if given.iter().flatten().any(|t| constant_time_eq(t, cluster.as_bytes())) {
        return Ok(());
    }
    if admin.is_some() && check_admin(headers, admin, Access::TokenRequired).is_ok() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("`/kv_events` needs the cluster token (in `{CLUSTER_TOKEN}`) or the admin token"),
    ))
}

/// The rank a request is scheduled at: its [`PRIORITY`] when the cluster sent it (or this
/// worker has no cluster token), else 0, counted: a client that reaches a worker directly
/// cannot jump the queue its router keeps. A malformed rank from the cluster is a 400.
pub(super) fn priority(w: &Worker, headers: &HeaderMap) -> Result<u8, ApiError> {
    if !headers.contains_key(PRIORITY) {
        return Ok(0);
    }
    if cluster_token(w).is_some() && !from_cluster(w, headers) {
        w.metrics.priority_ignored.inc();
        return Ok(0);
    }
    read_priority(headers)
}
