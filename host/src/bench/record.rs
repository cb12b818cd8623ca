//! What a run measured: a record per request, the passes, and the report that holds them.

use serde::Serialize;

use super::oracle::Oracle;

/// One measured request.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in the workload.
    pub index: usize,
    /// The routing policy serving.
    pub policy: String,
    /// Offered rate of its pass, requests/s (`None`: closed loop or a trace's schedule).
    pub rate: Option<f64>,
    /// Round of its pass, from 0.
    pub round: usize,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// Milliseconds to the end of the answer.
    pub latency_ms: f64,
    /// Milliseconds to the first streamed text.
    pub ttft_ms: Option<f64>,
    /// Worker that answered.
    pub worker: String,
    /// Whether the whole answer came from the response cache.
    pub cache_hit: bool,
    /// Prompt tokens served from a cache.
    pub cached_tokens: usize,
    /// Prompt tokens whose KV the worker pulled from another (apart from `cached_tokens`).
    pub transferred_tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Microseconds the router spent choosing the worker, where it says (locus's
    /// `x-locus-route-us`).
    pub route_us: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The measured passes, one per policy, with the oracle beside them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name and shape.
    pub workload: String,
    /// Workload seed.
    pub seed: u64,
    /// Whether a warm-up pass ran before each measured pass.
    pub warm: bool,
    /// Requests in each pass.
    pub requests: usize,
    /// Workers behind the router.
    pub workers: usize,
    /// The best a single unbounded cache could do on the sequence.
    pub oracle: Oracle,
    /// Every measured pass, in the order run.
    pub passes: Vec<Pass>,
    /// Policies, in the order given.
    pub policies: Vec<String>,
    /// Offered rates, in the order swept (empty: closed loop).
    pub rates: Vec<f64>,
    /// Every request of every measured pass.
    pub records: Vec<Record>,
}

/// One measured pass: a policy at a rate in a round.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// The policy.
    pub policy: String,
    /// Offered rate, requests/s.
    pub rate: Option<f64>,
    /// Round, from 0.
    pub round: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
}
