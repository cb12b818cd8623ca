//! The scheduler's settings ([`Limits`]) and what it counts: the live [`Counters`] the loop
//! updates and the [`SchedulerStats`] snapshot that metrics and load reports read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How the scheduler shares the machine. Defaults measured on a 2-core machine
/// (BENCHMARKS.md, issue 8).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Most prompt tokens run in one step: a longer prompt is prefilled over several steps,
    /// so running streams keep producing tokens meanwhile.
    pub prefill_chunk: usize,
    /// Most prompt tokens in one step while a request of a higher priority is at the
    /// worker, or was within `yield_window`: a lower band's prompt then moves in smaller
    /// chunks, so that a higher band's prompt arriving meanwhile waits for a short step,
    /// and its time between tokens (and so how soon its places in the batch free) stays
    /// short.
    pub yield_chunk: usize,
    /// How long a higher band keeps the lower bands' chunks small after its last request
    /// left: interactive requests arrive one by one, and the one arriving next should not
    /// find a full-size chunk in its way.
    pub yield_window: Duration,
    /// KV memory for running sequences, in bytes; each reserves prompt + `max_new_tokens`
    /// positions at admission. The prefix store has its own budget.
    pub kv_bytes: u64,
    /// Longest a request waits for admission before it fails with
    /// [`EngineError::QueueTimeout`](crate::EngineError::QueueTimeout).
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 16,
            prefill_chunk: 128,
            yield_chunk: 32,
            yield_window: Duration::ZERO,
            kv_bytes: 1 << 30,
            queue_timeout: Duration::from_secs(60),
        }
    }
}

/// Counters and gauges of the scheduler, read by metrics and load reports.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) waiting: AtomicUsize,
    pub(super) running: AtomicUsize,
    pub(super) kv_reserved: AtomicU64,
    pub(super) generated: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) steps: AtomicU64,
    pub(super) failed: AtomicU64,
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
