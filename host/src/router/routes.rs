//! The router's public endpoints: the three generation APIs (read and checked here, so a
//! bad request is answered without a hop), the model list, health and metrics.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use locus_policy::SESSION_BYTES_MAX;
use serde_json::json;

use super::gateway::Gateway;
use crate::api::{ApiError, Endpoint, read_job};
use crate::http::{RequestId, render_metrics, tagged};
use crate::serve::limit_bodies;

/// The session key in header `name`, if one is given: 400 naming the header when it is not
/// visible ASCII or longer than [`SESSION_BYTES_MAX`].
fn session(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(name) else { return Ok(None) };
    let v =
        v.to_str().map_err(|_| ApiError::invalid(name, "the session id must be visible ASCII"))?;
    if v.len() > SESSION_BYTES_MAX {
        let msg = format!("the session id is longer than {SESSION_BYTES_MAX} bytes");
        return Err(ApiError::invalid(name, msg));
    }
    Ok(Some(v.to_string()).filter(|v| !v.is_empty()))
}

async fn route(
    gw: Arc<Gateway>,
    endpoint: Endpoint,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Who asks comes first: a request without a valid key is refused before its body is
    // read.
    let who = match gw.keys.identify(&headers, &gw.options.flow) {
        Ok(who) => who,
        Err(e) => {
            gw.metrics.requests.with_label_values(&[endpoint.name(), e.status.as_str()]).inc();
            return tagged(e.into_response(), &id);
        }
    };
    let session = match session(&headers, &gw.options.session_header) {
        Ok(s) => s,
        Err(e) => {
            gw.metrics.requests.with_label_values(&[endpoint.name(), e.status.as_str()]).inc();
            return tagged(e.into_response(), &id);
        }
    };
    let resp = match read_job(endpoint, &body) {
        Ok(job) => gw.forward(&job, &id.0, &who, session, body).await,
        Err(e) => {
            gw.metrics.requests.with_label_values(&[endpoint.name(), e.status.as_str()]).inc();
            e.into_response()
        }
    };
    tagged(resp, &id)
}

pub(super) async fn generate(
    gw: State<Arc<Gateway>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(gw.0, Endpoint::Generate, id, headers, body).await
}

pub(super) async fn completions(
    gw: State<Arc<Gateway>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(gw.0, Endpoint::Completions, id, headers, body).await
}

pub(super) async fn chat(
    gw: State<Arc<Gateway>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    route(gw.0, Endpoint::Chat, id, headers, body).await
}

/// The first healthy worker's model list.
pub(super) async fn models(State(gw): State<Arc<Gateway>>) -> Response {
    for b in gw.registry.healthy() {
        if let Ok(r) = gw.client.get(format!("{}/v1/models", b.url)).send().await
            && r.status().is_success()
            && let Ok(v) = r.json::<crate::api::openai::ModelList>().await
        {
            return Json(v).into_response();
        }
    }
    ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, "no healthy worker", 1).into_response()
}

pub(super) async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let all = gw.registry.all();
    let up = all.iter().filter(|b| b.healthy()).count();
    let draining = gw.draining();
    let body = json!({"healthy_workers": up, "workers": all.len(), "draining": draining});
    let ready = up > 0 && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

pub(super) async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    // The gauges set here are reset first: one scrape at a time, so that no scrape renders
    // another's half-set gauges.
    let _one_scrape = gw.metrics.scrape.lock();
    let info = gw.policy.info();
    gw.metrics.policy_info.reset();
    gw.metrics.policy_info.with_label_values(&[&info.name, &info.sha256]).set(1);
    gw.metrics.policy_faults.set(gw.policy.total_faults() as i64);
    gw.metrics.kv_blocks.set(gw.policy.kv().total_blocks() as i64);
    gw.metrics.forget_gone_workers(&gw.registry.all());
    let queued = gw.queue.queued();
    for (band, n) in queued.iter().enumerate() {
        gw.metrics.flow.waiting.with_label_values(&[&band.to_string()]).set(i64::from(*n));
    }
    let admission = gw.queue.admission().info();
    gw.metrics.admission_info.reset();
    gw.metrics.admission_info.with_label_values(&[&admission.name, &admission.sha256]).set(1);
    gw.metrics.admission_faults.set(gw.queue.admission().total_faults() as i64);
    let trial = gw.policy.trial().filter(|t| t.ended.is_none());
    gw.metrics.set_trial(trial.as_ref());
    render_metrics(&gw.metrics.registry)
}

impl Gateway {
    /// The public HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let routes = Router::new()
            .route(Endpoint::Generate.path(), post(generate))
            .route(Endpoint::Completions.path(), post(completions))
            .route(Endpoint::Chat.path(), post(chat))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(metrics));
        let limits = &self.options.limits;
        limit_bodies(routes, limits, limits.max_body_bytes)
            .fallback(crate::http::not_found)
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .with_state(self.clone())
    }
}
