//! `locus router`: the gateway. Routes each request to a worker chosen by the routing
//! policy component and relays the answer; serves an admin API on its own listener.
//!
//! It may import `crate::api` (the wire types), `crate::http` and `crate::serve` (handler
//! helpers, listeners), `crate::clock`, `locus_policy` and `locus_tokens`; never
//! `crate::worker` or `locus_engine`, so that the gateway builds without the model
//! (`--no-default-features`).
//!
//! Files: `routes` reads the public requests, `proxy/` routes, retries and relays them,
//! `registry` keeps the workers and their health, `discovery` finds workers by DNS or a
//! file, `signals` follows the workers' load and KV events, `tokens` turns prompts into KV
//! block hashes, `admin` is the admin API, `watch` follows files (the policy's: swapped
//! when it changes), `metrics` counts. They share the [`Gateway`] defined here; among
//! themselves imports point one way (`discovery` uses `watch` and `registry`; `admin`,
//! `signals` and `proxy` use `registry`; `proxy` uses `tokens`; `registry`, `tokens`,
//! `watch` and `metrics` use no other file).

mod admin;
mod discovery;
mod metrics;
mod proxy;
mod registry;
mod routes;
mod signals;
mod tokens;
mod watch;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
// Locks without poisoning: none guards state a panic could leave half-changed, and one
// panicked request must not stop the router.
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use admin::admin_router;
pub use discovery::{Discover, parse_workers_file};
pub use proxy::{ROUTE_US, ROUTING_PROMPT_BYTES};
pub use registry::{Backend, BackendInfo, Registry, Reported, worker_id};
pub use tokens::PromptTokens;

use crate::api::Endpoint;
use crate::serve::{ServeLimits, limit_bodies, serve};
use locus_policy::{AuditLog, Completion, FaultPolicy, LoadOptions, PolicySource, RouterPolicy};
use metrics::Metrics;

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
    /// Leading prompt tokens whose block hashes a 0.2.0 policy is given (0: none).
    #[arg(
        long,
        help = "Leading prompt tokens the router tokenizes (GPT-2's tokenizer, as the \
                workers) to give a 0.2.0 policy the prompt's KV block hashes; 0 turns \
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
                running batch, KV blocks, tokens per second), which a 0.2.0 policy is \
                given with its age",
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
    /// Bearer token presented to the workers' `/kv_events` (their admin token).
    // The path spelled out keeps clap from unwrapping the `Option`, so that the parser's
    // `None` for an empty value (Compose passes an unset variable as one) is kept.
    #[arg(
        long,
        env = "LOCUS_WORKER_TOKEN",
        hide_env_values = true,
        help = "Bearer token for the workers' `/kv_events` when they have an admin token \
                (`locus run` passes the workers' own; a standalone router sends none \
                unless given one)",
        value_parser = token_or_none(),
        default_value = "",
        hide_default_value = true
    )]
    pub worker_token: std::option::Option<String>,
    /// Request header whose value is passed to the policy as the session key.
    #[arg(
        long,
        help = "Request header whose value is given to the policy as the session key",
        value_parser = lower_case(),
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
            session_header: DEFAULT_SESSION_HEADER.into(),
            audit_log: None,
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

/// A header name from a flag, in lower case: names are case-insensitive, and one spelling
/// is kept.
fn lower_case() -> impl clap::builder::TypedValueParser<Value = String> {
    clap::builder::TypedValueParser::map(clap::builder::StringValueParser::new(), |h| {
        h.to_ascii_lowercase()
    })
}

/// The last completions told to the policy, for `GET /admin/feedback`: what the policy
/// saw, readable by an operator (and by tests).
#[derive(Default)]
pub struct Feedback(Mutex<VecDeque<Completion>>);

/// Completions kept by [`Feedback`].
pub const FEEDBACK_KEPT: usize = 256;

impl Feedback {
    fn record(&self, done: &Completion) {
        let mut q = self.0.lock();
        if q.len() == FEEDBACK_KEPT {
            q.pop_front();
        }
        q.push_back(*done);
    }

    /// The kept completions, oldest first.
    pub fn recent(&self) -> Vec<Completion> {
        self.0.lock().iter().copied().collect()
    }
}

/// The router's state, shared by its handlers.
pub struct Gateway {
    policy: RouterPolicy,
    registry: Arc<Registry>,
    client: reqwest::Client,
    /// For `/load` and `/kv_events`: a stream silent past `signals::SILENT_STREAM` is lost.
    signals_client: reqwest::Client,
    metrics: Metrics,
    next_id: AtomicU64,
    options: RouterOptions,
    feedback: Feedback,
    tokens: Arc<PromptTokens>,
    /// Set by [`Gateway::drain`]: `/health` fails while requests in flight finish.
    draining: AtomicBool,
    /// Tells both listeners to stop accepting.
    stop: tokio::sync::watch::Sender<bool>,
    /// The listeners' serving tasks, awaited by [`Gateway::drain`].
    served: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
}

impl Gateway {
    /// Loads the policy and sets up the workers (all assumed up until a check fails).
    pub fn new(options: RouterOptions) -> anyhow::Result<Arc<Self>> {
        let opts = LoadOptions::with_settings(options.settings.clone());
        let audit = AuditLog::open(options.audit_log.as_deref())?;
        let policy =
            RouterPolicy::load_audited(&options.policy, &opts, options.faults, Arc::new(audit))?;
        let registry = Registry::new(
            &options.workers,
            options.fail_threshold.max(1),
            options.success_threshold.max(1),
        );
        // A limit per read, not per answer: a stream may run for minutes while its
        // events keep coming.
        let client = reqwest::Client::builder()
            .read_timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()?;
        let signals_client = reqwest::Client::builder()
            .read_timeout(signals::SILENT_STREAM)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Arc::new(Self {
            policy,
            registry: Arc::new(registry),
            client,
            signals_client,
            metrics: Metrics::new(),
            next_id: AtomicU64::new(1),
            options,
            feedback: Feedback::default(),
            tokens: Arc::new(PromptTokens::default()),
            draining: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            served: Mutex::new(Vec::new()),
        }))
    }

    /// The routing policy slot.
    pub fn policy(&self) -> &RouterPolicy {
        &self.policy
    }

    /// The workers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The last completions told to the policy.
    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// Whether the router is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Resolves once [`Gateway::drain`] has begun.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Shuts the router down: `/health` fails at once while the router goes on serving
    /// for `delay` (time for load balancers to take it out of rotation), then both
    /// listeners stop accepting and the requests in flight (streams included) get up to
    /// `grace` to finish. Returns whether they all did.
    pub async fn drain(&self, delay: Duration, grace: Duration) -> bool {
        self.draining.store(true, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        self.stop.send_replace(true);
        let served: Vec<_> = std::mem::take(&mut *self.served.lock());
        tokio::time::timeout(grace, futures_util::future::join_all(served)).await.is_ok()
    }

    /// The public HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let routes = Router::new()
            .route(Endpoint::Generate.path(), post(routes::generate))
            .route(Endpoint::Completions.path(), post(routes::completions))
            .route(Endpoint::Chat.path(), post(routes::chat))
            .route("/v1/models", get(routes::models))
            .route("/health", get(routes::health))
            .route("/metrics", get(routes::metrics));
        let limits = &self.options.limits;
        limit_bodies(routes, limits, limits.max_body_bytes)
            .fallback(crate::http::not_found)
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .with_state(self.clone())
    }
}

/// Binds the public and admin listeners and starts serving, health checks and the file
/// watch. Returns the bound addresses.
pub async fn spawn(
    options: RouterOptions,
    addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, SocketAddr, Arc<Gateway>)> {
    let gw = Gateway::new(options)?;
    // Workers down now are identified by their first load report later.
    signals::identify(&gw, Duration::from_secs(1)).await;
    let listener = TcpListener::bind(addr).await?;
    let admin = TcpListener::bind(admin_addr).await?;
    let (local, admin_local) = (listener.local_addr()?, admin.local_addr()?);
    let limits = gw.options.limits.clone();
    let public = tokio::spawn(serve(listener, gw.router(), limits.clone(), gw.stopped()));
    let admin = tokio::spawn(serve(admin, admin_router(gw.clone()), limits, gw.stopped()));
    gw.served.lock().extend([public, admin]);
    let interval = gw.options.health_interval.max(Duration::from_millis(10));
    tokio::spawn(gw.registry.clone().health_loop(gw.client.clone(), interval));
    let load_interval = gw.options.load_interval.max(Duration::from_millis(10));
    tokio::spawn(signals::run(Arc::downgrade(&gw), load_interval));
    if let Some(path) = gw.options.watch.clone() {
        watch::watch(gw.clone(), path);
    }
    let discover_interval = gw.options.discover_interval.max(Duration::from_millis(10));
    for source in gw.options.discover.clone() {
        discovery::spawn(&gw, source, discover_interval);
    }
    Ok((local, admin_local, gw))
}
