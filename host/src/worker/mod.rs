//! `locus worker`: one model behind SGLang's and OpenAI's HTTP APIs, with two cache levels
//! (whole responses, the engine's prefix KV store) governed by a cache policy component.
//!
//! Files: `handlers` reads a request and answers it whole, `stream` answers it as
//! Server-Sent Events, `run` queues and runs it (response cache, then engine), `stop`
//! cuts text at stop sequences, `caches` holds both cache levels, `admin` swaps the cache
//! policy and flushes, `info` and `metrics` report, `load` (`GET /load`) and `kv_events`
//! (`GET /kv_events`) tell a router how busy the worker is and which prefix blocks it holds.

mod admin;
mod caches;
mod handlers;
mod info;
mod kv_events;
mod load;
mod metrics;
mod responses;
mod run;
mod stop;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use locus_engine::Engine;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use caches::{Caches, LevelInfo};
pub use responses::{Cached, ResponseCache};
pub use run::Finish;
pub use stop::StopMatcher;

use crate::api::Endpoint;
use crate::http::{Access, AdminAuth, require_admin};
use crate::serve::{ServeLimits, limit_bodies, serve};
use locus_policy::PolicySource;
use metrics::Metrics;

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

/// A worker's state, shared by its handlers.
pub struct Worker {
    engine: Arc<Engine>,
    caches: Caches,
    queue: Arc<Semaphore>,
    options: WorkerOptions,
    metrics: Metrics,
    started: SystemTime,
    kv_events: Arc<kv_events::KvEvents>,
    throughput: load::Throughput,
    /// Set when the worker stops, to end the streams that never end by themselves
    /// (`/kv_events`), which a graceful shutdown would otherwise wait for.
    closing: tokio::sync::watch::Sender<bool>,
    /// Set on shutdown: `/health` fails.
    draining: AtomicBool,
    /// Set once a shutdown stops accepting: requests still arriving get 503.
    refusing: AtomicBool,
}

impl Worker {
    /// A worker serving `engine`. It becomes the engine's KV listener (replacing any worker
    /// built on it before) and, inside a Tokio runtime, starts sampling its token rate.
    pub fn new(engine: Arc<Engine>, options: WorkerOptions) -> anyhow::Result<Arc<Self>> {
        let audit = locus_policy::AuditLog::open(options.audit_log.as_deref())?;
        let caches = Caches::new(
            engine.clone(),
            &options.cache_policy,
            &options.cache_settings,
            options.response_cache_bytes,
            Arc::new(audit),
        )?;
        let metrics = Metrics::new();
        let kv_events = Arc::new(kv_events::KvEvents::new(&metrics.kv_events));
        engine.set_kv_listener(Some(kv_events.clone()));
        let worker = Arc::new(Self {
            caches,
            queue: Arc::new(Semaphore::new(options.max_queue.max(1))),
            throughput: load::Throughput::new(engine.scheduler_stats().generated_tokens),
            engine,
            options,
            metrics,
            started: SystemTime::now(),
            kv_events,
            closing: tokio::sync::watch::channel(false).0,
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        });
        load::spawn_sampler(&worker);
        Ok(worker)
    }

    /// Ends the streams that only end with the worker (`/kv_events`).
    fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Whether the worker is shutting down (its `/health` fails).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the worker has stopped taking requests.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// How it was set up.
    pub fn options(&self) -> &WorkerOptions {
        &self.options
    }

    /// Both cache levels.
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        let limits = &self.options.limits;
        let auth = |access| AdminAuth { token: self.options.admin_token.clone(), access };
        let api = Router::new()
            .route(Endpoint::Generate.path(), post(handlers::generate))
            .route(Endpoint::Completions.path(), post(handlers::completions))
            .route(Endpoint::Chat.path(), post(handlers::chat))
            .route("/v1/models", get(info::models))
            .route("/health", get(info::health))
            .route("/server_info", get(info::server_info))
            .route("/get_server_info", get(info::server_info))
            .route("/model_info", get(info::model_info))
            .route("/get_model_info", get(info::model_info))
            .route("/metrics", get(info::metrics))
            .route("/load", get(load::load));
        let open_admin = Router::new()
            .route("/flush_cache", post(admin::flush_cache))
            .route("/kv_events", get(kv_events::kv_events))
            .route("/admin/cache-policy", get(admin::cache_policy_info))
            .route("/admin/audit", get(admin::audit))
            .layer(from_fn_with_state(auth(Access::OpenWithoutToken), require_admin));
        // The token is checked before the body is read: an upload may be tens of MB.
        let upload = limit_bodies(
            Router::new().route("/admin/cache-policy", put(admin::swap_cache_policy)),
            limits,
            self.options.max_upload_bytes,
        )
        .layer(from_fn_with_state(auth(Access::TokenRequired), require_admin));
        limit_bodies(api.merge(open_admin), limits, limits.max_body_bytes)
            .merge(upload)
            .fallback(crate::http::not_found)
            .method_not_allowed_fallback(crate::http::method_not_allowed)
            .with_state(self.clone())
    }

    fn model_name(&self) -> String {
        self.engine.model_info().name.clone()
    }
}

/// A running worker.
pub struct WorkerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Its state.
    pub worker: Arc<Worker>,
}

impl WorkerHandle {
    /// Stops accepting connections, lets in-flight requests finish, closes idle
    /// connections, and waits until the listener is gone.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Serves until SIGTERM or Ctrl-C, then drains: `/health` fails at once while the
    /// worker goes on serving for `delay` (time for load balancers and DNS to take it out
    /// of rotation), then it stops accepting connections, refuses requests that still
    /// arrive on open ones (503, which a router retries elsewhere) and gives those in
    /// flight up to `grace` to finish. A second signal ends it at once.
    pub async fn until_signal(mut self, delay: Duration, grace: Duration) -> std::io::Result<()> {
        let signal = tokio::select! {
            r = &mut self.task => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            s = crate::serve::shutdown_signal() => s?,
        };
        let in_flight = self
            .worker
            .options
            .max_queue
            .max(1)
            .saturating_sub(self.worker.queue.available_permits());
        tracing::info!(%signal, in_flight, delay_s = delay.as_secs_f64(), grace_s = grace.as_secs_f64(), "draining");
        self.worker.draining.store(true, Ordering::Relaxed);
        let worker = self.worker.clone();
        let drain = async move {
            tokio::time::sleep(delay).await;
            worker.refusing.store(true, Ordering::Relaxed);
            match tokio::time::timeout(grace, self.stop()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still in flight after the grace period; exiting");
                    Ok(())
                }
            }
        };
        tokio::select! {
            r = drain => r,
            s = crate::serve::shutdown_signal() => {
                tracing::warn!(signal = %s?, "second signal; exiting without waiting");
                Ok(())
            }
        }
    }
}

/// Serves a worker for `engine` on `addr` (port 0 picks one).
pub async fn spawn(
    engine: Arc<Engine>,
    options: WorkerOptions,
    addr: SocketAddr,
) -> anyhow::Result<WorkerHandle> {
    let limits = options.limits.clone();
    let worker = Worker::new(engine, options)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let closing = worker.clone();
    let task = tokio::spawn(serve(listener, worker.router(), limits, async move {
        let _ = stopped.await;
        closing.close_streams();
    }));
    Ok(WorkerHandle { addr: local, stop: Some(stop), task, worker })
}
