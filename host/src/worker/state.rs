//! A worker's state, shared by its handlers, and how it is built: the engine, both cache
//! levels, the queue, the metrics, the KV event listener and the shutdown flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use locus_engine::Engine;
use tokio::sync::Semaphore;

use super::caches::Caches;
use super::kv_listener::KvEvents;
use super::kv_transfer::Pulls;
use super::metrics::Metrics;
use super::options::WorkerOptions;
use super::throughput::{self, Throughput};

/// A worker's state, shared by its handlers.
pub struct Worker {
    /// The model, its scheduler and its prefix store.
    pub(super) engine: Arc<Engine>,
    /// Both cache levels.
    pub(super) caches: Caches,
    /// One permit per request waiting or running; none left means 429.
    pub(super) queue: Arc<Semaphore>,
    /// How it was set up.
    pub(super) options: WorkerOptions,
    /// What `/metrics` reports.
    pub(super) metrics: Metrics,
    /// When it was built (reported as its start time).
    pub(super) started: SystemTime,
    /// The engine's KV listener, which `/kv_events` subscribes to.
    pub(super) kv_events: Arc<KvEvents>,
    /// The token rate `/load` reports.
    pub(super) throughput: Throughput,
    /// Set when the worker stops, to end the streams that never end by themselves
    /// (`/kv_events`), which a graceful shutdown would otherwise wait for.
    pub(super) closing: tokio::sync::watch::Sender<bool>,
    /// One permit per KV transfer served at once.
    pub(super) exports: Arc<Semaphore>,
    /// Pulls in flight and the prefill speed that bounds them.
    pub(super) pulls: Pulls,
    /// The client of pulls.
    pub(super) http: reqwest::Client,
    /// Set on shutdown: `/health` fails.
    pub(super) draining: AtomicBool,
    /// Set once a shutdown stops accepting: requests still arriving get 503.
    pub(super) refusing: AtomicBool,
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
        let kv_events = Arc::new(KvEvents::new(&metrics.kv_events));
        engine.set_kv_listener(Some(kv_events.clone()));
        let worker = Arc::new(Self {
            caches,
            queue: Arc::new(Semaphore::new(options.max_queue.max(1))),
            exports: Arc::new(Semaphore::new(options.max_exports)),
            pulls: Pulls::default(),
            // Never follow a redirect: a pull carries the cluster token, which a redirect
            // would resend to wherever the holder pointed.
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(std::time::Duration::from_secs(1))
                .build()?,
            throughput: Throughput::new(engine.scheduler_stats().generated_tokens),
            engine,
            options,
            metrics,
            started: SystemTime::now(),
            kv_events,
            closing: tokio::sync::watch::channel(false).0,
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        });
        throughput::spawn_sampler(&worker, |w| {
            w.throughput.record(Instant::now(), w.engine.scheduler_stats().generated_tokens)
        });
        Ok(worker)
    }

    /// Ends the streams that only end with the worker (`/kv_events`).
    pub(super) fn close_streams(&self) {
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

    /// The served model's name, as the answers and `/v1/models` give it.
    pub(super) fn model_name(&self) -> String {
        self.engine.model_info().name.clone()
    }
}
