//! What flow control counts, per tenant and band: requests dispatched, refused (by reason
//! and status), time waited, tokens served, requests waiting.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use parking_lot::Mutex;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// Tenants named in metric labels; later ones are counted as `other`, so that made-up
/// tenant names cannot grow the label sets without bound.
pub const LABELLED_TENANTS: usize = 64;

/// Flow control's metrics (cheap to clone: prometheus vectors are shared handles).
#[derive(Clone)]
pub struct FlowCounters {
    dispatched: IntCounterVec,
    refused: IntCounterVec,
    wait: HistogramVec,
    tokens: IntCounterVec,
    /// Requests waiting per band, set at each scrape.
    pub waiting: IntGaugeVec,
    /// VTC's service gap over the last whole window.
    pub gap: prometheus::Gauge,
    named: std::sync::Arc<Mutex<HashSet<String>>>,
}

const BAND_LABELS: [&str; 4] = ["0", "1", "2", "3"];

impl FlowCounters {
    /// New, unregistered counters.
    pub fn new() -> Self {
        let dispatched = IntCounterVec::new(
            Opts::new(
                "locus_router_admitted_total",
                "Requests that left the router's queue for a worker, per tenant and band",
            ),
            &["tenant", "band"],
        )
        .unwrap();
        let refused = IntCounterVec::new(
            Opts::new(
                "locus_router_rejected_total",
                "Requests refused by the router's flow control, per tenant, band, reason and \
                 status",
            ),
            &["tenant", "band", "reason", "status"],
        )
        .unwrap();
        let wait = HistogramVec::new(
            HistogramOpts::new(
                "locus_router_queue_wait_seconds",
                "Time requests waited in the router's queue before dispatch",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18).unwrap()),
            &["tenant", "band"],
        )
        .unwrap();
        let tokens = IntCounterVec::new(
            Opts::new(
                "locus_router_tokens_served_total",
                "Tokens served per tenant: prompt tokens (input) and generated tokens (output)",
            ),
            &["tenant", "kind"],
        )
        .unwrap();
        let waiting = IntGaugeVec::new(
            Opts::new("locus_router_queue_waiting", "Requests waiting in the router's queue"),
            &["band"],
        )
        .unwrap();
        let gap = prometheus::Gauge::new(
            "locus_router_service_gap",
            "VTC's service gap over the last whole 60 s window, in weighted tokens (input x 1, \
             output x 2): for each tenant, the least of (the best-served tenant's service less \
             its own) and (its waiting requests' demand), summed",
        )
        .unwrap();
        Self { dispatched, refused, wait, tokens, waiting, gap, named: Default::default() }
    }

    /// The collectors, to register.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.dispatched.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.wait.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.waiting.clone()),
            Box::new(self.gap.clone()),
        ]
    }

    /// The label for `tenant`: its name, `other` past [`LABELLED_TENANTS`], `-` for none.
    fn tenant<'a>(&self, tenant: &'a str) -> &'a str {
        if tenant.is_empty() {
            return "-";
        }
        let mut named = self.named.lock();
        if named.contains(tenant) {
            return tenant;
        }
        if named.len() < LABELLED_TENANTS {
            named.insert(tenant.to_string());
            return tenant;
        }
        "other"
    }

    /// A request left the queue for a worker after `waited`.
    pub fn dispatched(&self, tenant: &str, band: usize, waited: Duration) {
        let t = self.tenant(tenant);
        let b = BAND_LABELS[band.min(3)];
        self.dispatched.with_label_values(&[t, b]).inc();
        self.wait.with_label_values(&[t, b]).observe(waited.as_secs_f64());
    }

    /// A request was refused for `reason` with `status`.
    pub fn refused(&self, tenant: &str, band: usize, reason: &'static str, status: StatusCode) {
        let t = self.tenant(tenant);
        self.refused
            .with_label_values(&[t, BAND_LABELS[band.min(3)], reason, status.as_str()])
            .inc();
    }

    /// `tenant` was served `input` prompt tokens and `output` generated ones.
    pub fn served(&self, tenant: &str, input: u64, output: u64) {
        let t = self.tenant(tenant);
        self.tokens.with_label_values(&[t, "input"]).inc_by(input);
        self.tokens.with_label_values(&[t, "output"]).inc_by(output);
    }
}

impl Default for FlowCounters {
    fn default() -> Self {
        Self::new()
    }
}
