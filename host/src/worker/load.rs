//! `GET /load`: how busy a worker is, cheap enough for a router to poll often.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::extract::State;

use super::state::Worker;
use crate::api::signals::LoadReport;
use crate::clock::unix_micros;

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
            max_batch: Some(to_u32(self.engine.limits().max_batch)),
            kv_fingerprint: self.exports_kv().then(|| self.engine.kv_fingerprint().to_string()),
            prefill_tokens_per_second: self.pulls.prefill_speed(),
            kv_pull_bytes_per_second: self.pulls.link_speed(),
            kv_block_bytes: Some(block),
            ts_us: unix_micros(SystemTime::now()),
        }
    }
}

/// `GET /load`: [`LoadReport`] as JSON.
pub(super) async fn load(State(w): State<Arc<Worker>>) -> Json<LoadReport> {
    Json(w.load_report())
}
