//! The router's queue: requests wait here, per band, until a dispatch slot is free and the
//! admission policy picks them; the host's caps, time-to-live and hang-ups are enforced
//! here, and every refusal becomes 429 (contention) or 503 (no capacity) with a
//! Retry-After from the measured drain rate, never a 500.
//!
//! One dispatcher task hands out slots (`pump`), woken by arrivals and by requests ending;
//! a request holds its slot (a [`Ticket`]) until its answer has been relayed whole.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::identity::Identity;
use super::metrics::FlowCounters;
use super::options::FlowOptions;
use crate::api::ApiError;
use locus_policy::{AbandonReason, AdmissionPolicy, Arrival, BANDS, RefusalKind, Saturation};

/// Retry-After when no worker is healthy (a router just started, every worker restarting).
const NO_WORKER_RETRY_AFTER_S: u64 = 1;

/// Dispatches remembered for the drain rate.
const DRAIN_WINDOW: Duration = Duration::from_secs(30);

/// How often the dispatcher looks at the queue without being woken: the time-to-live,
/// workers coming and going, a policy that left slots empty.
const TICK: Duration = Duration::from_millis(50);

/// The service gap is measured over windows this long (VTC's evaluation used 60 s).
const GAP_WINDOW: Duration = Duration::from_secs(60);

/// Generated tokens counted in a request's demand at most: the model's context.
const DEMAND_TOKENS_CAP: u32 = 1024;

/// What a waiting request is told when it leaves the queue.
enum Go {
    /// A slot is its own: route it (ahead of its band in the worker, if so chosen).
    Dispatch { ahead: bool },
    /// It will not be served: answer this.
    Refused(ApiError),
}

struct Waiter {
    go: oneshot::Sender<Go>,
    band: usize,
    bytes: u64,
    tenant: Arc<str>,
    arrived: Instant,
    /// Weighted tokens it asks for: input + 2 x max tokens (capped at the model's context).
    demand: u64,
}

/// Each tenant's (input, output) tokens served, as the admission component counts them.
type Served = HashMap<String, (u64, u64)>;

#[derive(Default)]
struct Inner {
    waiting: HashMap<u64, Waiter>,
    queued: [u32; BANDS],
    bytes: [u64; BANDS],
    /// When recent requests were dispatched (the last `DRAIN_WINDOW`).
    dispatches: VecDeque<Instant>,
    /// The service gap's window: when it began, and each tenant's tokens served then.
    window: Option<(Instant, Served)>,
}

impl Inner {
    fn total(&self) -> u32 {
        self.queued.iter().sum()
    }

    fn take(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiting.remove(&id)?;
        self.queued[w.band] -= 1;
        self.bytes[w.band] -= w.bytes;
        Some(w)
    }
}

/// The dispatch slots of the healthy workers now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slots {
    /// Each healthy worker's dispatch limit, summed.
    pub total: u32,
}

/// The router's queue and its admission policy.
pub struct Queue {
    admission: AdmissionPolicy,
    opts: FlowOptions,
    inner: Mutex<Inner>,
    /// Requests holding a slot (a live [`Ticket`]).
    dispatched: AtomicU32,
    wake: Arc<Notify>,
    epoch: Instant,
    metrics: FlowCounters,
}

/// A request waiting in the queue; dropping it (the client hung up) takes it out.
pub struct Waiting {
    queue: Arc<Queue>,
    id: u64,
    rx: Option<oneshot::Receiver<Go>>,
}

/// A dispatch slot, held until the request's answer has been relayed whole.
pub struct Ticket {
    queue: Arc<Queue>,
    /// The admission policy sent it ahead of its band's others in the worker.
    pub ahead: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.dispatched.fetch_sub(1, Ordering::AcqRel);
        self.queue.wake.notify_one();
    }
}

impl Waiting {
    /// Waits for a slot: the ticket, or the answer to give instead (time-to-live).
    pub async fn wait(mut self) -> Result<Ticket, ApiError> {
        // The receiver stays in `self` while it is awaited, so that a client leaving now
        // (this future dropped) still takes the request out of the queue.
        let got = match self.rx.as_mut() {
            Some(rx) => rx.await,
            None => return Err(ApiError::internal("a queue place was waited on twice")),
        };
        self.rx = None;
        match got {
            Ok(Go::Dispatch { ahead }) => Ok(Ticket { queue: self.queue.clone(), ahead }),
            Ok(Go::Refused(e)) => Err(e),
            // The queue went away (the router is stopping).
            Err(_) => Err(ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                "the router is shutting down",
                1,
            )),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // The client went away while the request waited.
        let gone = self.queue.inner.lock().take(self.id);
        if gone.is_some() {
            self.queue.admission.abandoned(self.id, AbandonReason::Hangup);
            self.queue.wake.notify_one();
            return;
        }
        // It left the queue meanwhile (the dispatcher sends under the lock just taken, so
        // what it sent is here): a slot given to a client that left is free again.
        if let Ok(Go::Dispatch { ahead }) = rx.try_recv() {
            drop(Ticket { queue: self.queue.clone(), ahead });
            self.queue.admission.completed(self.id, None);
        }
    }
}

impl Queue {
    /// A queue ordered by `admission`, counting into `metrics`.
    pub fn new(opts: FlowOptions, admission: AdmissionPolicy, metrics: FlowCounters) -> Arc<Self> {
        Arc::new(Self {
            admission,
            opts,
            inner: Mutex::new(Inner::default()),
            dispatched: AtomicU32::new(0),
            wake: Arc::new(Notify::new()),
            epoch: Instant::now(),
            metrics,
        })
    }

    /// The admission policy slot.
    pub fn admission(&self) -> &AdmissionPolicy {
        &self.admission
    }

    /// The dispatched request `id` ended (told once per request; later calls do nothing).
    pub fn completed(&self, id: u64, generated: Option<u32>) {
        if let Some(s) = self.admission.completed(id, generated) {
            self.metrics.served(&s.tenant, s.input, s.output);
        }
    }

    /// The dispatched request `id` streamed `tokens` more tokens.
    pub fn usage(&self, id: u64, tokens: u32) {
        self.admission.usage(id, tokens);
    }

    /// Requests holding a slot now.
    pub fn dispatched(&self) -> u32 {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Requests waiting now, per band.
    pub fn queued(&self) -> [u32; BANDS] {
        self.inner.lock().queued
    }

    fn ms(&self, t: Instant) -> u64 {
        t.duration_since(self.epoch).as_millis() as u64
    }

    fn saturation(&self, inner: &Inner, slots: Slots) -> Saturation {
        let dispatched = self.dispatched();
        let level = if slots.total == 0 {
            f32::INFINITY
        } else {
            (dispatched + inner.total()) as f32 / slots.total as f32
        };
        Saturation {
            now_ms: self.ms(Instant::now()),
            total_slots: slots.total,
            free_slots: slots.total.saturating_sub(dispatched),
            queued: inner.queued.to_vec(),
            band_caps: vec![self.opts.band_max; BANDS],
            level,
        }
    }

    /// Seconds until `ahead` requests have left the queue at the rate it drained over the
    /// last `DRAIN_WINDOW`; the cap when nothing drained.
    fn retry_after(&self, inner: &Inner, ahead: u32) -> u64 {
        let now = Instant::now();
        let span = now.duration_since(self.epoch).min(DRAIN_WINDOW).as_secs_f64().max(1.0);
        let rate = inner.dispatches.len() as f64 / span;
        let max = self.opts.max_retry_after_s;
        if rate <= 0.0 {
            return max;
        }
        ((f64::from(ahead) + 1.0) / rate).ceil().clamp(1.0, max as f64) as u64
    }

    /// Queues request `id` (or refuses it): the host's caps first, then the admission
    /// policy. The returned [`Waiting`] resolves when a slot is the request's.
    #[allow(clippy::too_many_arguments)]
    pub fn enter(
        self: &Arc<Self>,
        id: u64,
        who: &Identity,
        input_tokens: Option<u32>,
        uncached_tokens: Option<u32>,
        max_tokens: u32,
        bytes: usize,
        slots: Slots,
    ) -> Result<Waiting, ApiError> {
        let band = usize::from(who.priority).min(BANDS - 1);
        let bytes = bytes as u64;
        let mut inner = self.inner.lock();
        let o = &self.opts;
        let full = if slots.total == 0 {
            Some(("no_worker", "no healthy worker can take requests"))
        } else if inner.total() >= o.queue_max {
            Some(("queue_full", "the router's queue is full"))
        } else if inner.queued[band] >= o.band_max {
            Some(("band_full", "this priority band's queue is full"))
        } else if inner.bytes.iter().sum::<u64>() + bytes > o.queue_max_bytes {
            Some(("queue_bytes", "the router's queue holds its most bytes"))
        } else if inner.bytes[band] + bytes > o.band_max_bytes {
            Some(("band_bytes", "this priority band's queue holds its most bytes"))
        } else {
            None
        };
        if let Some((reason, msg)) = full {
            // Without a worker the drain rate says nothing (it is 0, and the cap, 60 s,
            // would hold clients back long after a worker is found): the health checks
            // and discovery look again within a second.
            let (status, secs) = if reason == "no_worker" {
                (StatusCode::SERVICE_UNAVAILABLE, NO_WORKER_RETRY_AFTER_S)
            } else {
                (StatusCode::TOO_MANY_REQUESTS, self.retry_after(&inner, inner.total()))
            };
            self.metrics.refused(&who.tenant, band, reason, status);
            return Err(ApiError::overloaded(status, msg, secs).with_code(reason_code(reason)));
        }
        let now = Instant::now();
        let arrival = Arrival {
            id,
            tenant: who.tenant.to_string(),
            priority: band as u8,
            input_tokens,
            uncached_tokens,
            max_tokens,
            bytes: bytes.min(u64::from(u32::MAX)) as u32,
            arrived_ms: self.ms(now),
        };
        let sat = self.saturation(&inner, slots);
        if let (Err(refusal), _) = self.admission.arrive(arrival, &sat) {
            let (status, label) = match refusal.kind {
                RefusalKind::Contention => (StatusCode::TOO_MANY_REQUESTS, "policy_contention"),
                RefusalKind::Capacity => (StatusCode::SERVICE_UNAVAILABLE, "policy_capacity"),
            };
            let secs = self.retry_after(&inner, inner.total());
            self.metrics.refused(&who.tenant, band, label, status);
            let msg = format!("refused by the admission policy: {}", refusal.reason);
            return Err(ApiError::overloaded(status, msg, secs).with_code(reason_code(label)));
        }
        let (tx, rx) = oneshot::channel();
        let demand = u64::from(input_tokens.unwrap_or((bytes / 4) as u32))
            + 2 * u64::from(max_tokens.min(DEMAND_TOKENS_CAP));
        let w = Waiter { go: tx, band, bytes, tenant: who.tenant.clone(), arrived: now, demand };
        inner.waiting.insert(id, w);
        inner.queued[band] += 1;
        inner.bytes[band] += bytes;
        drop(inner);
        self.wake.notify_one();
        Ok(Waiting { queue: self.clone(), id, rx: Some(rx) })
    }

    /// Hands out free slots to the requests the policy picks, while there are both.
    fn pump(&self, slots: Slots) {
        let mut inner = self.inner.lock();
        while !inner.waiting.is_empty() && self.dispatched() < slots.total {
            let sat = self.saturation(&inner, slots);
            let Some(choice) = self.admission.pick(&sat).0 else { break };
            let id = choice.id;
            let Some(w) = inner.take(id) else {
                // The policy's record and the queue disagree: cannot happen while both
                // change under this lock; stop rather than spin.
                tracing::error!(id, "admission picked a request the queue does not hold");
                break;
            };
            self.dispatched.fetch_add(1, Ordering::AcqRel);
            let now = Instant::now();
            inner.dispatches.push_back(now);
            self.metrics.dispatched(&w.tenant, w.band, now.duration_since(w.arrived));
            if w.go.send(Go::Dispatch { ahead: choice.ahead }).is_err() {
                // Its client left between the pick and now.
                self.dispatched.fetch_sub(1, Ordering::AcqRel);
                self.admission.completed(id, None);
            }
        }
        let cutoff = Instant::now().checked_sub(DRAIN_WINDOW);
        while let (Some(front), Some(cut)) = (inner.dispatches.front(), cutoff) {
            if *front >= cut {
                break;
            }
            inner.dispatches.pop_front();
        }
    }

    /// Answers 503 to requests that waited past the time-to-live.
    fn expire(&self) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        let ttl = self.opts.queue_ttl;
        let old: Vec<u64> = inner
            .waiting
            .iter()
            .filter(|(_, w)| now.duration_since(w.arrived) > ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            let Some(w) = inner.take(id) else { continue };
            let secs = self.retry_after(&inner, inner.total());
            let msg = format!("waited {}s in the router's queue without a worker", ttl.as_secs());
            let e = ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, msg, secs)
                .with_code("queue_timeout");
            self.metrics.refused(&w.tenant, w.band, "expired", e.status);
            self.admission.abandoned(id, AbandonReason::Expired);
            let _ = w.go.send(Go::Refused(e));
        }
    }

    /// Closes the service gap's window when it is due: each tenant's weighted service in
    /// it (from the tokens served), against the demand of its requests still waiting.
    fn measure_gap(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let due = match &inner.window {
            None => true,
            Some((start, _)) => now.duration_since(*start) >= GAP_WINDOW,
        };
        if !due {
            return;
        }
        let served: Served =
            self.admission.served_all().into_iter().map(|(t, i, o)| (t, (i, o))).collect();
        if let Some((_, before)) = &inner.window {
            let mut unmet: HashMap<&str, u64> = HashMap::new();
            for w in inner.waiting.values() {
                *unmet.entry(&w.tenant).or_default() += w.demand;
            }
            let service = |t: &str| {
                let (i, o) = served.get(t).copied().unwrap_or_default();
                let (i0, o0) = before.get(t).copied().unwrap_or_default();
                (i.saturating_sub(i0) + 2 * o.saturating_sub(o0)) as f64
            };
            let tenants: Vec<&str> =
                served.keys().map(String::as_str).chain(unmet.keys().copied()).collect();
            let best = tenants.iter().map(|t| service(t)).fold(0.0, f64::max);
            let mut seen = std::collections::HashSet::new();
            let gap: f64 = tenants
                .iter()
                .filter(|t| seen.insert(**t))
                .map(|t| (best - service(t)).min(unmet.get(t).copied().unwrap_or(0) as f64))
                .sum();
            self.metrics.gap.set(gap);
        }
        inner.window = Some((now, served));
    }

    /// Starts the dispatcher: it hands out slots whenever one may be free (`slots` tells
    /// how many the healthy workers have), and expires requests. Ends with the queue.
    pub fn spawn_dispatcher(self: &Arc<Self>, slots: impl Fn() -> Slots + Send + 'static) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(q) = weak.upgrade() else { return };
                q.pump(slots());
                q.expire();
                q.measure_gap();
                let wake = q.wake.clone();
                drop(q);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        });
    }
}

/// The `code` of a refusal's answer, for clients that read it.
fn reason_code(reason: &str) -> &'static str {
    match reason {
        "no_worker" => "no_capacity",
        "policy_capacity" => "no_capacity",
        "policy_contention" => "tenant_over_share",
        "band_full" | "band_bytes" => "band_full",
        _ => "queue_full",
    }
}
