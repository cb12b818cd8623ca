//! Sending a request on: the policy picks a worker, the body goes there unchanged (with
//! the request id), a refused connection or a 5xx answer is retried on the policy's next
//! choice among the rest, and the answer comes back (streams relayed as they arrive).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::Gateway;
use super::registry::{Backend, InFlightGuard};
use crate::api::{ApiError, Endpoint, Job, REQUEST_ID};
use crate::policy::{Completion, Request, workers};

/// Prompts longer than this are shown to the policy by their leading part only.
pub const ROUTING_PROMPT_BYTES: usize = 8192;

impl Gateway {
    /// Routes `job` (read from `body`) and relays the chosen worker's answer.
    pub(super) async fn forward(
        self: &Arc<Self>,
        job: &Job,
        request_id: &str,
        body: Bytes,
    ) -> Response {
        let started = Instant::now();
        let endpoint = job.endpoint;
        let req = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            prompt: job.routing_prompt(ROUTING_PROMPT_BYTES),
            max_new_tokens: job.max_new_tokens,
        };
        let mut candidates = self.registry.healthy();
        let mut last_error = None;
        for attempt in 0..=self.options.max_retries {
            let ws = workers(candidates.iter().map(|b| (b.id, b.in_flight())));
            let Some(decision) = self.policy.route(&req, &ws) else { break };
            if decision.fault.is_some() {
                self.metrics.fallbacks.inc();
            }
            let backend = candidates.remove(decision.index);
            self.metrics.decisions.with_label_values(&[&backend.url]).inc();
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let guard = backend.begin();
            let sent = self
                .client
                .post(format!("{}{}", backend.url, endpoint.path()))
                .header(header::CONTENT_TYPE, "application/json")
                .header(REQUEST_ID, request_id)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if !r.status().is_server_error() => {
                    return self.relay(endpoint, &req, guard, r, started).await;
                }
                Ok(r) => {
                    last_error = Some(format!("{} answered {}", backend.url, r.status()));
                    if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                        backend.failed(self.registry.fail_threshold, "5xx answer");
                    }
                }
                Err(e) => {
                    // A refused connection is certain: mark it down now, not after N checks.
                    let threshold = if e.is_connect() { 1 } else { self.registry.fail_threshold };
                    backend.failed(threshold, &e.to_string());
                    last_error = Some(format!("{}: {e}", backend.url));
                }
            }
        }
        self.metrics.requests.with_label_values(&[endpoint.name(), "503"]).inc();
        let msg = match last_error {
            Some(e) => format!("no worker could serve the request (last error: {e})"),
            None => "no healthy worker".into(),
        };
        ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, msg, 1).into_response()
    }

    /// Passes a worker's answer back: JSON is read whole (to learn its token counts for
    /// `observe`), an event stream is relayed chunk by chunk as it arrives.
    async fn relay(
        self: &Arc<Self>,
        endpoint: Endpoint,
        req: &Request,
        guard: InFlightGuard,
        r: reqwest::Response,
        started: Instant,
    ) -> Response {
        let status = r.status();
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
        if is_stream {
            let url = guard.0.url.clone();
            let done = StreamDone {
                guard,
                gw: self.clone(),
                endpoint,
                req_id: req.id,
                started,
                counts: FinalCounts::default(),
                failed: false,
            };
            // A worker lost mid-stream: the client still gets an error event and `[DONE]`,
            // not a cut connection.
            let stream = r.bytes_stream().scan(done, move |done, chunk| {
                let item = match chunk {
                    _ if done.failed => return futures_util::future::ready(None),
                    Ok(bytes) => {
                        done.counts.watch(&bytes);
                        bytes
                    }
                    Err(e) => {
                        done.failed = true;
                        tracing::warn!(worker = %url, error = %e, "stream from worker broke");
                        let err = ApiError::new(StatusCode::BAD_GATEWAY, format!("{url}: {e}"));
                        let json = serde_json::to_string(&err.body()).unwrap_or_default();
                        Bytes::from(format!("\n\ndata: {json}\n\ndata: [DONE]\n\n"))
                    }
                };
                futures_util::future::ready(Some(Ok::<_, std::convert::Infallible>(item)))
            });
            return builder
                .body(Body::from_stream(stream))
                .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response());
        }
        let bytes = r.bytes().await;
        let backend: Arc<Backend> = guard.0.clone();
        drop(guard);
        let latency = started.elapsed();
        self.metrics.latency.with_label_values(&[endpoint.name()]).observe(latency.as_secs_f64());
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_GATEWAY, format!("{}: {e}", backend.url))
                    .into_response();
            }
        };
        let (prompt_tokens, cached_tokens) = token_counts(&bytes).unwrap_or((0, 0));
        self.policy.observe(&Completion {
            request_id: req.id,
            worker_id: backend.id,
            ok: status.is_success(),
            latency_us: latency.as_micros() as u64,
            prompt_tokens,
            cached_tokens,
        });
        builder
            .body(Body::from(bytes))
            .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
    }
}

/// Ends a streamed request's accounting when its body is dropped (finished or cut),
/// with the counts its final event carried.
struct StreamDone {
    guard: InFlightGuard,
    gw: Arc<Gateway>,
    endpoint: Endpoint,
    req_id: u64,
    started: Instant,
    /// What the final event said.
    counts: FinalCounts,
    /// The worker's stream broke.
    failed: bool,
}

/// Follows an event stream event by event, keeping the counts of the final one.
#[derive(Default)]
struct FinalCounts {
    /// The bytes of the event not yet complete.
    event: Vec<u8>,
    /// Prompt and cached tokens from the final event, once it has passed.
    counts: Option<(u32, u32)>,
}

impl FinalCounts {
    fn watch(&mut self, bytes: &[u8]) {
        self.event.extend_from_slice(bytes);
        while let Some(end) = self.event.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.event.drain(..end + 2).collect();
            // Only a finished answer's `meta_info` (or `usage`) has `cached_tokens`.
            let Some(data) = event.strip_prefix(b"data: ") else { continue };
            if data.windows(15).any(|w| w == b"\"cached_tokens\"") {
                self.counts = token_counts(data).or(self.counts);
            }
        }
    }
}

impl Drop for StreamDone {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        self.gw
            .metrics
            .latency
            .with_label_values(&[self.endpoint.name()])
            .observe(latency.as_secs_f64());
        // A stream that ended without its final counts (broken, cut by the client, or an
        // error event) did not succeed; the contract has no "unknown", so its counts are 0.
        let counts = self.counts.counts;
        let (prompt_tokens, cached_tokens) = counts.unwrap_or((0, 0));
        self.gw.policy.observe(&Completion {
            request_id: self.req_id,
            worker_id: self.guard.0.id,
            ok: counts.is_some() && !self.failed,
            latency_us: latency.as_micros() as u64,
            prompt_tokens,
            cached_tokens,
        });
    }
}

/// Prompt and cached token counts of an answer or a final event: `meta_info` (every locus
/// answer has it), else OpenAI's `usage`; `None` when neither is there.
fn token_counts(body: &[u8]) -> Option<(u32, u32)> {
    #[derive(serde::Deserialize, Default)]
    struct Counts {
        meta_info: Option<Meta>,
        usage: Option<crate::api::openai::Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        prompt_tokens: usize,
        cached_tokens: usize,
    }
    let c: Counts = serde_json::from_slice(body).ok()?;
    let (p, cached) = match (c.meta_info, c.usage) {
        (Some(m), _) => (m.prompt_tokens, m.cached_tokens),
        (None, Some(u)) => {
            (u.prompt_tokens, u.prompt_tokens_details.map_or(0, |d| d.cached_tokens))
        }
        (None, None) => return None,
    };
    Some((p.min(u32::MAX as usize) as u32, cached.min(u32::MAX as usize) as u32))
}

#[cfg(test)]
mod tests {
    use super::FinalCounts;

    #[test]
    fn the_final_events_counts_are_read_however_the_stream_is_cut() {
        let stream = concat!(
            "data: {\"text\":\" a\",\"meta_info\":{\"id\":\"x\",\"finish_reason\":null,",
            "\"prompt_tokens\":7,\"completion_tokens\":1}}\n\n",
            "data: {\"text\":\" a b\",\"meta_info\":{\"id\":\"x\",\"finish_reason\":",
            "{\"type\":\"length\",\"length\":2},\"prompt_tokens\":7,\"completion_tokens\":2,",
            "\"cached_tokens\":4,\"cache_hit\":false,\"worker_id\":\"w\",\"e2e_latency\":0.1}}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for cut in [1, 3, 17, 64, stream.len()] {
            let mut f = FinalCounts::default();
            for chunk in stream.chunks(cut) {
                f.watch(chunk);
            }
            assert_eq!(f.counts, Some((7, 4)), "chunks of {cut}");
        }
        // A stream that ends before its final event has no counts.
        let mut f = FinalCounts::default();
        f.watch(&stream[..stream.len() / 2]);
        assert_eq!(f.counts, None);
        // OpenAI's usage chunk counts too.
        let mut f = FinalCounts::default();
        f.watch(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n");
        assert_eq!(f.counts, Some((5, 0)));
    }
}
