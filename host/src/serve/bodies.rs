//! Request bodies buffered before a handler runs, under a size limit (413, at once when
//! `Content-Length` says so) and a read deadline (408).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;

use super::limits::ServeLimits;
use crate::http::ApiError;

/// Buffers the body of every request to `router`'s routes under `max` bytes and
/// `limits.body_read_timeout` before its handler runs (see [`serve`](super::serve)). Applied per group
/// of routes, so that an upload endpoint can take more than the API endpoints.
pub fn limit_bodies<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limits: &ServeLimits,
    max: usize,
) -> Router<S> {
    let limits = ServeLimits { max_body_bytes: max, ..limits.clone() };
    router
        .layer(from_fn_with_state(limits, buffer_body))
        // The body is buffered and limited above; `Bytes` and friends must not apply
        // axum's own 2 MB default on top.
        .layer(DefaultBodyLimit::max(max))
}

/// Reads the whole body under `max_body_bytes` and `body_read_timeout` before the
/// handler runs, so that limits answer in the API's error shape and a slow body never
/// reaches a handler.
async fn buffer_body(State(limits): State<ServeLimits>, req: Request, next: Next) -> Response {
    let max = limits.max_body_bytes;
    let declared = content_length(req.headers());
    if let Some(len) = declared.filter(|&len| len > max as u64) {
        return closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is {len} bytes; the limit is {max} bytes (max_body_bytes)"),
        );
    }
    let (parts, body) = req.into_parts();
    // `declared` is at most `max` here; the buffer grows as bytes arrive rather than being
    // reserved on the client's word.
    let capacity = declared.map_or(0, |len| (len as usize).min(64 << 10));
    // Most bodies arrive with their head: read them without arming a timer.
    let mut read = std::pin::pin!(read_body(body, max, capacity));
    let read = match futures_util::FutureExt::now_or_never(&mut read) {
        Some(done) => Ok(done),
        None => tokio::time::timeout(limits.body_read_timeout, read).await,
    };
    match read {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(BodyError::TooLarge)) => closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {max} bytes (max_body_bytes)"),
        ),
        Ok(Err(BodyError::Read(e))) => {
            closing(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
        }
        Err(_) => closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body did not arrive within {:?} (body_read_timeout)",
                limits.body_read_timeout
            ),
        ),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

async fn read_body(body: Body, max: usize, capacity: usize) -> Result<Bytes, BodyError> {
    let mut chunks = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// An API error after which the connection closes: the rest of the body is unread, so
/// the connection cannot carry another request. (If the client is already gone, hyper
/// fails to write this and drops the connection.)
fn closing(status: StatusCode, message: String) -> Response {
    let mut response = ApiError::new(status, message).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
