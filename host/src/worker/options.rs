//! How a worker is set up: its options, their defaults and the flags that set them.

use crate::serve::ServeLimits;
use locus_policy::PolicySource;

/// How a worker is set up.
///
/// Also the worker's cache flags (`--cache-setting`, `--cache-bytes`, `--max-queue`), which
/// `locus worker` and `locus run` flatten in: their defaults are read from [`Default`], so
/// that each value is written once. Fields without a flag of their own keep `Default`'s
/// value; the command line sets them from flags it shares or checks.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// Name reported in `meta_info.worker_id`.
    #[arg(skip = WorkerOptions::default().worker_id)]
    pub worker_id: String,
    /// The cache policy for both cache levels.
    #[arg(skip = WorkerOptions::default().cache_policy)]
    pub cache_policy: PolicySource,
    /// Settings for the cache policy.
    #[arg(
        long = "cache-setting",
        help = "A `key=value` setting for the cache policy (repeatable)",
        value_parser = locus_policy::parse_setting
    )]
    pub cache_settings: Vec<(String, String)>,
    /// Byte budget of the response cache.
    #[arg(
        long = "cache-bytes",
        env = "LOCUS_CACHE_BYTES",
        help = "Byte budget of each worker's response cache",
        default_value_t = WorkerOptions::default().response_cache_bytes
    )]
    pub response_cache_bytes: u64,
    /// Requests waiting or running beyond which new ones get 429.
    #[arg(
        long,
        env = "LOCUS_MAX_QUEUE",
        help = "Requests waiting or running per worker beyond which new ones get 429",
        default_value_t = WorkerOptions::default().max_queue
    )]
    pub max_queue: usize,
    /// Bearer token of the admin endpoints. Without one, swapping the cache policy is
    /// disabled and `/flush_cache` is open (as SGLang's is).
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// Token that other workers and routers of the cluster present in
    /// `x-locus-cluster-token`: without one, this worker neither exports its prefix KV nor
    /// pulls one from a source a request names.
    #[arg(skip)]
    pub cluster_token: Option<String>,
    /// Send the cluster token to a KV source over plain HTTP when the source is not on
    /// loopback (see [`crate::http::may_carry_token`]).
    #[arg(skip)]
    pub cluster_over_http: bool,
    /// Most KV transfers this worker serves at once (more get 429, and their importers
    /// compute instead), so that a popular holder does not become the new hot spot.
    #[arg(
        long,
        env = "LOCUS_MAX_EXPORTS",
        help = "Most KV transfers served at once; more get 429 and compute instead",
        default_value_t = WorkerOptions::default().max_exports
    )]
    pub max_exports: usize,
    /// Fewest missing prefix tokens worth a pull: below it, computing is cheaper.
    #[arg(
        long,
        env = "LOCUS_KV_PULL_MIN_TOKENS",
        help = "Fewest missing prefix tokens worth pulling from a source; fewer are computed",
        default_value_t = WorkerOptions::default().kv_pull_min_tokens
    )]
    pub kv_pull_min_tokens: usize,
    /// A fixed deadline for pulls, in ms; by default a pull gets the time this worker's
    /// measured prefill speed needs for the missing tokens (and none before it has measured
    /// one), at most 2 s.
    #[arg(long, env = "LOCUS_KV_PULL_TIMEOUT_MS")]
    pub kv_pull_timeout_ms: Option<u64>,
    /// Connection and body limits of the listener.
    #[arg(skip = WorkerOptions::default().limits)]
    pub limits: ServeLimits,
    /// Largest component accepted by `PUT /admin/cache-policy`.
    #[arg(skip = WorkerOptions::default().max_upload_bytes)]
    pub max_upload_bytes: usize,
    /// Append every cache-policy change to this JSON-lines file, beside the in-memory log
    /// of `GET /admin/audit`.
    #[arg(skip)]
    pub audit_log: Option<std::path::PathBuf>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            worker_id: "worker".into(),
            cache_policy: PolicySource::Builtin("lru"),
            cache_settings: Vec::new(),
            response_cache_bytes: 64 << 20,
            max_queue: 64,
            admin_token: None,
            cluster_token: None,
            cluster_over_http: false,
            max_exports: 2,
            kv_pull_min_tokens: 64,
            kv_pull_timeout_ms: None,
            limits: ServeLimits::default(),
            max_upload_bytes: crate::http::MAX_UPLOAD_BYTES,
            audit_log: None,
        }
    }
}
