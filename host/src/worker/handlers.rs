//! The generation endpoints: read the body into a [`Job`](crate::api::Job), admit it, and answer whole in
//! the endpoint's own shape (or hand it to [`super::stream`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::answer::Answer;
use super::auth;
use super::kv_transfer;
use super::state::Worker;
use super::stream;
use crate::api::KV_SOURCE_USED;
use crate::api::{ApiError, Endpoint, Job, read_job};
use crate::http::{RequestId, tagged};

/// `POST /generate` (SGLang).
pub(super) async fn generate(
    w: State<Arc<Worker>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(w.0, Endpoint::Generate, id, &headers, body).await
}

/// `POST /v1/completions` (OpenAI).
pub(super) async fn completions(
    w: State<Arc<Worker>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(w.0, Endpoint::Completions, id, &headers, body).await
}

/// `POST /v1/chat/completions` (OpenAI).
pub(super) async fn chat(
    w: State<Arc<Worker>>,
    id: RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(w.0, Endpoint::Chat, id, &headers, body).await
}

/// Sets its flag when dropped: a handler future dropped before it finished means that its
/// client has gone, and the generation it started should stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn answer(
    w: Arc<Worker>,
    endpoint: Endpoint,
    rid: RequestId,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let resp = respond(w, endpoint, &rid, headers, body).await;
    tagged(resp, &rid)
}

async fn respond(
    w: Arc<Worker>,
    endpoint: Endpoint,
    rid: &RequestId,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let job = auth::priority(&w, headers)
        .and_then(|priority| Ok(Job { priority, ..read_job(endpoint, &body)? }));
    let admitted = match job {
        Ok(job) => w.admit(job).await,
        Err(e) => Err(e),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(e) => {
            w.metrics.record(endpoint, &Err(e.clone()));
            return e.into_response();
        }
    };
    let admitted = admitted.with_source(kv_transfer::kv_source(&w, headers));
    let id = admitted.job.rid.clone().unwrap_or_else(|| rid.0.clone());
    if admitted.job.stream {
        return stream::respond(w, admitted, id);
    }
    let job = admitted.job.clone();
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    // A task of its own: if the client leaves, this handler is dropped, and the run
    // (told by `cancel`) still ends, frees the model and is counted.
    let (runner, flag) = (w.clone(), cancel.0.clone());
    let run = tokio::spawn(async move {
        let result = runner.execute(admitted, None, flag).await;
        runner.metrics.record(endpoint, &result);
        result
    });
    let result = run.await.unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    match result {
        Ok(o) => {
            let answer = Answer { w: &w, id: &id, outcome: &o };
            let mut resp = match job.endpoint {
                Endpoint::Generate => Json(answer.generate()).into_response(),
                Endpoint::Completions => Json(answer.completion()).into_response(),
                Endpoint::Chat => Json(answer.chat()).into_response(),
            };
            if let Some(v) = o.kv_source.as_deref().and_then(|s| s.parse().ok()) {
                resp.headers_mut().insert(KV_SOURCE_USED, v);
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}
