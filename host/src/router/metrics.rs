//! The router's Prometheus metrics.

use std::sync::Arc;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::flow::FlowCounters;
use super::registry::Backend;

pub(super) struct Metrics {
    pub registry: Registry,
    /// Flow control's counts per tenant and band.
    pub flow: FlowCounters,
    pub decisions: IntCounterVec,
    pub fallbacks: IntCounter,
    /// Queued requests whose policy chose a worker without room (asked again among those
    /// with room).
    pub full_choices: IntCounter,
    /// KV sources the policy named: passed on, or dropped (and why).
    pub kv_sources: IntCounterVec,
    pub retries: IntCounter,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub policy_faults: IntGauge,
    pub policy_info: IntGaugeVec,
    /// The serving admission policy (value 1), set at each scrape.
    pub admission_info: IntGaugeVec,
    pub admission_faults: IntGauge,
    pub kv_events: IntCounterVec,
    pub kv_event_lag: Histogram,
    /// How late this process's runtime wakes a due task.
    pub runtime_lag: Histogram,
    /// Time to a routing decision: tokenizing, block hashes and the policy's call.
    pub route: Histogram,
    pub kv_blocks: IntGauge,
    pub outcomes: IntCounterVec,
    /// The running trial (value 1), set at each scrape; absent when none runs.
    pub trial_info: IntGaugeVec,
    /// Decisions per side of the running trial.
    pub trial_decisions: IntGaugeVec,
    /// The running trial's ratios per side: agreement, fallback, error, hit, predicted_hit.
    pub trial_ratio: GaugeVec,
    /// TTFT p90 per side over the canary rules' window.
    pub trial_ttft_p90: GaugeVec,
    /// Held by a scrape while it sets and renders the gauges (no poisoning: a panicked
    /// scrape's half-set gauges are reset by the next).
    pub scrape: parking_lot::Mutex<()>,
}

impl Metrics {
    /// Drops the per-worker series of workers no longer among `present`, so that a router
    /// whose workers come and go (DNS, a file, the admin API) does not keep their series
    /// forever.
    pub fn forget_gone_workers(&self, present: &[Arc<Backend>]) {
        use prometheus::core::Collector;
        for family in self.decisions.collect() {
            for m in family.get_metric() {
                let Some(url) = m.get_label().iter().find(|l| l.name() == "worker") else {
                    continue;
                };
                if !present.iter().any(|b| b.url == url.value()) {
                    let _ = self.decisions.remove_label_values(&[url.value()]);
                }
            }
        }
    }

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
        let full_choices = IntCounter::new(
            "locus_router_full_choices_total",
            "Queued requests whose routing policy chose a worker at its dispatch limit while \
             another had room: the policy is asked again among the workers with room",
        )
        .unwrap();
        let kv_sources = IntCounterVec::new(
            Opts::new(
                "locus_router_kv_sources_total",
                "KV sources routing policies named: passed on to the worker (named), or \
                 dropped because the source is the chosen worker (same_worker) or cannot \
                 exchange KV with it (incompatible)",
            ),
            &["outcome"],
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
        let admission_info = IntGaugeVec::new(
            Opts::new("locus_router_admission_info", "The serving admission policy (value 1)"),
            &["name", "sha256"],
        )
        .unwrap();
        let admission_faults =
            IntGauge::new("locus_router_admission_faults", "Admission policy faults so far")
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
        let trial_info = IntGaugeVec::new(
            Opts::new("locus_router_trial_info", "The policy on trial (value 1)"),
            &["mode", "candidate", "sha256"],
        )
        .unwrap();
        let trial_decisions = IntGaugeVec::new(
            Opts::new("locus_router_trial_decisions", "Decisions per side of the running trial"),
            &["side"],
        )
        .unwrap();
        let trial_ratio = GaugeVec::new(
            Opts::new(
                "locus_router_trial_ratio",
                "Running trial per side: agreement (shadow), fallback, error (window), hit \
                 (cached prompt tokens), predicted_hit (shadow)",
            ),
            &["side", "measure"],
        )
        .unwrap();
        let trial_ttft_p90 = GaugeVec::new(
            Opts::new(
                "locus_router_trial_ttft_p90_seconds",
                "TTFT p90 per side of the running trial, over the canary rules' window",
            ),
            &["side"],
        )
        .unwrap();
        let runtime_lag = crate::serve::lag_histogram("locus_router_runtime_lag_seconds");
        let flow = FlowCounters::new();
        let mut collectors = flow.collectors();
        collectors.extend(vec![
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(full_choices.clone()),
            Box::new(kv_sources.clone()),
            Box::new(retries.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(policy_faults.clone()),
            Box::new(policy_info.clone()),
            Box::new(admission_info.clone()),
            Box::new(admission_faults.clone()),
            Box::new(kv_events.clone()),
            Box::new(kv_event_lag.clone()),
            Box::new(runtime_lag.clone()),
            Box::new(route.clone()),
            Box::new(kv_blocks.clone()),
            Box::new(outcomes.clone()),
            Box::new(trial_info.clone()),
            Box::new(trial_decisions.clone()),
            Box::new(trial_ratio.clone()),
            Box::new(trial_ttft_p90.clone()),
        ]);
        let registry = crate::http::registry(collectors);
        Self {
            registry,
            flow,
            decisions,
            fallbacks,
            full_choices,
            kv_sources,
            retries,
            requests,
            latency,
            policy_faults,
            policy_info,
            admission_info,
            admission_faults,
            kv_events,
            kv_event_lag,
            runtime_lag,
            route,
            kv_blocks,
            outcomes,
            trial_info,
            trial_decisions,
            trial_ratio,
            trial_ttft_p90,
            scrape: parking_lot::Mutex::new(()),
        }
    }

    /// Sets the trial gauges from `report` (the running trial's), or clears them.
    pub fn set_trial(&self, report: Option<&locus_policy::TrialReport>) {
        self.trial_info.reset();
        self.trial_decisions.reset();
        self.trial_ratio.reset();
        self.trial_ttft_p90.reset();
        let Some(r) = report else { return };
        let c = &r.candidate_policy;
        self.trial_info.with_label_values(&[r.mode.name(), &c.name, &c.sha256]).set(1);
        if let Some(a) = r.agreement {
            self.trial_ratio.with_label_values(&["candidate", "agreement"]).set(a);
        }
        for (side, s) in [("live", &r.live), ("candidate", &r.candidate)] {
            self.trial_decisions.with_label_values(&[side]).set(s.decisions as i64);
            for (measure, v) in [
                ("fallback", s.fallback_rate),
                ("error", s.window_error_rate),
                ("hit", s.hit_rate),
                ("predicted_hit", s.predicted_hit_rate),
            ] {
                if let Some(v) = v {
                    self.trial_ratio.with_label_values(&[side, measure]).set(v);
                }
            }
            if let Some(p90) = s.ttft_p90_ms {
                self.trial_ttft_p90.with_label_values(&[side]).set(p90 / 1000.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(m: &Metrics) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut buf).unwrap();
        buf.lines().filter(|l| l.starts_with("locus_router_decisions_total{")).collect()
    }

    #[test]
    fn a_removed_workers_series_is_dropped() {
        let m = Metrics::new();
        m.decisions.with_label_values(&["http://a:1"]).inc();
        m.decisions.with_label_values(&["http://b:1"]).inc();
        m.forget_gone_workers(&[Backend::new("http://a:1")]);
        let s = series(&m);
        assert!(s.contains("http://a:1") && !s.contains("http://b:1"), "{s}");
    }
}
