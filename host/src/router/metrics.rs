//! The router's Prometheus metrics.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub(super) struct Metrics {
    pub registry: Registry,
    pub decisions: IntCounterVec,
    pub fallbacks: IntCounter,
    pub retries: IntCounter,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub policy_faults: IntGauge,
    pub policy_info: IntGaugeVec,
    pub kv_events: IntCounterVec,
    pub kv_event_lag: Histogram,
    /// Time to a routing decision: tokenizing, block hashes and the policy's call.
    pub route: Histogram,
    pub kv_blocks: IntGauge,
    pub outcomes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let decisions = IntCounterVec::new(
            Opts::new("locus_router_decisions_total", "Routing decisions per worker"),
            &["worker"],
        )
        .unwrap();
        let fallbacks = IntCounter::new(
            "locus_router_fallbacks_total",
            "Decisions made by the native fallback because the policy faulted",
        )
        .unwrap();
        let retries =
            IntCounter::new("locus_router_retries_total", "Requests retried on another worker")
                .unwrap();
        let requests = IntCounterVec::new(
            Opts::new("locus_router_requests_total", "Requests by endpoint and status"),
            &["endpoint", "status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("locus_router_request_seconds", "Latency through the router")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18).unwrap()),
            &["endpoint"],
        )
        .unwrap();
        let policy_faults =
            IntGauge::new("locus_router_policy_faults", "Routing policy faults so far").unwrap();
        let policy_info = IntGaugeVec::new(
            Opts::new("locus_router_policy_info", "The serving routing policy (value 1)"),
            &["name", "sha256"],
        )
        .unwrap();
        let kv_events = IntCounterVec::new(
            Opts::new("locus_router_kv_events_total", "KV events received from workers, by type"),
            &["type"],
        )
        .unwrap();
        let kv_event_lag = Histogram::with_opts(
            HistogramOpts::new(
                "locus_router_kv_event_lag_seconds",
                "From a worker's store reporting a KV event to the router applying it (wall clocks)",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).unwrap()),
        )
        .unwrap();
        let route = Histogram::with_opts(
            HistogramOpts::new(
                "locus_router_route_seconds",
                "Time to a routing decision per attempt: tokenizing, block hashes, policy call",
            )
            .buckets(prometheus::exponential_buckets(0.000_001, 2.0, 20).unwrap()),
        )
        .unwrap();
        let kv_blocks =
            IntGauge::new("locus_router_kv_blocks", "Prefix blocks the router knows workers hold")
                .unwrap();
        let outcomes = IntCounterVec::new(
            Opts::new(
                "locus_router_attempt_outcomes_total",
                "Routed attempts by outcome, as told to the policy's observe",
            ),
            &["outcome"],
        )
        .unwrap();
        let registry = crate::http::registry(vec![
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(retries.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(policy_faults.clone()),
            Box::new(policy_info.clone()),
            Box::new(kv_events.clone()),
            Box::new(kv_event_lag.clone()),
            Box::new(route.clone()),
            Box::new(kv_blocks.clone()),
            Box::new(outcomes.clone()),
        ]);
        Self {
            registry,
            decisions,
            fallbacks,
            retries,
            requests,
            latency,
            policy_faults,
            policy_info,
            kv_events,
            kv_event_lag,
            route,
            kv_blocks,
            outcomes,
        }
    }
}
