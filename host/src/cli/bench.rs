//! The flags of `locus bench`: what to bench (a router already running, or a local
//! cluster it starts), the workload, the policies compared and the load offered.

use std::path::PathBuf;

use clap::Args;

use super::shared::AdminTokenArg;
use super::worker::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// Public URL of a router already running: locus's (with --admin, to swap policies) or
    /// any other in front of locus workers (sglang-router, vllm-router, ...), benched as one
    /// policy named by --label. Default: spawn a local cluster.
    #[arg(long, conflicts_with = "spawn")]
    pub router: Option<String>,
    /// Admin URL of that router, when it is locus's.
    #[arg(long, requires = "router")]
    pub admin: Option<String>,
    /// The workers behind --router, comma-separated: flushed before each pass and counted
    /// (default: listed by --admin; without either, caches are not flushed).
    #[arg(long, value_delimiter = ',', requires = "router")]
    pub workers: Vec<String>,
    /// Name of a non-locus router's passes in the report.
    #[arg(long, default_value = "router", requires = "router", conflicts_with = "admin")]
    pub label: String,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    /// Start a local cluster of N workers for the run (the default, with 3).
    #[arg(long)]
    pub spawn: Option<usize>,
    /// Run the spawned workers inside the bench's own process (they then share its compute
    /// threads) instead of as `locus worker` processes.
    #[arg(long, conflicts_with = "router")]
    pub in_process: bool,
    /// Compute threads of each spawned worker process (its RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["router", "in_process"], value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub compute_threads: usize,
    /// seed, shared-prefix (8 groups x 16 prompts, system 256, question 32, output 16),
    /// multi-turn (8 users x 4 rounds), trace:FILE (JSONL), or tenants[:k=v,...] (Zipf
    /// popularity over tenants' system prompts; keys tenants (24), system (512),
    /// question (32), output (16), zipf (1.1; 0 uniform), requests (240)).
    #[arg(long, default_value = "seed")]
    pub workload: String,
    /// Routing policies to compare, comma-separated (built-ins or .wasm files), each with
    /// optional settings as `NAME:key=value:key=value` (e.g. `prefix-aware:load-weight=8`);
    /// default random,hash. Needs a locus router (spawned, or --admin).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Requests per pass (default: the workload's length).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop at this many requests/s instead of a fixed concurrency; several,
    /// comma-separated, sweep the rates in turn (the report then charts TTFT p90 against
    /// rate and names each policy's highest sustained rate).
    #[arg(long, value_delimiter = ',', value_parser = positive_rate)]
    pub rate: Vec<f64>,
    /// Measured passes per policy (and rate): each round runs every policy once, in an
    /// order rotated each round, so a shared machine's drift hits them all alike.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub rounds: usize,
    /// How open-loop requests are spaced: poisson (exponential gaps, seeded by --seed) or
    /// even.
    #[arg(long, value_enum, default_value_t = locus::bench::Arrivals::Poisson)]
    pub arrivals: locus::bench::Arrivals,
    /// Workload seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send an unrecorded warm-up pass before each measured pass: for shared-prefix and
    /// tenants the same system prompts with other questions (steady state: the prefixes
    /// are cached, the answers are not); for the other workloads a repeat of the sequence.
    #[arg(long)]
    pub warm: bool,
    /// Where the report files go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A `--rate`: requests per second, at least the least the bench can space.
fn positive_rate(s: &str) -> Result<f64, String> {
    let min = locus::bench::run::MIN_RATE;
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= min => Ok(r),
        _ => Err(format!("`{s}` is not a number of requests per second of at least {min}")),
    }
}
