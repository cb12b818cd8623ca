//! The worker's Prometheus metrics.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::outcome::{Finish, Outcome};
use crate::api::{ApiError, Endpoint};

/// The worker's metrics and the registry `/metrics` renders; each one's name and help text
/// are in [`Metrics::new`].
pub(super) struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub response_hits: IntCounter,
    pub response_misses: IntCounter,
    pub prefix_tokens: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub policy_faults: IntGauge,
    pub cancelled: IntCounter,
    pub running: IntGauge,
    pub waiting: IntGauge,
    pub kv_bytes: IntGaugeVec,
    pub generated: IntCounter,
    pub ttft: HistogramVec,
    pub queue: HistogramVec,
    pub tpot: Histogram,
    pub kv_events: IntCounterVec,
    pub kv_event_subscribers: IntGauge,
    pub tokens_per_second: Gauge,
    pub kv_blocks: IntGaugeVec,
    pub kv_transfer_blocks: IntCounterVec,
    pub kv_transfer_bytes: IntCounterVec,
    pub kv_pulls: IntCounterVec,
    pub kv_pull_seconds: Histogram,
    /// Requests whose rank header was ignored: it came without the cluster token.
    pub priority_ignored: IntCounter,
    /// How late this process's runtime wakes a due task.
    pub runtime_lag: Histogram,
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("locus_worker_requests_total", "Requests by endpoint and status"),
            &["endpoint", "status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("locus_worker_request_seconds", "End-to-end request latency")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap()),
            &["endpoint", "cache"],
        )
        .unwrap();
        let response_hits =
            IntCounter::new("locus_worker_response_cache_hits_total", "Response cache hits")
                .unwrap();
        let response_misses =
            IntCounter::new("locus_worker_response_cache_misses_total", "Response cache misses")
                .unwrap();
        let prefix_tokens = IntCounterVec::new(
            Opts::new("locus_worker_prefix_tokens_total", "Prompt tokens, cached or computed"),
            &["source"],
        )
        .unwrap();
        let cache_bytes = IntGaugeVec::new(
            Opts::new("locus_worker_cache_bytes", "Bytes held by each cache level"),
            &["level"],
        )
        .unwrap();
        let policy_faults =
            IntGauge::new("locus_worker_cache_policy_faults", "Cache policy faults so far")
                .unwrap();
        let cancelled = IntCounter::new(
            "locus_worker_cancelled_total",
            "Generations stopped early because their client went away",
        )
        .unwrap();
        let running = IntGauge::new(
            "locus_worker_num_requests_running",
            "Sequences in the running batch (prefilling or decoding)",
        )
        .unwrap();
        let waiting = IntGauge::new(
            "locus_worker_num_requests_waiting",
            "Requests waiting for admission to the batch",
        )
        .unwrap();
        let kv_bytes = IntGaugeVec::new(
            Opts::new(
                "locus_worker_kv_bytes",
                "Running sequences' KV memory: reserved, and the budget (capacity)",
            ),
            &["state"],
        )
        .unwrap();
        let generated =
            IntCounter::new("locus_worker_generation_tokens_total", "Tokens generated").unwrap();
        // By the rank a router sent (a u8: at most 256 label sets), so that a band's tail
        // can be told apart from the batch work beside it.
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "locus_worker_time_to_first_token_seconds",
                "From a request's arrival to its first generated token, by priority",
            )
            .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).unwrap()),
            &["priority"],
        )
        .unwrap();
        let queue = HistogramVec::new(
            HistogramOpts::new(
                "locus_worker_queue_seconds",
                "From a request's arrival at the scheduler to its place in the batch, by priority",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap()),
            &["priority"],
        )
        .unwrap();
        let tpot = Histogram::with_opts(
            HistogramOpts::new(
                "locus_worker_time_per_output_token_seconds",
                "Mean time between a request's generated tokens after the first",
            )
            .buckets(prometheus::exponential_buckets(0.002, 1.6, 14).unwrap()),
        )
        .unwrap();
        let kv_events = IntCounterVec::new(
            Opts::new(
                "locus_worker_kv_events_total",
                "Prefix store operations published on /kv_events, by type",
            ),
            &["type"],
        )
        .unwrap();
        let kv_event_subscribers =
            IntGauge::new("locus_worker_kv_event_subscribers", "Streams connected to /kv_events")
                .unwrap();
        let tokens_per_second = Gauge::new(
            "locus_worker_tokens_per_second",
            "Tokens generated per second over about the last 2 s",
        )
        .unwrap();
        let kv_blocks = IntGaugeVec::new(
            Opts::new(
                "locus_worker_kv_blocks",
                "Running KV budget in 16-token blocks: reserved (used), and the budget (total)",
            ),
            &["state"],
        )
        .unwrap();
        let kv_transfer_blocks = IntCounterVec::new(
            Opts::new(
                "locus_worker_kv_transfer_blocks_total",
                "Prefix KV blocks moved between workers: pulled (verified) and served",
            ),
            &["direction"],
        )
        .unwrap();
        let kv_transfer_bytes = IntCounterVec::new(
            Opts::new(
                "locus_worker_kv_transfer_bytes_total",
                "Bytes of KV transfers received (pulled) and sent (served)",
            ),
            &["direction"],
        )
        .unwrap();
        let kv_pulls = IntCounterVec::new(
            Opts::new(
                "locus_worker_kv_pulls_total",
                "Pulls by outcome: complete, none_resident, why one ended early, why none was tried",
            ),
            &["outcome"],
        )
        .unwrap();
        let kv_pull_seconds = Histogram::with_opts(
            HistogramOpts::new("locus_worker_kv_pull_seconds", "Time of each pull attempted")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 13).unwrap()),
        )
        .unwrap();
        let priority_ignored = IntCounter::new(
            "locus_worker_priority_ignored_total",
            "Requests whose x-locus-priority was ignored (scheduled at rank 0): it came without \
             this worker's cluster token",
        )
        .unwrap();
        let runtime_lag = crate::serve::lag_histogram("locus_worker_runtime_lag_seconds");
        let registry = crate::http::registry(vec![
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(response_hits.clone()),
            Box::new(response_misses.clone()),
            Box::new(prefix_tokens.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(policy_faults.clone()),
            Box::new(cancelled.clone()),
            Box::new(running.clone()),
            Box::new(waiting.clone()),
            Box::new(kv_bytes.clone()),
            Box::new(generated.clone()),
            Box::new(ttft.clone()),
            Box::new(queue.clone()),
            Box::new(tpot.clone()),
            Box::new(kv_events.clone()),
            Box::new(kv_event_subscribers.clone()),
            Box::new(tokens_per_second.clone()),
            Box::new(kv_blocks.clone()),
            Box::new(kv_transfer_blocks.clone()),
            Box::new(kv_transfer_bytes.clone()),
            Box::new(kv_pulls.clone()),
            Box::new(kv_pull_seconds.clone()),
            Box::new(priority_ignored.clone()),
            Box::new(runtime_lag.clone()),
        ]);
        Self {
            registry,
            requests,
            latency,
            response_hits,
            response_misses,
            prefix_tokens,
            cache_bytes,
            policy_faults,
            cancelled,
            running,
            waiting,
            kv_bytes,
            generated,
            ttft,
            queue,
            tpot,
            kv_events,
            kv_event_subscribers,
            tokens_per_second,
            kv_blocks,
            kv_transfer_blocks,
            kv_transfer_bytes,
            kv_pulls,
            kv_pull_seconds,
            priority_ignored,
            runtime_lag,
        }
    }

    /// Copies a load report into the gauges (at scrape time).
    pub fn load(&self, l: &crate::api::signals::LoadReport, subscribers: usize) {
        self.tokens_per_second.set(l.tokens_per_second);
        self.kv_blocks.with_label_values(&["used"]).set(l.kv_blocks_used as i64);
        self.kv_blocks.with_label_values(&["total"]).set(l.kv_blocks_total as i64);
        self.kv_event_subscribers.set(subscribers as i64);
    }

    /// Copies the scheduler's state into the gauges (at scrape time: it changes every step).
    pub fn scheduler(&self, s: &locus_engine::SchedulerStats) {
        self.running.set(s.running as i64);
        self.waiting.set(s.waiting as i64);
        self.kv_bytes.with_label_values(&["reserved"]).set(s.kv_reserved_bytes as i64);
        self.kv_bytes.with_label_values(&["capacity"]).set(s.kv_capacity_bytes as i64);
        // The engine's count only grows; the counter follows it.
        self.generated.inc_by(s.generated_tokens.saturating_sub(self.generated.get()));
    }

    /// Counts a request by its endpoint and status, and times a successful one.
    pub fn record(&self, endpoint: Endpoint, result: &Result<Outcome, ApiError>) {
        // 499, as nginx logs it: the client closed the request before its answer.
        let status = match result {
            Ok(o) if o.finish == Finish::Cancelled => "499".to_string(),
            Ok(_) => "200".to_string(),
            Err(e) => e.status.as_u16().to_string(),
        };
        self.requests.with_label_values(&[endpoint.name(), &status]).inc();
        if let Ok(o) = result {
            let cache = if o.cache_hit { "hit" } else { "miss" };
            self.latency.with_label_values(&[endpoint.name(), cache]).observe(o.latency);
        }
    }
}
