//! The flow-control flags and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use locus_policy::PolicySource;

/// How the router identifies tenants and holds requests back.
///
/// Also the flags, which the router's options flatten in; each default is read from
/// [`Default`], so that each value is written once.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowOptions {
    /// The admission policy (set by `--admission`, parsed with the routing policy's rules).
    #[arg(skip = FlowOptions::default().admission)]
    pub admission: PolicySource,
    /// Its settings.
    #[arg(skip)]
    pub admission_settings: Vec<(String, String)>,
    /// File of data-plane API keys: one `KEY TENANT [MAX_PRIORITY]` per line.
    #[arg(
        long,
        env = "LOCUS_API_KEYS",
        help = "File of API keys for the public API, one `KEY TENANT [MAX_PRIORITY]` per \
                line (`#` comments; MAX_PRIORITY 0-3 defaults to --default-priority). With \
                it, every request needs `Authorization: Bearer KEY` (401 otherwise), its \
                tenant is the key's, and a priority header is capped at the key's maximum. \
                `POST /admin/api-keys/reload` re-reads it"
    )]
    pub api_keys: Option<PathBuf>,
    /// Header naming the tenant when there are no API keys.
    #[arg(
        long,
        help = "Request header naming the tenant when no --api-keys are set (at most 128 \
                bytes; absent: one shared tenant)",
        value_parser = lower_case(),
        default_value = FlowOptions::default().tenant_header
    )]
    pub tenant_header: String,
    /// Header asking for a priority band.
    #[arg(
        long,
        help = "Request header asking for a priority band, 0 (lowest) to 3 (highest); \
                capped at the API key's maximum",
        value_parser = lower_case(),
        default_value = FlowOptions::default().priority_header
    )]
    pub priority_header: String,
    /// Band of a request that asks for none.
    #[arg(
        long,
        help = "Priority band of a request without a priority header (0-3)",
        value_parser = clap::value_parser!(u8).range(0..=3),
        default_value_t = FlowOptions::default().default_priority
    )]
    pub default_priority: u8,
    /// Requests dispatched to a worker at once; `None`: what the worker can batch.
    #[arg(
        long,
        help = "Requests the router keeps dispatched to each worker at once; the rest \
                wait in the router's queue, ordered by the admission policy. Default: \
                the batch size the worker reports on `/load` (8 until it has). 0 turns \
                the queue off: every request is sent on at once"
    )]
    pub dispatch_limit: Option<u32>,
    /// Requests waiting in the queue, over all bands.
    #[arg(
        long,
        help = "Requests that may wait in the router's queue (429 past it)",
        default_value_t = FlowOptions::default().queue_max
    )]
    pub queue_max: u32,
    /// Requests waiting in one band.
    #[arg(
        long,
        help = "Requests that may wait in one priority band (429 past it)",
        default_value_t = FlowOptions::default().band_max
    )]
    pub band_max: u32,
    /// Body bytes waiting in the queue, over all bands.
    #[arg(
        long,
        help = "Request body bytes that may wait in the router's queue (429 past it)",
        default_value_t = FlowOptions::default().queue_max_bytes
    )]
    pub queue_max_bytes: u64,
    /// Body bytes waiting in one band.
    #[arg(
        long,
        help = "Request body bytes that may wait in one priority band (429 past it)",
        default_value_t = FlowOptions::default().band_max_bytes
    )]
    pub band_max_bytes: u64,
    /// Longest wait in the queue.
    #[arg(
        long = "queue-ttl-s",
        value_name = "QUEUE_TTL_S",
        help = "Seconds a request may wait in the queue before it is answered 503 with \
                Retry-After",
        value_parser = clap::value_parser!(u64).range(1..).map(Duration::from_secs),
        default_value = FlowOptions::default().queue_ttl.as_secs().to_string()
    )]
    pub queue_ttl: Duration,
    /// Largest Retry-After the router answers.
    #[arg(
        long = "max-retry-after-s",
        value_name = "MAX_RETRY_AFTER_S",
        help = "Largest Retry-After (seconds) on a refusal; the value is the time the \
                queue takes to drain at its measured rate, capped here",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = FlowOptions::default().max_retry_after_s
    )]
    pub max_retry_after_s: u64,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            admission: PolicySource::Builtin("fifo"),
            admission_settings: Vec::new(),
            api_keys: None,
            tenant_header: DEFAULT_TENANT_HEADER.into(),
            priority_header: DEFAULT_PRIORITY_HEADER.into(),
            default_priority: 1,
            dispatch_limit: None,
            queue_max: 1024,
            band_max: 512,
            queue_max_bytes: 256 << 20,
            band_max_bytes: 128 << 20,
            queue_ttl: Duration::from_secs(60),
            max_retry_after_s: 60,
        }
    }
}

/// The tenant header unless `--tenant-header` names another.
pub const DEFAULT_TENANT_HEADER: &str = "x-tenant-id";

/// The priority header unless `--priority-header` names another.
pub const DEFAULT_PRIORITY_HEADER: &str = "x-priority";

/// A header name from a flag, in lower case: names are case-insensitive, and one spelling
/// is kept.
pub(in crate::router) fn lower_case() -> impl clap::builder::TypedValueParser<Value = String> {
    clap::builder::TypedValueParser::map(clap::builder::StringValueParser::new(), |h| {
        h.to_ascii_lowercase()
    })
}
