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
use super::tokens::PromptBlocks;
use crate::api::{ApiError, Endpoint, Job, REQUEST_ID};
use locus_policy::{Ask, Completion, Outcome, Request, Routed, Workers};

/// Prompts longer than this are shown to the policy by their leading part only.
pub const ROUTING_PROMPT_BYTES: usize = 8192;

/// Response header with the microseconds the router spent choosing the worker (tokenizing,
/// block hashes and policy calls, over all attempts), so a client can tell routing cost
/// from serving cost.
pub const ROUTE_US: &str = "x-locus-route-us";

impl Gateway {
    /// What the policy is told about `candidates`: live in-flight counts and each one's
    /// last load report.
    fn view(candidates: &[Arc<Backend>]) -> Workers {
        let mut w = Workers::with_capacity(candidates.len());
        for b in candidates {
            w.ids.push(b.id());
            w.in_flight.push(b.in_flight());
            let clamp = |n: u64| n.min(u64::from(u32::MAX)) as u32;
            // An unknown load is all zeros beside `load-known` false.
            let (age, waiting, running, used, total, tps) = match b.load() {
                Some(r) => {
                    let l = &r.load;
                    let age = r.at.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                    let (used, total) = (clamp(l.kv_blocks_used), clamp(l.kv_blocks_total));
                    (Some(age), l.waiting, l.running, used, total, l.tokens_per_second as f32)
                }
                None => (None, 0, 0, 0, 0, 0.0),
            };
            w.load_known.push(age.is_some());
            w.load_age_ms.push(age.unwrap_or(0));
            w.waiting.push(waiting);
            w.running.push(running);
            w.kv_used_blocks.push(used);
            w.kv_total_blocks.push(total);
            w.tokens_per_second.push(tps);
        }
        w
    }

    /// Tells the policy how an attempt ended, and counts it. `answered`: a worker's answer
    /// was relayed (see [`locus_policy::RouterPolicy::observe`]).
    pub(super) fn observe(&self, done: &Completion, answered: bool, routed: Routed) {
        self.metrics.outcomes.with_label_values(&[outcome_name(done.outcome)]).inc();
        self.feedback.record(done);
        self.policy.observe(done, answered, routed);
    }

    /// Routes `job` (read from `body`) and relays the chosen worker's answer.
    pub(super) async fn forward(
        self: &Arc<Self>,
        job: &Job,
        request_id: &str,
        session: Option<String>,
        body: Bytes,
    ) -> Response {
        let started = Instant::now();
        let endpoint = job.endpoint;
        let mut req = Request::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            job.routing_prompt(ROUTING_PROMPT_BYTES),
            job.max_new_tokens,
        );
        req.session = session;
        let max = self.options.route_tokens;
        let blocks = PromptBlocks { tokens: &self.tokens, prompt: &job.prompt, max };
        let mut ask = Ask::with_blocks(req, &blocks);
        let mut candidates = self.registry.healthy();
        let mut last_error = None;
        // The first attempt's routing time includes tokenizing; retries add only theirs.
        let mut route_from = started;
        let mut route_us = 0u64;
        let mut routed = None;
        for attempt in 0..=self.options.max_retries {
            let ws = Self::view(&candidates);
            let decided = self.policy.route(&mut ask, &ws);
            let spent = route_from.elapsed();
            self.metrics.route.observe(spent.as_secs_f64());
            route_us += spent.as_micros() as u64;
            let Some(decision) = decided else { break };
            routed = Some(decision.routed());
            if decision.fault.is_some() {
                self.metrics.fallbacks.inc();
            }
            let backend = candidates.remove(decision.index);
            self.metrics.decisions.with_label_values(&[&backend.url]).inc();
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let guard = backend.begin();
            let mut done = Completion::new(ask.request.id, backend.id(), Outcome::Failed);
            done.attempt = attempt as u32;
            let mut pending = Attempt {
                gw: self,
                done,
                started,
                route_us,
                routed: decision.routed(),
                open: true,
            };
            let sent = self
                .client
                .post(format!("{}{}", backend.url, endpoint.path()))
                .header(header::CONTENT_TYPE, "application/json")
                .header(REQUEST_ID, request_id)
                .body(body.clone())
                .send()
                .await;
            let done = &mut pending.done;
            match sent {
                Ok(r) if !r.status().is_server_error() => {
                    return self.relay(endpoint, pending, guard, r).await;
                }
                Ok(r) => {
                    last_error = Some(format!("{} answered {}", backend.url, r.status()));
                    let busy = r.status() == StatusCode::SERVICE_UNAVAILABLE;
                    if !busy {
                        backend.failed(self.registry.fail_threshold, "5xx answer");
                    }
                    done.outcome = if busy { Outcome::Overloaded } else { Outcome::Failed };
                    done.status = r.status().as_u16();
                }
                Err(e) => {
                    // A refused connection is certain: mark it down now, not after N checks.
                    let threshold = if e.is_connect() { 1 } else { self.registry.fail_threshold };
                    backend.failed(threshold, &e.to_string());
                    last_error = Some(format!("{}: {e}", backend.url));
                    done.outcome =
                        if e.is_timeout() { Outcome::Timeout } else { Outcome::Unreachable };
                }
            }
            drop(guard);
            pending.end(false);
            route_from = Instant::now();
        }
        self.metrics.requests.with_label_values(&[endpoint.name(), "503"]).inc();
        if let Some(r) = routed {
            self.policy.unserved(r);
        }
        let msg = match last_error {
            Some(e) => format!("no worker could serve the request (last error: {e})"),
            None => "no healthy worker".into(),
        };
        ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, msg, 1).into_response()
    }

    /// Passes a worker's answer back: JSON is read whole (to learn its counts for
    /// `observe`), an event stream is relayed chunk by chunk as it arrives.
    async fn relay(
        self: &Arc<Self>,
        endpoint: Endpoint,
        mut attempt: Attempt<'_>,
        guard: InFlightGuard,
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
            let url = guard.0.url.clone();
            let stream_done = StreamDone {
                _guard: guard,
                gw: self.clone(),
                endpoint,
                routed: attempt.routed,
                // From here the stream's end reports the attempt.
                done: attempt.take(),
                started,
                counts: FinalCounts::default(),
                failed: false,
                ended: false,
            };
            // A worker lost mid-stream: the client still gets an error event and `[DONE]`,
            // not a cut connection.
            let chunks =
                r.bytes_stream().map(Some).chain(futures_util::stream::once(async { None }));
            let stream = chunks.scan(stream_done, move |sd, chunk| {
                let item = match chunk {
                    _ if sd.failed => return futures_util::future::ready(None),
                    None => {
                        sd.ended = true;
                        return futures_util::future::ready(None);
                    }
                    Some(Ok(bytes)) => {
                        sd.counts.watch(&bytes, sd.started);
                        bytes
                    }
                    Some(Err(e)) => {
                        sd.failed = true;
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
                attempt.done.outcome =
                    if e.is_timeout() { Outcome::Timeout } else { Outcome::Broken };
                attempt.end(true);
                return ApiError::new(StatusCode::BAD_GATEWAY, format!("{}: {e}", backend.url))
                    .into_response();
            }
        };
        let done = &mut attempt.done;
        done.latency_us = latency.as_micros() as u64;
        done.outcome = match status {
            s if s.is_success() => Outcome::Ok,
            StatusCode::TOO_MANY_REQUESTS => Outcome::Overloaded,
            _ => Outcome::Rejected,
        };
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
        builder
            .body(Body::from(bytes))
            .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
    }
}

/// An attempt under way: reported as `cancelled` if it is dropped before it ends (the
/// client went away while the router waited for the worker).
struct Attempt<'a> {
    gw: &'a Gateway,
    done: Completion,
    started: Instant,
    /// Microseconds this request has spent being routed so far.
    route_us: u64,
    /// Which side of a trial routed it.
    routed: Routed,
    open: bool,
}

impl Attempt<'_> {
    /// Reports the attempt as it stands (latency set now, unless already set).
    fn end(mut self, answered: bool) {
        self.open = false;
        if self.done.latency_us == 0 {
            self.done.latency_us = self.started.elapsed().as_micros() as u64;
        }
        self.gw.observe(&self.done, answered, self.routed);
    }

    /// Hands the report to someone else (a stream's end).
    fn take(mut self) -> Completion {
        self.open = false;
        self.done
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.done.outcome = Outcome::Cancelled;
            self.done.latency_us = self.started.elapsed().as_micros() as u64;
            self.gw.observe(&self.done, false, self.routed);
        }
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Rejected => "rejected",
        Outcome::Overloaded => "overloaded",
        Outcome::Failed => "failed",
        Outcome::Unreachable => "unreachable",
        Outcome::Timeout => "timeout",
        Outcome::Broken => "broken",
        Outcome::Cancelled => "cancelled",
    }
}

/// Ends a streamed request's accounting when its body is dropped (finished or cut),
/// with the counts its final event carried.
struct StreamDone {
    /// Counts the request as in flight until the stream ends.
    _guard: InFlightGuard,
    gw: Arc<Gateway>,
    endpoint: Endpoint,
    routed: Routed,
    done: Completion,
    started: Instant,
    /// What the events said.
    counts: FinalCounts,
    /// The worker's stream broke.
    failed: bool,
    /// The worker's stream ended (with or without its final event).
    ended: bool,
}

/// Follows an event stream event by event: when the first text arrived, and the counts
/// of the final event.
#[derive(Default)]
struct FinalCounts {
    /// The bytes of the event not yet complete.
    event: Vec<u8>,
    /// Time to the first event carrying generated text.
    first_text: Option<std::time::Duration>,
    /// Counts from the final event, once it has passed.
    counts: Option<Counts>,
}

/// Whether an event carries generated text: a non-empty `text` (SGLang, OpenAI
/// completions) or `content` (OpenAI chat; its opening event's content is empty).
fn has_text(data: &[u8]) -> bool {
    [&b"\"text\":\""[..], &b"\"content\":\""[..]].iter().any(|key| {
        data.windows(key.len())
            .position(|w| w == *key)
            .is_some_and(|i| data.get(i + key.len()).is_some_and(|&c| c != b'"'))
    })
}

impl FinalCounts {
    fn watch(&mut self, bytes: &[u8], started: Instant) {
        self.event.extend_from_slice(bytes);
        while let Some(end) = self.event.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.event.drain(..end + 2).collect();
            let Some(data) = event.strip_prefix(b"data: ") else { continue };
            if self.first_text.is_none() && has_text(data) {
                self.first_text = Some(started.elapsed());
            }
            // Only a finished answer's `meta_info` (or `usage`) has `cached_tokens`.
            if data.windows(15).any(|w| w == b"\"cached_tokens\"") {
                self.counts = Counts::of(data).or(self.counts);
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
        let mut done = self.done;
        done.latency_us = latency.as_micros() as u64;
        done.ttft_us = self.counts.first_text.map(|d| d.as_micros() as u64);
        let status = self.done.status;
        done.outcome = if self.failed {
            Outcome::Broken
        } else if status == 429 {
            Outcome::Overloaded
        } else if status >= 300 {
            // A refusal sent as an event stream: unusual, but the status says it.
            Outcome::Rejected
        } else if self.counts.counts.is_some() {
            Outcome::Ok
        } else if self.ended {
            // The worker closed the stream without its final event.
            Outcome::Broken
        } else {
            // The client went away before the end.
            Outcome::Cancelled
        };
        if let Some(c) = &self.counts.counts {
            c.fill(&mut done);
        }
        self.gw.observe(&done, true, self.routed);
    }
}

/// What an answer or a final event says about its request.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Counts {
    prompt: u32,
    cached: u32,
    generated: Option<u32>,
    cache_hit: Option<bool>,
    /// The worker's seconds from arrival to the end, and to the first token.
    e2e: f64,
    ttft: Option<f64>,
}

impl Counts {
    /// `meta_info` (every locus answer has it), else OpenAI's `usage`; `None` when
    /// neither is there.
    fn of(body: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize, Default)]
        struct Body {
            meta_info: Option<Meta>,
            usage: Option<crate::api::openai::Usage>,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            prompt_tokens: usize,
            cached_tokens: usize,
            completion_tokens: Option<usize>,
            cache_hit: Option<bool>,
            #[serde(default)]
            e2e_latency: f64,
            ttft: Option<f64>,
        }
        let n = |x: usize| x.min(u32::MAX as usize) as u32;
        let b: Body = serde_json::from_slice(body).ok()?;
        Some(match (b.meta_info, b.usage) {
            (Some(m), _) => Self {
                prompt: n(m.prompt_tokens),
                cached: n(m.cached_tokens),
                generated: m.completion_tokens.map(n),
                cache_hit: m.cache_hit,
                e2e: m.e2e_latency,
                ttft: m.ttft,
            },
            (None, Some(u)) => Self {
                prompt: n(u.prompt_tokens),
                cached: n(u.prompt_tokens_details.map_or(0, |d| d.cached_tokens)),
                generated: Some(n(u.completion_tokens)),
                cache_hit: None,
                e2e: 0.0,
                ttft: None,
            },
            (None, None) => return None,
        })
    }

    fn fill(&self, done: &mut Completion) {
        done.prompt_tokens = Some(self.prompt);
        done.cached_tokens = Some(self.cached);
        done.generated_tokens = self.generated;
        done.response_cache_hit = self.cache_hit;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::{Counts, FinalCounts};

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
                f.watch(chunk, Instant::now());
            }
            let c = f.counts.expect("final counts");
            assert_eq!(
                (c.prompt, c.cached, c.generated, c.cache_hit),
                (7, 4, Some(2), Some(false))
            );
            assert!(f.first_text.is_some(), "chunks of {cut}");
        }
        // A stream that ends before its final event has no counts.
        let mut f = FinalCounts::default();
        f.watch(&stream[..stream.len() / 2], Instant::now());
        assert_eq!(f.counts, None);
        // OpenAI's usage chunk counts too.
        let mut f = FinalCounts::default();
        f.watch(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n", Instant::now());
        let c: Counts = f.counts.expect("usage counts");
        assert_eq!((c.prompt, c.cached, c.generated), (5, 0, Some(2)));
        assert!(f.first_text.is_none(), "no text arrived");
        // Chat's opening event announces the role with empty content: not a token.
        let mut f = FinalCounts::default();
        f.watch(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            Instant::now(),
        );
        assert!(f.first_text.is_none());
        f.watch(b"data: {\"choices\":[{\"delta\":{\"content\":\" hi\"}}]}\n\n", Instant::now());
        assert!(f.first_text.is_some());
    }
}
