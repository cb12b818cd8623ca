//! How a router is set up: its options, their defaults and the flags that set them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use locus_policy::{FaultPolicy, PolicySource};

use super::discovery::Discover;
use super::flow::FlowOptions;
use crate::serve::ServeLimits;

/// How a router is set up.
///
/// Also the router's flags (`--health-interval-ms`, `--fail-threshold`, ...), which `locus
/// router` and `locus run` flatten in: their defaults are read from [`Default`], so that
/// each value is written once. Fields without a flag of their own keep `Default`'s value;
/// the command line sets them from flags it shares or checks (the policy, its settings,
/// the admin token, the limits).
#[derive(Debug, Clone, clap::Args)]
pub struct RouterOptions {
    /// Base URLs of the workers (`http://host:port`).
    #[arg(skip)]
    pub workers: Vec<String>,
    /// Further workers found by DNS or in a file, followed as they change.
    #[arg(skip)]
    pub discover: Vec<Discover>,
    /// Time between DNS lookups (and re-reads of a workers file) of `discover`.
    #[arg(skip = RouterOptions::default().discover_interval)]
    pub discover_interval: Duration,
    /// The routing policy.
    #[arg(skip = RouterOptions::default().policy)]
    pub policy: PolicySource,
    /// Its settings.
    #[arg(skip)]
    pub settings: Vec<(String, String)>,
    /// Bearer token of the admin API; `None` disables it.
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// Time between health checks of each worker.
    #[arg(
        long = "health-interval-ms",
        value_name = "HEALTH_INTERVAL_MS",
        help = "Milliseconds between health checks of each worker",
        value_parser = millis_raised_to_ten(),
        default_value = RouterOptions::default().health_interval.as_millis().to_string()
    )]
    pub health_interval: Duration,
    /// Failed checks (or refused requests) after which a worker is marked down.
    #[arg(
        long,
        help = "Failed health checks before a worker is marked down",
        value_parser = count_raised_to_one(),
        default_value_t = RouterOptions::default().fail_threshold
    )]
    pub fail_threshold: u32,
    /// Passed checks after which a down worker is marked up again.
    #[arg(
        long,
        help = "Passed health checks before a down worker is marked up",
        value_parser = count_raised_to_one(),
        default_value_t = RouterOptions::default().success_threshold
    )]
    pub success_threshold: u32,
    /// Further workers tried after a refused connection or a 5xx answer.
    #[arg(
        long,
        help = "Other workers tried when one cannot be reached, goes away before it \
                answers, or answers 5xx",
        default_value_t = RouterOptions::default().max_retries
    )]
    pub max_retries: usize,
    /// Longest wait for a worker's next bytes (its answer's head, or a stream's next event).
    #[arg(skip = RouterOptions::default().request_timeout)]
    pub request_timeout: Duration,
    /// When the routing policy is rolled back for faults.
    #[arg(skip = RouterOptions::default().faults)]
    pub faults: FaultPolicy,
    /// Swap the policy when this file changes.
    #[arg(skip)]
    pub watch: Option<PathBuf>,
    /// Connection and body limits of both listeners.
    #[arg(skip = RouterOptions::default().limits)]
    pub limits: ServeLimits,
    /// Largest component accepted by `PUT /admin/policy`.
    #[arg(skip = RouterOptions::default().max_upload_bytes)]
    pub max_upload_bytes: usize,
    /// Leading prompt tokens whose block hashes a policy (0.2.0 or later) is given (0: none).
    #[arg(
        long,
        help = "Leading prompt tokens the router tokenizes (GPT-2's tokenizer, as the \
                workers) to give a policy (0.2.0 or later) the prompt's KV block hashes; 0 turns \
                tokenizing off. Prompts longer than about 8 bytes per token are cut at a \
                word's end first",
        default_value_t = RouterOptions::default().route_tokens
    )]
    pub route_tokens: usize,
    /// Time between polls of each worker's `/load`.
    #[arg(
        long = "load-interval-ms",
        value_name = "LOAD_INTERVAL_MS",
        help = "Milliseconds between polls of each worker's load (`GET /load`: queue, \
                running batch, KV blocks, tokens per second), which a policy (0.2.0 or \
                later) is given with its age",
        value_parser = millis_from_ten(),
        default_value = RouterOptions::default().load_interval.as_millis().to_string()
    )]
    pub load_interval: Duration,
    /// Follow each worker's `/kv_events` so that policies learn which blocks it holds.
    #[arg(
        long = "no-kv-events",
        help = "Do not follow the workers' KV events (`GET /kv_events`); policies then \
                learn nothing of which prefix blocks each worker holds",
        action = clap::ArgAction::SetFalse,
        default_value_t = RouterOptions::default().kv_events
    )]
    pub kv_events: bool,
    /// Bearer token presented to the workers' `/kv_events` when they have an admin token
    /// and no cluster token (with one, the cluster token is presented).
    // The path spelled out keeps clap from unwrapping the `Option`, so that the parser's
    // `None` for an empty value (Compose passes an unset variable as one) is kept.
    #[arg(
        long,
        env = "LOCUS_WORKER_TOKEN",
        hide_env_values = true,
        help = "Bearer token for the workers' `/kv_events` when they have an admin token \
                and no cluster token (`locus run` passes the workers' own; a standalone \
                router sends none unless given one)",
        value_parser = token_or_none(),
        default_value = "",
        hide_default_value = true
    )]
    pub worker_token: std::option::Option<String>,
    /// The cluster token the workers share (`x-locus-cluster-token`): with it, a policy may
    /// name a worker to pull a prompt's prefix KV from (contract 0.4.0); the router sends
    /// it with every request, so that a worker with it takes the request's rank and
    /// source; without it, policies see no KV groups.
    #[arg(skip)]
    pub cluster_token: std::option::Option<String>,
    /// Send the cluster and worker tokens over plain HTTP to workers that are not on
    /// loopback (see [`crate::http::may_carry_token`]).
    #[arg(skip)]
    pub cluster_over_http: bool,
    /// Request header whose value is passed to the policy as the session key.
    #[arg(
        long,
        help = "Request header whose value is given to the policy as the session key",
        value_parser = super::flow::lower_case(),
        default_value = RouterOptions::default().session_header
    )]
    pub session_header: String,
    /// Append every policy change (swap, rollback, shadow, canary, promotion, abort) to
    /// this JSON-lines file, beside the in-memory log of `GET /admin/audit`.
    #[arg(
        long,
        env = "LOCUS_AUDIT_LOG",
        help = "Append every routing-policy change (swap, rollback, shadow, canary, \
                promotion, abort) to this JSON-lines file; `GET /admin/audit` shows the \
                last ones either way"
    )]
    pub audit_log: Option<PathBuf>,
    /// Tenants, priorities and the queue.
    #[command(flatten)]
    pub flow: FlowOptions,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            workers: Vec::new(),
            discover: Vec::new(),
            discover_interval: Duration::from_secs(1),
            policy: PolicySource::Builtin("hash"),
            settings: Vec::new(),
            admin_token: None,
            health_interval: Duration::from_millis(500),
            fail_threshold: 2,
            success_threshold: 1,
            max_retries: 2,
            request_timeout: Duration::from_secs(300),
            faults: FaultPolicy::default(),
            watch: None,
            limits: ServeLimits::default(),
            max_upload_bytes: crate::http::MAX_UPLOAD_BYTES,
            route_tokens: DEFAULT_ROUTE_TOKENS,
            load_interval: Duration::from_millis(200),
            kv_events: true,
            worker_token: None,
            cluster_token: None,
            cluster_over_http: false,
            session_header: DEFAULT_SESSION_HEADER.into(),
            audit_log: None,
            flow: FlowOptions::default(),
        }
    }
}

/// Default of [`RouterOptions::route_tokens`]: distilgpt2's whole context, 64 blocks.
pub const DEFAULT_ROUTE_TOKENS: usize = 1024;

/// The request header whose value is a policy's session key unless `--session-header`
/// names another.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";

/// Where `locus router` listens for requests unless told otherwise (as `locus run`'s
/// router).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8000);

/// Where a router serves its admin API unless told otherwise: loopback, as the API swaps
/// policies.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8100);

/// Milliseconds from a flag, raised to 10: a tighter loop would only busy the workers.
fn millis_raised_to_ten() -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::builder::TypedValueParser::map(
        <u64 as clap::builder::ValueParserFactory>::value_parser(),
        |ms| Duration::from_millis(ms.max(10)),
    )
}

/// Milliseconds from a flag, 10 or more (fewer are refused).
fn millis_from_ten() -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::builder::TypedValueParser::map(
        <u64 as clap::builder::ValueParserFactory>::value_parser().range(10..),
        Duration::from_millis,
    )
}

/// A count of health checks from a flag, raised to one, the fewest that decide anything.
fn count_raised_to_one() -> impl clap::builder::TypedValueParser<Value = u32> {
    clap::builder::TypedValueParser::map(
        <u32 as clap::builder::ValueParserFactory>::value_parser(),
        |n| n.max(1),
    )
}

/// A token from a flag or the environment; empty is none.
fn token_or_none() -> impl clap::builder::TypedValueParser<Value = Option<String>> {
    clap::builder::TypedValueParser::map(clap::builder::StringValueParser::new(), |t| {
        Some(t).filter(|t| !t.is_empty())
    })
}
