//! Continuous batching: one thread owns the model and, step after step, runs every running
//! sequence's next token together while admitting waiting requests and prefilling them a
//! chunk at a time.
//!
//! A step is (1) intake of new requests, dropping cancelled and expired ones; (2) admission in
//! arrival order while the batch has room and the KV budget covers the newcomer's whole
//! reservation (prompt + `max_new_tokens`, as TGI reserves: a running sequence is never
//! preempted); (3) one decode pass over all sequences that have a next token to feed;
//! (4) one prompt chunk of at most `prefill_chunk` tokens, the prefilling sequences taking
//! turns. Decode and prefill are separate passes so that a sequence's numbers never depend
//! on what else runs (the decode rows go through a kernel whose rows are independent; a prompt
//! chunk is computed alone): greedy output is the same alone or in a batch. The price is one
//! more read of the weights per prefill step, small beside the chunk's compute.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use candle_transformers::generation::LogitsProcessor;

use crate::engine::{FinishReason, Generation, Shared};
use crate::gpt2::{KvCache, Step};
use crate::prefix::BLOCK_TOKENS;
use crate::tokenizer::Utf8Stream;
use crate::{EngineError, Result};

/// How the scheduler shares the machine. Defaults measured on a 2-core machine
/// (BENCHMARKS.md, issue 8).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Most prompt tokens run in one step: a longer prompt is prefilled over several steps,
    /// so running streams keep producing tokens meanwhile.
    pub prefill_chunk: usize,
    /// KV memory for running sequences, in bytes; each reserves prompt + `max_new_tokens`
    /// positions at admission. The prefix store has its own budget.
    pub kv_bytes: u64,
    /// Longest a request waits for admission before it fails with
    /// [`EngineError::QueueTimeout`].
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 16,
            prefill_chunk: 128,
            kv_bytes: 1 << 30,
            queue_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters and gauges of the scheduler, read by metrics and load reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_reserved: AtomicU64,
    generated: AtomicU64,
    cancelled: AtomicU64,
    steps: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of the scheduler's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Sequences admitted (prefilling or decoding).
    pub running: usize,
    /// Bytes of KV reserved by running sequences.
    pub kv_reserved_bytes: u64,
    /// The running sequences' KV budget.
    pub kv_capacity_bytes: u64,
    /// Tokens generated since start.
    pub generated_tokens: u64,
    /// Requests ended because their caller went away, since start.
    pub cancelled: u64,
    /// Sequences ended by an error while stepping, since start.
    pub failed: u64,
    /// Model passes run (decode passes and prompt chunks), since start.
    pub steps: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self, limits: &Limits) -> SchedulerStats {
        SchedulerStats {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_reserved_bytes: self.kv_reserved.load(Ordering::Relaxed),
            kv_capacity_bytes: limits.kv_bytes,
            generated_tokens: self.generated.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            steps: self.steps.load(Ordering::Relaxed),
        }
    }
}

/// A request handed to the loop (already checked against the context).
pub(crate) struct Submission {
    pub ids: Vec<u32>,
    pub truncated: usize,
    pub max_new: usize,
    pub sampler: LogitsProcessor,
    pub ignore_eos: bool,
    pub stop_token_ids: Vec<u32>,
    pub use_cache: bool,
    pub events: mpsc::Sender<Event>,
    pub cancel: Arc<AtomicBool>,
}

/// What the loop tells a request's caller.
pub(crate) enum Event {
    /// The prompt ran; this many of its tokens came from the prefix store.
    Started { cached_tokens: usize },
    /// New text and the number of tokens generated so far.
    Text { piece: String, tokens: usize },
    /// The end: the whole generation, or why it failed.
    Done(Result<Generation>),
}

struct Seq {
    sub: Submission,
    submitted: Instant,
    admitted: Option<Instant>,
    first_logits: Option<Instant>,
    cache: Option<KvCache>,
    /// Prompt tokens whose keys and values the cache holds.
    prefilled: usize,
    cached: usize,
    /// The token to feed at the next decode pass.
    next: Option<u32>,
    /// When its last prompt chunk ran (the scheduler's chunk count; 0: never).
    last_chunk: u64,
    out: Vec<u32>,
    /// The token that ended it (end-of-text or a stop token id).
    stop_token: Option<u32>,
    text: String,
    utf8: Utf8Stream,
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
        reserved: 0,
        chunks: 0,
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
        let step = catch_unwind(AssertUnwindSafe(|| {
            s.drop_gone();
            s.admit();
            s.decode();
            s.prefill();
        }));
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
    reserved: u64,
    /// Prompt chunks run so far.
    chunks: u64,
}

impl Scheduler {
    fn enqueue(&mut self, (sub, submitted): (Submission, Instant)) {
        self.waiting.push_back(Seq {
            sub,
            submitted,
            admitted: None,
            first_logits: None,
            cache: None,
            prefilled: 0,
            cached: 0,
            next: None,
            last_chunk: 0,
            out: Vec::new(),
            stop_token: None,
            text: String::new(),
            utf8: Utf8Stream::default(),
            reserved: 0,
        });
    }

    fn publish(&self) {
        self.counters.waiting.store(self.waiting.len(), Ordering::Relaxed);
        self.counters.running.store(self.running.len(), Ordering::Relaxed);
        self.counters.kv_reserved.store(self.reserved, Ordering::Relaxed);
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

    /// Admits waiting requests in arrival order while the batch and the KV budget have room;
    /// the first that does not fit stops admission, so a large request is not starved by
    /// smaller ones behind it.
    fn admit(&mut self) {
        let per_token = self.shared.info.kv_bytes_per_token;
        while self.running.len() < self.limits.max_batch.max(1) {
            let Some(front) = self.waiting.front() else { break };
            let positions = front.sub.ids.len() + front.sub.max_new;
            let need = positions as u64 * per_token;
            if self.reserved + need > self.limits.kv_bytes {
                break;
            }
            let mut seq = self.waiting.pop_front().expect("front exists");
            seq.admitted = Some(Instant::now());
            seq.reserved = need;
            self.reserved += need;
            let ids = &seq.sub.ids;
            let n_layer = self.shared.info.config.n_layer;
            let hit = seq.sub.use_cache.then(|| self.shared.store().lookup(ids, ids.len() - 1));
            let cache = match hit {
                // Copied outside the store's lock: the block tensors are shared handles.
                Some(hit) if hit.tokens > 0 => {
                    KvCache::from_blocks(&hit.layers, positions).map(|c| (c, hit.tokens))
                }
                _ => Ok((KvCache::with_capacity(n_layer, positions), 0)),
            };
            match cache {
                Ok((cache, cached)) => {
                    seq.cache = Some(cache);
                    seq.prefilled = cached;
                    seq.cached = cached;
                    self.running.push(seq);
                }
                Err(e) => self.fail(seq, e.to_string()),
            }
        }
    }

    /// One token for every sequence that has one to feed, all in one pass.
    fn decode(&mut self) {
        let (mut ready, rest): (Vec<Seq>, Vec<Seq>) =
            std::mem::take(&mut self.running).into_iter().partition(|s| s.next.is_some());
        self.running = rest;
        if ready.is_empty() {
            return;
        }
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let tokens: Vec<[u32; 1]> = ready.iter().map(|s| [s.next.expect("ready")]).collect();
        let lens: Vec<usize> =
            ready.iter().map(|s| s.cache.as_ref().map_or(0, KvCache::seq_len)).collect();
        let model = &self.shared.model;
        let batched = catch_unwind(AssertUnwindSafe(|| {
            let mut steps: Vec<Step> = ready
                .iter_mut()
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
                    .iter_mut()
                    .zip(&tokens)
                    .zip(&lens)
                    .map(|((s, t), &len)| {
                        let cache = s.cache.as_mut().expect("admitted");
                        cache.truncate(len);
                        match catch_unwind(AssertUnwindSafe(|| model.forward(t, cache))) {
                            Ok(Ok(l)) => Ok(l),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(p) => Err(panic_message(&*p)),
                        }
                    })
                    .collect()
            }
        };
        for (seq, logits) in ready.into_iter().zip(logits) {
            match logits {
                Ok(l) => self.sample(seq, &l),
                Err(e) => self.fail(seq, e),
            }
        }
    }

    /// One chunk of a prompt that is not fully run yet.
    fn prefill(&mut self) {
        // The prefilling sequence served least recently (the oldest first): prompts take turns
        // chunk by chunk, so a short one that arrives during a long one's prefill is not
        // stuck behind all of it.
        let prefilling = self.running.iter().enumerate().filter(|(_, s)| s.next.is_none());
        let Some((i, _)) = prefilling.min_by_key(|(_, s)| (s.last_chunk, s.admitted)) else {
            return;
        };
        self.chunks += 1;
        self.running[i].last_chunk = self.chunks;
        self.counters.steps.fetch_add(1, Ordering::Relaxed);
        let seq = &mut self.running[i];
        let total = seq.sub.ids.len();
        let end = (seq.prefilled + self.limits.prefill_chunk.max(1)).min(total);
        let last = end == total;
        let want_logits = last && seq.sub.max_new > 0;
        let model = &self.shared.model;
        let cache = seq.cache.as_mut().expect("admitted");
        let chunk = &seq.sub.ids[seq.prefilled..end];
        let ran = catch_unwind(AssertUnwindSafe(|| {
            let mut step = [Step { tokens: chunk, cache, logits: want_logits }];
            model.forward_batch(&mut step).map(|mut l| l.pop().flatten())
        }));
        let logits = match ran {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let seq = self.running.swap_remove(i);
                return self.fail(seq, e.to_string());
            }
            Err(p) => {
                let seq = self.running.swap_remove(i);
                return self.fail(seq, panic_message(&*p));
            }
        };
        seq.prefilled = end;
        if !last {
            return;
        }
        seq.first_logits = Some(Instant::now());
        if seq.sub.use_cache {
            let cache = seq.cache.as_ref().expect("admitted");
            let from = seq.cached / BLOCK_TOKENS;
            if let Err(e) = self.shared.store().insert(&seq.sub.ids, cache, from) {
                tracing::warn!(error = %e, "prefix store insert failed");
            }
        }
        let _ = seq.sub.events.send(Event::Started { cached_tokens: seq.cached });
        // A stable position: the sequence is sampled and put back (or finished) below.
        let seq = self.running.swap_remove(i);
        match logits {
            Some(l) => self.sample(seq, &l),
            None => self.finish(seq, Ok(FinishReason::Length)),
        }
    }

    /// Samples the next token from `logits`, emits its text, and puts the sequence back in
    /// the batch or ends it.
    fn sample(&mut self, mut seq: Seq, logits: &Tensor) {
        let sampled = catch_unwind(AssertUnwindSafe(|| seq.sub.sampler.sample(logits)));
        let next = match sampled {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return self.fail(seq, e.to_string()),
            Err(p) => return self.fail(seq, panic_message(&*p)),
        };
        self.counters.generated.fetch_add(1, Ordering::Relaxed);
        let eos = self.shared.info.config.eos_token_id;
        if (!seq.sub.ignore_eos && Some(next) == eos) || seq.sub.stop_token_ids.contains(&next) {
            seq.stop_token = Some(next);
            return self.finish(seq, Ok(FinishReason::Stop));
        }
        seq.out.push(next);
        if let Some(bytes) = self.shared.tokenizer.token_bytes(next) {
            let piece = seq.utf8.push(&bytes);
            if !piece.is_empty() {
                seq.text.push_str(&piece);
                let event = Event::Text { piece, tokens: seq.out.len() };
                if seq.sub.events.send(event).is_err() {
                    // The caller is gone: nobody reads this sequence.
                    return self.finish(seq, Ok(FinishReason::Aborted));
                }
            }
        }
        let room = seq.sub.ids.len() + seq.out.len() < self.shared.info.config.n_positions;
        if seq.out.len() >= seq.sub.max_new || !room {
            return self.finish(seq, Ok(FinishReason::Length));
        }
        seq.next = Some(next);
        self.running.push(seq);
    }

    fn fail(&mut self, seq: Seq, message: String) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %message, "a sequence failed; the batch goes on");
        self.finish(seq, Err(EngineError::StepFailed(message)));
    }

    /// Ends a sequence (already out of `running` and `waiting`): frees its reservation and
    /// tells its caller.
    fn finish(&mut self, mut seq: Seq, end: Result<FinishReason>) {
        self.reserved -= seq.reserved;
        seq.cache = None;
        let done = match end {
            Ok(reason) => {
                if reason == FinishReason::Aborted {
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                } else {
                    let tail = seq.utf8.finish();
                    if !tail.is_empty() {
                        seq.text.push_str(&tail);
                        let piece = Event::Text { piece: tail, tokens: seq.out.len() };
                        let _ = seq.sub.events.send(piece);
                    }
                }
                let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                    (Some(a), Some(b)) => b.duration_since(a).as_secs_f64() * 1e3,
                    _ => 0.0,
                };
                let now = Some(Instant::now());
                Ok(Generation {
                    completion_tokens: seq.out.len(),
                    text: std::mem::take(&mut seq.text),
                    token_ids: std::mem::take(&mut seq.out),
                    prompt_tokens: seq.sub.ids.len(),
                    cached_tokens: seq.cached,
                    truncated_tokens: seq.sub.truncated,
                    finish_reason: reason,
                    stop_token: seq.stop_token,
                    queue_ms: ms(Some(seq.submitted), seq.admitted.or(now)),
                    prefill_ms: ms(seq.admitted, seq.first_logits),
                    decode_ms: ms(seq.first_logits, now),
                })
            }
            Err(e) => Err(e),
        };
        // Published before the caller hears of the end, so that it never sees itself counted.
        self.publish();
        let _ = seq.sub.events.send(Event::Done(done));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {msg}")
}

/// The loop's handle: where requests go in, and its counters.
pub(crate) struct Handle {
    pub tx: Mutex<mpsc::Sender<(Submission, Instant)>>,
    pub counters: Arc<Counters>,
    pub limits: Limits,
}
