//! The router's state, shared by its handlers and tasks: the policy, the workers, the
//! clients, the metrics, the feedback kept for operators, and the drain.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// Locks without poisoning: none guards state a panic could leave half-changed, and one
// panicked request must not stop the router.
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::options::RouterOptions;
use super::registry::Registry;
use super::tokens::PromptTokens;
use locus_policy::{AuditLog, Completion, LoadOptions, RouterPolicy};

/// A KV event stream silent for this long is taken as lost (workers send a keep-alive
/// every 5 s), so a worker cut off without a reset is forgotten within it.
pub(super) const SILENT_STREAM: Duration = Duration::from_secs(15);

/// The last completions told to the policy, for `GET /admin/feedback`: what the policy
/// saw, readable by an operator (and by tests).
#[derive(Default)]
pub struct Feedback(Mutex<VecDeque<Completion>>);

/// Completions kept by [`Feedback`].
pub const FEEDBACK_KEPT: usize = 256;

impl Feedback {
    pub(super) fn record(&self, done: &Completion) {
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
    pub(super) policy: RouterPolicy,
    pub(super) registry: Arc<Registry>,
    pub(super) client: reqwest::Client,
    /// For `/load` and `/kv_events`: a stream silent past `signals::SILENT_STREAM` is lost.
    pub(super) signals_client: reqwest::Client,
    pub(super) metrics: Metrics,
    pub(super) next_id: AtomicU64,
    pub(super) options: RouterOptions,
    pub(super) feedback: Feedback,
    pub(super) tokens: Arc<PromptTokens>,
    /// Set by [`Gateway::drain`]: `/health` fails while requests in flight finish.
    pub(super) draining: AtomicBool,
    /// Tells both listeners to stop accepting.
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    /// The listeners' serving tasks, awaited by [`Gateway::drain`].
    pub(super) served: Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
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
            .read_timeout(SILENT_STREAM)
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
    pub(super) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
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
}
