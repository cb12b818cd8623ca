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
            limits: ServeLimits::default(),
            max_upload_bytes: crate::http::MAX_UPLOAD_BYTES,
            audit_log: None,
        }
    }
}
