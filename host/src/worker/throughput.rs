//! The measured token rate: samples of the engine's generated-token count over a sliding
//! window, taken by a task that lives as long as whatever owns them.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the sampler reads the engine's generated-token count.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The span the token rate is measured over.
const WINDOW: Duration = Duration::from_secs(2);

/// Samples of the engine's generated-token count, oldest first, reaching back about
/// [`WINDOW`].
pub(super) struct Throughput {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Throughput {
    /// Samples starting from the count `generated` read now.
    pub(super) fn new(generated: u64) -> Self {
        Self { samples: Mutex::new(VecDeque::from([(Instant::now(), generated)])) }
    }

    /// Adds the count `generated` read at `at`.
    pub(super) fn record(&self, at: Instant, generated: u64) {
        let mut s = self.samples.lock();
        s.push_back((at, generated));
        // Keep the newest sample at least WINDOW old as the start of the window.
        while s.len() > 1 && s.get(1).is_some_and(|&(t, _)| at.duration_since(t) >= WINDOW) {
            s.pop_front();
        }
    }

    /// Tokens per second from the window's first sample to (`at`, `generated`).
    pub(super) fn rate(&self, at: Instant, generated: u64) -> f64 {
        let Some(&(since, from)) = self.samples.lock().front() else { return 0.0 };
        let secs = at.saturating_duration_since(since).as_secs_f64();
        // Too short a span says nothing (and the first report after a start would divide by
        // almost nothing).
        if secs < SAMPLE_EVERY.as_secs_f64() / 2.0 {
            return 0.0;
        }
        generated.saturating_sub(from) as f64 / secs
    }
}

/// Calls `sample` on `owner` every [`SAMPLE_EVERY`] on the current Tokio runtime; the task
/// holds `owner` only weakly and ends once it is dropped. Outside a runtime nothing is
/// started and the rate is the average since the samples began. Generic over the owner so
/// that the sampling lives here while the owner (the worker) says what to read.
pub(super) fn spawn_sampler<W: Send + Sync + 'static>(
    owner: &Arc<W>,
    sample: impl Fn(&W) + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<W> = Arc::downgrade(owner);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(w) = weak.upgrade() else { break };
            sample(&w);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_spans_about_the_window() {
        let t = Throughput::new(0);
        let t0 = t.samples.lock().front().unwrap().0;
        assert_eq!(t.rate(t0, 100), 0.0, "no span yet");
        // 100 tokens a second for 4 s, sampled every 250 ms.
        for i in 1..=16u64 {
            t.record(t0 + SAMPLE_EVERY * i as u32, 25 * i);
        }
        let end = t0 + Duration::from_secs(4);
        let s = t.samples.lock();
        let first = s.front().unwrap().0;
        assert_eq!(end.duration_since(first), WINDOW);
        drop(s);
        assert!((t.rate(end, 400) - 100.0).abs() < 1e-9);
        // Idle for the next 2 s: the rate falls to 0.
        for i in 17..=24u64 {
            t.record(t0 + SAMPLE_EVERY * i as u32, 400);
        }
        assert_eq!(t.rate(t0 + Duration::from_secs(6), 400), 0.0);
        assert!(t.samples.lock().len() <= 10);
    }
}
