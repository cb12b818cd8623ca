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

use super::flow::{ApiKeys, Queue, Slots};
use super::metrics::Metrics;
use super::options::RouterOptions;
use super::registry::{Backend, Registry};
use super::tokens::PromptTokens;
use locus_policy::{AdmissionPolicy, AuditLog, Completion, LoadOptions, RouterPolicy};

/// A KV event stream silent for this long is taken as lost (workers send a keep-alive
/// every 5 s), so a worker cut off without a reset is forgotten within it.
pub(super) const SILENT_STREAM: Duration = Duration::from_secs(15);

/// Requests dispatched at once to a worker that has not reported its batch size yet.
pub const UNREPORTED_DISPATCH_LIMIT: u32 = 8;

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
    /// The queue and its admission policy.
    pub(super) queue: Arc<Queue>,
    /// The data-plane API keys (none: tenants from a header).
    pub(super) keys: ApiKeys,
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
        let audit = Arc::new(AuditLog::open(options.audit_log.as_deref())?);
        let policy =
            RouterPolicy::load_audited(&options.policy, &opts, options.faults, audit.clone())?;
        let flow = &options.flow;
        let admission_opts = LoadOptions::with_settings(flow.admission_settings.clone());
        let admission = AdmissionPolicy::load(&flow.admission, &admission_opts, options.faults)?;
        admission.set_audit(audit);
        let keys = ApiKeys::load(flow)?;
        let metrics = Metrics::new();
        let queue = Queue::new(flow.clone(), admission, metrics.flow.clone());
        let registry = Registry::new(
            &options.workers,
            options.fail_threshold.max(1),
            options.success_threshold.max(1),
        );
        // A limit per read, not per answer: a stream may run for minutes while its
        // events keep coming. Neither client follows redirects: requests to workers carry
        // the worker and cluster tokens, which a redirect would resend elsewhere. Nor do
        // they go through the environment's HTTP proxy: workers are on the cluster's own
        // network (a proxy set for the user's web traffic would take every worker down,
        // and read the tokens).
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .read_timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()?;
        let signals_client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .read_timeout(SILENT_STREAM)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Arc::new(Self {
            policy,
            registry: Arc::new(registry),
            client,
            signals_client,
            metrics,
            next_id: AtomicU64::new(1),
            options,
            feedback: Feedback::default(),
            tokens: Arc::new(PromptTokens::default()),
            queue,
            keys,
            draining: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            served: Mutex::new(Vec::new()),
        }))
    }

    /// The routing policy slot.
    pub fn policy(&self) -> &RouterPolicy {
        &self.policy
    }

    /// The queue and its admission policy.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The workers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The last completions told to the policy.
    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// Requests dispatched to `b` at once at most: `--dispatch-limit`, else the batch size
    /// `b` reports, else [`UNREPORTED_DISPATCH_LIMIT`].
    pub(super) fn dispatch_limit(&self, b: &Backend) -> u32 {
        self.options.flow.dispatch_limit.unwrap_or_else(|| {
            b.load().and_then(|r| r.load.max_batch).unwrap_or(UNREPORTED_DISPATCH_LIMIT).max(1)
        })
    }

    /// Whether requests wait in the queue (`--dispatch-limit 0` sends them on at once).
    pub(super) fn queueing(&self) -> bool {
        self.options.flow.dispatch_limit != Some(0)
    }

    /// The healthy workers' dispatch slots.
    pub(super) fn slots(&self) -> Slots {
        let total = self.registry.healthy().iter().map(|b| self.dispatch_limit(b)).sum();
        Slots { total }
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
