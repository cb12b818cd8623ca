//! What `locus bench` is pointed at and what it measures: the target cluster and the
//! options of a run.

use super::pacing::Arrivals;
use super::workload::Workload;

/// The cluster under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The router's public base URL.
    pub router: String,
    /// The router's admin base URL: locus's own, so policies can be swapped. `None` for
    /// any other router (SGLang's, vLLM's, ...): one pass per round under `label`.
    pub admin: Option<String>,
    /// Bearer token of the admin APIs (router and workers).
    pub token: Option<String>,
    /// The workers behind the router, to flush between passes and to count; read from
    /// the admin API when empty.
    pub workers: Vec<String>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The workload.
    pub workload: Workload,
    /// Policies to compare: built-in names or component paths (with no admin API, the one
    /// name the router's passes are reported under).
    pub policies: Vec<String>,
    /// Requests to send (default: the workload's own length; longer repeats it).
    pub requests: Option<usize>,
    /// Requests in flight at once (closed loop).
    pub concurrency: usize,
    /// Open loop at each of these rates in turn, requests/s (a sweep); empty: closed loop
    /// (traces use their own schedule).
    pub rates: Vec<f64>,
    /// Passes per policy (and rate); policies take turns within a round, in an order
    /// rotated each round, so drift on a shared machine hits them all alike.
    pub rounds: usize,
    /// How open-loop requests are spaced.
    pub arrivals: Arrivals,
    /// Seed of the workload.
    pub seed: u64,
    /// Send the workload once, unrecorded, before measuring.
    pub warm: bool,
    /// Show a progress bar.
    pub progress: bool,
}
