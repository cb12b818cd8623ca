//! The router's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
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
        let registry = crate::http::registry(vec![
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(retries.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(policy_faults.clone()),
            Box::new(policy_info.clone()),
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
        }
    }
}
