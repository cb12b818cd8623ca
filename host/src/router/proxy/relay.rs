//! Passing a worker's answer back: its status and headers (with the worker and the time
//! spent routing), then a JSON answer read whole, to learn its counts for `observe`, or an
//! event stream handed to `stream` to relay as it arrives.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::attempt::Attempt;
use super::counts::Counts;
use super::outcome::Seen;
use super::stream;
use crate::api::{ApiError, Endpoint};
use crate::router::flow::Ticket;
use crate::router::gateway::Gateway;
use crate::router::registry::{Backend, InFlightGuard};

/// Response header with the microseconds the router spent choosing the worker (tokenizing,
/// block hashes and policy calls, over all attempts), so a client can tell routing cost
/// from serving cost.
pub const ROUTE_US: &str = "x-locus-route-us";

impl Gateway {
    /// Passes a worker's answer back: JSON is read whole (to learn its counts for
    /// `observe`), an event stream is relayed chunk by chunk as it arrives.
    pub(super) async fn relay(
        self: &Arc<Self>,
        endpoint: Endpoint,
        mut attempt: Attempt<'_>,
        guard: InFlightGuard,
        ticket: Option<Ticket>,
        r: reqwest::Response,
    ) -> Response {
        let status = r.status();
        let started = attempt.started;
        attempt.done.status = status.as_u16();
        let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
        let is_stream = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        self.metrics.requests.with_label_values(&[endpoint.name(), status.as_str()]).inc();
        let mut builder = Response::builder().status(status.as_u16());
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        if let Some(retry) = r.headers().get(header::RETRY_AFTER) {
            builder = builder.header(header::RETRY_AFTER, retry);
        }
        builder = builder.header("x-locus-worker", guard.0.url.as_str());
        builder = builder.header(ROUTE_US, attempt.route_us);
        if is_stream {
            return stream::relay(self, endpoint, attempt, guard, ticket, r, builder);
        }
        let bytes = r.bytes().await;
        let backend: Arc<Backend> = guard.0.clone();
        drop(guard);
        let latency = started.elapsed();
        self.metrics.latency.with_label_values(&[endpoint.name()]).observe(latency.as_secs_f64());
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                attempt.done.outcome = Seen::BodyError(&e).verdict().outcome;
                attempt.end(true);
                return ApiError::new(StatusCode::BAD_GATEWAY, format!("{}: {e}", backend.url))
                    .into_response();
            }
        };
        let done = &mut attempt.done;
        done.latency_us = latency.as_micros() as u64;
        done.outcome = Seen::Answer(status).verdict().outcome;
        if let Some(c) = Counts::of(&bytes) {
            c.fill(done);
            // The worker's own time from arrival to first token, placed on the router's
            // clock: what came before the worker started on it, plus that time.
            if let Some(ttft) = c.ttft {
                let after_first = (c.e2e - ttft).max(0.0);
                done.ttft_us = Some(done.latency_us.saturating_sub((after_first * 1e6) as u64));
            }
        }
        attempt.end(true);
        // The slot is free once the answer is read.
        drop(ticket);
        builder
            .body(Body::from(bytes))
            .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
    }
}
