//! Relaying a worker's event stream chunk by chunk as it arrives, following its events for
//! the first text and the final counts, and reporting the attempt when the relayed body is
//! dropped (finished, cut by the worker, or left by the client).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::http::response::Builder;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use locus_policy::{Completion, Routed};

use super::attempt::Attempt;
use super::counts::Counts;
use super::outcome::Seen;
use crate::api::{ApiError, Endpoint};
use crate::router::flow::Ticket;
use crate::router::gateway::Gateway;
use crate::router::registry::InFlightGuard;

/// Answers with `builder` (the answer's head, made by the relay) and a body that relays
/// `r`'s event stream; the stream's end reports `attempt`.
pub(super) fn relay(
    gw: &Arc<Gateway>,
    endpoint: Endpoint,
    attempt: Attempt<'_>,
    guard: InFlightGuard,
    ticket: Option<Ticket>,
    r: reqwest::Response,
    builder: Builder,
) -> Response {
    let url = guard.0.url.clone();
    let started = attempt.started;
    let stream_done = StreamDone {
        _guard: guard,
        _ticket: ticket,
        told: 0,
        gw: gw.clone(),
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
    let chunks = r.bytes_stream().map(Some).chain(futures_util::stream::once(async { None }));
    let stream = chunks.scan(stream_done, move |sd, chunk| {
        let item = match chunk {
            _ if sd.failed => return futures_util::future::ready(None),
            None => {
                sd.ended = true;
                return futures_util::future::ready(None);
            }
            Some(Ok(bytes)) => {
                sd.counts.watch(&bytes, sd.started);
                sd.tell_usage();
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
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

/// Ends a streamed request's accounting when its body is dropped (finished or cut),
/// with the counts its final event carried.
struct StreamDone {
    /// Counts the request as in flight until the stream ends (released after the report:
    /// fields drop after `drop`).
    _guard: InFlightGuard,
    /// The request's dispatch slot, freed when the stream ends.
    _ticket: Option<Ticket>,
    /// Tokens told to the admission policy as streamed usage so far.
    told: u32,
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

impl StreamDone {
    /// Tells the admission policy the tokens streamed since it was last told.
    fn tell_usage(&mut self) {
        let now = self.counts.texts;
        if now > self.told && self._ticket.is_some() {
            self.gw.queue.usage(self.done.request_id, now - self.told);
            self.told = now;
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
        let end = Seen::StreamEnd {
            status: self.done.status,
            broke: self.failed,
            counted: self.counts.counts.is_some(),
            ended: self.ended,
        };
        done.outcome = end.verdict().outcome;
        if let Some(c) = &self.counts.counts {
            c.fill(&mut done);
        }
        self.gw.observe(&done, true, self.routed);
    }
}

/// Follows an event stream event by event: when the first text arrived, and the counts
/// of the final event.
#[derive(Default)]
struct FinalCounts {
    /// The bytes of the event not yet complete.
    event: Vec<u8>,
    /// Time to the first event carrying generated text.
    first_text: Option<std::time::Duration>,
    /// Events carrying generated text so far: a worker sends one per token it decodes
    /// (text held back by a stop-sequence check comes later, fewer events than tokens).
    texts: u32,
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
            if has_text(data) {
                self.texts += 1;
                if self.first_text.is_none() {
                    self.first_text = Some(started.elapsed());
                }
            }
            // Only a finished answer's `meta_info` (or `usage`) has `cached_tokens`.
            if data.windows(15).any(|w| w == b"\"cached_tokens\"") {
                self.counts = Counts::of(data).or(self.counts);
            }
        }
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
