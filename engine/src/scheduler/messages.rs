//! What callers and the scheduler loop tell each other: a [`Submission`] goes in through the
//! loop's [`Handle`], [`Event`]s come back on the submission's own channel.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use candle_transformers::generation::LogitsProcessor;
use parking_lot::Mutex;

use super::stats::{Counters, Limits};
use crate::error::Result;
use crate::prefix::PrefixHit;
use crate::request::FinishReason;

/// A request handed to the loop (already checked against the context).
pub(crate) struct Submission {
    pub ids: Vec<u32>,
    pub max_new: usize,
    pub sampler: LogitsProcessor,
    pub ignore_eos: bool,
    pub stop_token_ids: Vec<u32>,
    /// Higher first, at admission and for prompt chunks.
    pub priority: u8,
    pub events: mpsc::Sender<Event>,
    pub cancel: Arc<AtomicBool>,
    /// Prefix blocks imported for it, held until it is admitted.
    pub pinned: Option<PrefixHit>,
}

/// What the loop tells a request's caller; the caller assembles the `Generation` from
/// these, so that a caller that stops early has the same figures as one that waits.
pub(crate) enum Event {
    /// Admitted to the batch after waiting this long.
    Admitted { queue_ms: f64 },
    /// The prompt ran, this long after admission; this many of its tokens came from the
    /// prefix store.
    Started { cached_tokens: usize, prefill_ms: f64 },
    /// New text and the tokens it came from (a token can end mid-character, so its id may
    /// come with the next one's text).
    Text { piece: String, ids: Vec<u32> },
    /// The end: why, and the token that ended it ([`FinishReason::Stop`]); or why it failed.
    /// Not sent to a caller that left.
    Done { end: Result<FinishReason>, stop_token: Option<u32> },
}

/// The loop's handle: where requests go in, and its counters.
pub(crate) struct Handle {
    // A lock without poisoning, as the store's: a caller that panicked must not stop every
    // later caller from submitting.
    pub tx: Mutex<mpsc::Sender<(Submission, Instant)>>,
    pub counters: Arc<Counters>,
    pub limits: Limits,
}
