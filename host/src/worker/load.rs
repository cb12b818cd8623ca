//! `GET /load`: how busy a worker is, cheap enough for a router to poll often, and the
//! measured token rate behind it.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::Worker;
use crate::api::signals::LoadReport;
use crate::clock::unix_micros;
use axum::Json;
use axum::extract::State;
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
    pub(super) fn new(generated: u64) -> Self {
        Self { samples: Mutex::new(VecDeque::from([(Instant::now(), generated)])) }
    }

    fn record(&self, at: Instant, generated: u64) {
        let mut s = self.samples.lock();
        s.push_back((at, generated));
        // Keep the newest sample at least WINDOW old as the start of the window.
        while s.len() > 1 && s.get(1).is_some_and(|&(t, _)| at.duration_since(t) >= WINDOW) {
            s.pop_front();
        }
    }

    /// Tokens per second from the window's first sample to (`at`, `generated`).
    fn rate(&self, at: Instant, generated: u64) -> f64 {
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

/// Starts sampling `worker`'s generated tokens every [`SAMPLE_EVERY`] on the current Tokio
/// runtime; the task ends once the worker is dropped. Outside a runtime nothing is started
/// and the rate is the average since the worker was built.
pub(super) fn spawn_sampler(worker: &Arc<Worker>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<Worker> = Arc::downgrade(worker);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(w) = weak.upgrade() else { break };
            w.throughput.record(Instant::now(), w.engine.scheduler_stats().generated_tokens);
        }
    });
}

impl Worker {
    /// The load now; touches the prefix store's lock only to read its block count.
    pub(super) fn load_report(&self) -> LoadReport {
        let sched = self.engine.scheduler_stats();
        let prefix = self.engine.cache_stats();
        let config = &self.engine.model_info().config;
        // max(1): a degenerate model config must not divide by zero.
        let block = locus_engine::prefix::block_bytes(config.n_layer, config.n_embd).max(1);
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LoadReport {
            worker_id: self.options.worker_id.clone(),
            waiting: to_u32(sched.waiting),
            running: to_u32(sched.running),
            kv_blocks_used: sched.kv_reserved_bytes.div_ceil(block),
            kv_blocks_total: sched.kv_capacity_bytes / block,
            prefix_blocks: prefix.entries as u64,
            prefix_blocks_total: prefix.capacity_bytes / block,
            tokens_per_second: self.throughput.rate(Instant::now(), sched.generated_tokens),
            generated_tokens: sched.generated_tokens,
            max_queue: self.options.max_queue,
            queue_available: self.queue.available_permits(),
            ts_us: unix_micros(SystemTime::now()),
        }
    }
}

/// `GET /load`: [`LoadReport`] as JSON.
pub(super) async fn load(State(w): State<Arc<Worker>>) -> Json<LoadReport> {
    Json(w.load_report())
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
