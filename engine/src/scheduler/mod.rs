//! Continuous batching: one thread owns the model and, step after step, runs every running
//! sequence's next token together while admitting waiting requests and prefilling them a
//! chunk at a time.
//!
//! A step is (1) intake of new requests, dropping cancelled and expired ones; (2) admission,
//! highest priority first and then in arrival order, while the batch has room and the KV
//! budget covers the newcomer's whole reservation (prompt + `max_new_tokens`, as TGI
//! reserves: a running sequence is never preempted); (3) one decode pass over all sequences
//! that have a next token to feed; (4) one prompt chunk of at most `prefill_chunk` tokens,
//! from the highest priority prefilling, and within it the prompt with the fewest chunks
//! left (a short prompt is not stuck behind a long one's chunks, the complaint of SGLang
//! #10063), unless one has waited `max_batch` chunks for its turn.
//!
//! Priority is what the router's admission policy decided before dispatch (its rank: the
//! band, and within it whether the request was sent ahead of its band's others; a request
//! sent ahead counts as above its band's others here too, shrinking their chunks, which
//! measured better for the tenant sent ahead than shrinking them for higher bands only,
//! at no throughput cost beyond the noise):
//! without it, the worker's own order would undo the router's, since a request dispatched
//! ahead of a batch job would still wait behind that job's prompt chunks here. Bands also
//! shape the step: when no decoding sequence outranks the prompt to run and one is below
//! it, (4) runs before (3), so its first token does not wait for a lower band's tokens
//! (its own band's decoders wait one chunk of it: short, as interactive prompts are), and so
//! do the other prompts of that priority, a chunk each, up to `prefill_chunk` tokens in all
//! (two interactive prompts arriving together both get their first token this step); while a
//! request of a higher priority than the prompt's is at the worker (waiting, prefilling or
//! decoding), or was within `yield_window`, the chunk is at most `yield_chunk` tokens (a
//! per-step token budget by band, after Sarathi-Serve's), so a higher band's prompt that
//! arrives finds a short step in its way, not a full chunk, and a batch job's long prompts
//! do not stretch the higher band's time between tokens, which would hold its places in the
//! batch (and the router's dispatch slots) longer.
//!
//! Decode and prefill are separate passes so that a sequence's numbers never depend on what
//! else runs (the decode rows go through a kernel whose rows are independent; a prompt chunk
//! is computed alone): greedy output is the same alone or in a batch, and a prompt run in
//! chunks gives the same greedy tokens as one run whole (tested). The price is
//! one more read of the weights per prefill step, small beside the chunk's compute.

mod messages;
mod panics;
mod stats;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use locus_tokens::Utf8Stream;

pub(crate) use messages::{Event, Handle, Submission};
use panics::{caught, panic_message};
pub(crate) use stats::Counters;
pub use stats::{Limits, SchedulerStats};

use crate::error::{EngineError, Result};
use crate::gpt2::{KvCache, Step};
use crate::request::FinishReason;
use crate::shared::Shared;

struct Seq {
    sub: Submission,
    submitted: Instant,
    admitted: Option<Instant>,
    cache: Option<KvCache>,
    /// Prompt tokens whose keys and values the cache holds.
    prefilled: usize,
    cached: usize,
    /// The token to feed at the next decode pass.
    next: Option<u32>,
    /// The scheduler's chunk count when its last prompt chunk ran, or when it was admitted.
    last_chunk: u64,
    out: Vec<u32>,
    /// Tokens of `out` already sent to the caller.
    sent: usize,
    /// The token that ended it (end-of-text or a stop token id).
    stop_token: Option<u32>,
    utf8: Utf8Stream,
    /// Bytes of KV reserved while it runs.
    reserved: u64,
}

/// Runs the loop until every sender of `rx` is gone.
pub(crate) fn run(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<(Submission, Instant)>,
    limits: Limits,
    counters: Arc<Counters>,
) {
    let mut s = Scheduler {
        shared,
        limits,
        counters,
        waiting: VecDeque::new(),
        running: Vec::new(),
        chunks: 0,
        band_seen: [None; 256],
        noted: Instant::now(),
    };
    loop {
        if s.waiting.is_empty() && s.running.is_empty() {
            match rx.recv() {
                Ok(sub) => s.enqueue(sub),
                Err(_) => return,
            }
        }
        while let Ok(sub) = rx.try_recv() {
            s.enqueue(sub);
        }
        // Each sequence's own failures are caught where it is stepped; this is the net
        // under the scheduler's own code, so that no bug ends the loop for every caller.
        let step = catch_unwind(AssertUnwindSafe(|| s.step()));
        if let Err(p) = step {
            s.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %panic_message(&*p), "scheduler step panicked; going on");
        }
        s.publish();
        if s.running.is_empty() && !s.waiting.is_empty() {
            // Waiting for nothing but a deadline or a cancellation: nothing runs that could
            // free memory, so only a new arrival or the clock changes anything.
            if let Ok(sub) = rx.recv_timeout(Duration::from_millis(20)) {
                s.enqueue(sub);
            }
        }
    }
}

struct Scheduler {
    shared: Arc<Shared>,
    limits: Limits,
    counters: Arc<Counters>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Prompt chunks run so far.
    chunks: u64,
    /// When a request of each priority was last at the worker.
    band_seen: [Option<Instant>; 256],
    /// When [`Scheduler::note_bands`] last ran.
    noted: Instant,
}

impl Scheduler {
    /// One step: what the module's note numbers (1) to (4).
    fn step(&mut self) {
        self.drop_gone();
        self.note_bands();
        self.admit();
        if let Some(p) = self.first_prefill_priority() {
            self.prefill_first(p);
            self.decode();
        } else {
            self.decode();
            self.prefill(usize::MAX);
        }
    }

    fn enqueue(&mut self, (sub, submitted): (Submission, Instant)) {
        self.waiting.push_back(Seq {
            sub,
            submitted,
            admitted: None,
            cache: None,
            prefilled: 0,
            cached: 0,
            next: None,
            last_chunk: 0,
            out: Vec::new(),
            sent: 0,
            stop_token: None,
            utf8: Utf8Stream::default(),
            reserved: 0,
        });
    }

    /// KV reserved by the running sequences: derived, so that a sequence lost to a panic
    /// cannot leak its reservation.
    fn reserved(&self) -> u64 {
        self.running.iter().map(|s| s.reserved).sum()
    }

    fn publish(&self) {
        self.counters.waiting.store(self.waiting.len(), Ordering::Relaxed);
        self.counters.running.store(self.running.len(), Ordering::Relaxed);
        self.counters.kv_reserved.store(self.reserved(), Ordering::Relaxed);
    }

    /// Ends the requests whose caller left, and those that waited past the deadline.
    fn drop_gone(&mut self) {
        let timeout = self.limits.queue_timeout;
        let mut i = 0;
        while i < self.waiting.len() {
            let seq = &self.waiting[i];
            if seq.sub.cancel.load(Ordering::Relaxed) {
                let seq = self.waiting.remove(i).expect("index checked");
                self.finish(seq, Ok(FinishReason::Aborted));
            } else if seq.submitted.elapsed() > timeout {
                let seq = self.waiting.remove(i).expect("index checked");
                let waited_ms = seq.submitted.elapsed().as_millis() as u64;
                self.finish(seq, Err(EngineError::QueueTimeout { waited_ms }));
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].sub.cancel.load(Ordering::Relaxed) {
                let seq = self.running.swap_remove(i);
                self.finish(seq, Ok(FinishReason::Aborted));
            } else {
                i += 1;
            }
        }
    }

    /// The waiting request to admit next: the oldest of the highest priority.
    fn next_waiting(&self) -> Option<usize> {
        // `max_by_key` keeps the last of equals: compare on (priority, earlier first).
        let n = self.waiting.len();
        (0..n).max_by_key(|&i| (self.waiting[i].sub.priority, n - i))
    }

    /// Admits waiting requests, highest priority first and then in arrival order, while the
    /// batch and the KV budget have room; the next that does not fit stops admission, so a
    /// large request is not starved by smaller ones behind it.
    fn admit(&mut self) {
        let per_token = self.shared.info.kv_bytes_per_token;
        let mut reserved = self.reserved();
        while self.running.len() < self.limits.max_batch {
            let Some(next) = self.next_waiting() else { break };
            let front = &self.waiting[next];
            let positions = front.sub.ids.len() + front.sub.max_new;
            let need = positions as u64 * per_token;
            if reserved + need > self.limits.kv_bytes {
                break;
            }
            let mut seq = self.waiting.remove(next).expect("index checked");
            let now = Instant::now();
            seq.admitted = Some(now);
            seq.last_chunk = self.chunks;
            let queue_ms = ms(seq.submitted, now);
            let _ = seq.sub.events.send(Event::Admitted { queue_ms });
            // The pinned blocks are copied into the cache here: their handles go with this step.
            let pinned = seq.sub.pinned.take();
            match self.shared.cache_for(&seq.sub.ids, positions, true, pinned.as_ref()) {
                Ok((cache, cached)) => {
                    seq.cache = Some(cache);
                    seq.prefilled = cached;
                    seq.cached = cached;
                    seq.reserved = need;
                    reserved += need;
                    self.running.push(seq);
                }
                Err(e) => self.finish(seq, Err(EngineError::StepFailed(e.to_string()))),
            }
        }
    }

    /// One token for every sequence that has one to feed, all in one pass.
    fn decode(&mut self) {
        let ready: Vec<usize> =
            (0..self.running.len()).filter(|&i| self.running[i].next.is_some()).collect();
        if ready.is_empty() {
            return;
        }
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let tokens: Vec<[u32; 1]> =
            ready.iter().map(|&i| [self.running[i].next.expect("ready")]).collect();
        let lens: Vec<usize> = ready
            .iter()
            .map(|&i| self.running[i].cache.as_ref().map_or(0, KvCache::seq_len))
            .collect();
        let (running, model) = (&mut self.running, &self.shared.model);
        let batched = catch_unwind(AssertUnwindSafe(|| {
            let mut steps: Vec<Step> = running
                .iter_mut()
                .filter(|s| s.next.is_some())
                .zip(&tokens)
                .map(|(s, t)| Step {
                    tokens: t,
                    cache: s.cache.as_mut().expect("admitted"),
                    logits: true,
                })
                .collect();
            model.forward_batch(&mut steps)
        }));
        let logits: Vec<Result<Tensor, String>> = match batched {
            Ok(Ok(logits)) => {
                logits.into_iter().map(|l| l.ok_or_else(|| "no logits".to_string())).collect()
            }
            _ => {
                // Something in the batch failed: undo the pass and run each sequence alone, so
                // only the one at fault ends.
                ready
                    .iter()
                    .zip(&tokens)
                    .zip(&lens)
                    .map(|((&i, t), &len)| {
                        let cache = running[i].cache.as_mut().expect("admitted");
                        cache.truncate(len);
                        caught(catch_unwind(AssertUnwindSafe(|| model.forward(t, cache))))
                    })
                    .collect()
            }
        };
        // From the last: removing a finished sequence moves one already handled.
        for (&i, logits) in ready.iter().zip(logits).rev() {
            let end = match logits {
                Ok(l) => self.sample(i, &l),
                Err(e) => Some(Err(EngineError::StepFailed(e))),
            };
            if let Some(end) = end {
                let seq = self.running.swap_remove(i);
                self.finish(seq, end);
            }
        }
    }

    /// Notes the priorities of the requests at the worker now.
    fn note_bands(&mut self) {
        let now = Instant::now();
        for s in self.waiting.iter().chain(&self.running) {
            self.band_seen[usize::from(s.sub.priority)] = Some(now);
        }
        self.noted = now;
    }

    /// Whether a request of a priority above `p` is at the worker or was within the yield
    /// window (as of the last [`Self::note_bands`]).
    fn higher_band_near(&self, p: u8) -> bool {
        let (window, noted) = (self.limits.yield_window, self.noted);
        self.band_seen[usize::from(p) + 1..].iter().flatten().any(|&t| noted - t <= window)
    }

    /// The lowest and highest priorities among the sequences decoding, if any is.
    fn decoding_priorities(&self) -> Option<(u8, u8)> {
        let decoding = self.running.iter().filter(|s| s.next.is_some()).map(|s| s.sub.priority);
        decoding
            .fold(None, |r, p| Some(r.map_or((p, p), |(lo, hi): (u8, u8)| (lo.min(p), hi.max(p)))))
    }

    /// The prompt whose chunk runs next: of the highest priority prefilling, the one with
    /// the fewest chunks left (the shortest remaining first gives the lowest mean time to
    /// first token); one that has waited `max_batch` chunks goes first, so a long prompt is
    /// delayed, never starved. Ties: the one served least recently (the oldest first).
    fn next_prefill(&self) -> Option<usize> {
        let (now, chunk) = (self.chunks, self.limits.prefill_chunk.max(1));
        let starved_after = self.limits.max_batch.max(1) as u64;
        let prefilling = self.running.iter().enumerate().filter(|(_, s)| s.next.is_none());
        let turn = |s: &Seq| {
            let left = (s.sub.ids.len() - s.prefilled).div_ceil(chunk);
            let fresh = now - s.last_chunk < starved_after;
            (std::cmp::Reverse(s.sub.priority), fresh, left, s.last_chunk, s.admitted)
        };
        prefilling.min_by_key(|(_, s)| turn(s)).map(|(i, _)| i)
    }

    /// The priority of this step's prompt chunk when it runs before the decode pass: when no
    /// decoding sequence outranks it and one is below it, so a higher band's first token
    /// does not wait for a lower band's tokens (its own band's decoders wait one short
    /// chunk; without a lower band decoding, the decode pass goes first as for any prompt).
    fn first_prefill_priority(&self) -> Option<u8> {
        let p = self.running[self.next_prefill()?].sub.priority;
        let (lo, hi) = self.decoding_priorities()?;
        (p >= hi && p > lo).then_some(p)
    }

    /// The chunks that go before the decode pass: the prompts of priority `p` (or above),
    /// one chunk each, up to `prefill_chunk` tokens in all. Interactive requests arrive
    /// together often enough that one prompt per step would make the second wait a whole
    /// step of the batch band for its first token; each chunk is still computed alone.
    fn prefill_first(&mut self, p: u8) {
        let mut budget = self.limits.prefill_chunk.max(1);
        loop {
            let ran = self.prefill(budget);
            budget = budget.saturating_sub(ran);
            let next_is_first =
                self.next_prefill().is_some_and(|i| self.running[i].sub.priority >= p);
            if ran == 0 || budget == 0 || !next_is_first {
                return;
            }
        }
    }

    /// One chunk of a prompt that is not fully run yet: at most `prefill_chunk` tokens, or
    /// `yield_chunk` while a request of a higher priority is (or was lately) at the worker,
    /// and at most `max` tokens; returns the tokens run.
    fn prefill(&mut self, max: usize) -> usize {
        let Some(i) = self.next_prefill() else {
            return 0;
        };
        let mut size = self.limits.prefill_chunk.max(1).min(max.max(1));
        if self.higher_band_near(self.running[i].sub.priority) {
            size = size.min(self.limits.yield_chunk.max(1));
        }
        self.chunks += 1;
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let seq = &mut self.running[i];
        seq.last_chunk = self.chunks;
        let total = seq.sub.ids.len();
        let end = (seq.prefilled + size).min(total);
        let ran = end - seq.prefilled;
        let last = end == total;
        let want_logits = last && seq.sub.max_new > 0;
        let model = &self.shared.model;
        let cache = seq.cache.as_mut().expect("admitted");
        let chunk = &seq.sub.ids[seq.prefilled..end];
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut step = [Step { tokens: chunk, cache, logits: want_logits }];
            model.forward_batch(&mut step).map(|mut l| l.pop().flatten())
        }));
        let logits = match caught(outcome) {
            Ok(l) => l,
            Err(e) => {
                let seq = self.running.swap_remove(i);
                self.finish(seq, Err(EngineError::StepFailed(e)));
                return ran;
            }
        };
        seq.prefilled = end;
        if !last {
            return ran;
        }
        let cache = seq.cache.as_ref().expect("admitted");
        if let Err(e) = self.shared.keep_prefix(&seq.sub.ids, cache, seq.cached) {
            tracing::warn!(error = %e, "prefix store insert failed");
        }
        let prefill_ms = ms(seq.admitted.expect("admitted"), Instant::now());
        let _ = seq.sub.events.send(Event::Started { cached_tokens: seq.cached, prefill_ms });
        let end = match logits {
            Some(l) => self.sample(i, &l),
            None => Some(Ok(FinishReason::Length)),
        };
        if let Some(end) = end {
            let seq = self.running.swap_remove(i);
            self.finish(seq, end);
        }
        ran
    }

    /// Samples running sequence `i`'s next token from `logits` and sends its text; returns
    /// how the sequence ends, if it does.
    fn sample(&mut self, i: usize, logits: &Tensor) -> Option<Result<FinishReason>> {
        let seq = &mut self.running[i];
        let next = match caught(catch_unwind(AssertUnwindSafe(|| seq.sub.sampler.sample(logits)))) {
            Ok(t) => t,
            Err(e) => return Some(Err(EngineError::StepFailed(e))),
        };
        self.counters.generated.fetch_add(1, Ordering::Relaxed);
        let eos = self.shared.info.config.eos_token_id;
        if (!seq.sub.ignore_eos && Some(next) == eos) || seq.sub.stop_token_ids.contains(&next) {
            seq.stop_token = Some(next);
            return Some(Ok(FinishReason::Stop));
        }
        seq.out.push(next);
        if let Some(bytes) = self.shared.tokenizer.token_bytes(next) {
            let piece = seq.utf8.push(&bytes);
            if !piece.is_empty() && !seq.send_text(piece) {
                // The caller is gone: nobody reads this sequence.
                return Some(Ok(FinishReason::Aborted));
            }
        }
        let room = seq.sub.ids.len() + seq.out.len() < self.shared.info.config.n_positions;
        if seq.out.len() >= seq.sub.max_new || !room {
            return Some(Ok(FinishReason::Length));
        }
        seq.next = Some(next);
        None
    }

    /// Ends a sequence (already out of `running` and `waiting`), which frees its
    /// reservation, and tells its caller unless it left.
    fn finish(&mut self, mut seq: Seq, end: Result<FinishReason>) {
        seq.cache = None;
        match &end {
            Ok(FinishReason::Aborted) => {
                self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                return self.publish();
            }
            Ok(_) => {
                // Bytes of an unfinished character, or ids not sent yet, go with the end.
                let tail = seq.utf8.finish();
                if !tail.is_empty() || seq.sent < seq.out.len() {
                    seq.send_text(tail);
                }
            }
            Err(EngineError::StepFailed(message)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %message, "a sequence failed; the batch goes on");
            }
            Err(_) => {}
        }
        // Published before the caller hears of the end, so that it never sees itself counted.
        self.publish();
        let _ = seq.sub.events.send(Event::Done { end, stop_token: seq.stop_token });
    }
}

impl Seq {
    /// Sends `piece` with the tokens not sent yet; false when the caller is gone.
    fn send_text(&mut self, piece: String) -> bool {
        let ids = self.out[self.sent..].to_vec();
        self.sent = self.out.len();
        self.sub.events.send(Event::Text { piece, ids }).is_ok()
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1e3
}
