//! The workers a router knows, their health (checked on an interval and learnt from failed
//! requests) and their in-flight counts.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Serialize;

use crate::api::signals::LoadReport;
use crate::api::{ErrorBody, SHUTTING_DOWN};

/// A worker as the router sees it.
#[derive(Debug)]
pub struct Backend {
    /// Base URL.
    pub url: String,
    /// Id passed to the policy: a hash of the id the worker reports (`--worker-id`) once
    /// known, of its URL until then. See [`Backend::identify`].
    id: AtomicU64,
    /// The id the worker reported.
    name: ArcSwapOption<String>,
    /// A clash of reported ids was logged (once per worker, not per poll).
    clash_logged: AtomicBool,
    healthy: AtomicBool,
    /// A health check of this worker is under way (the next tick skips it).
    checking: AtomicBool,
    in_flight: AtomicU32,
    fails: AtomicU32,
    passes: AtomicU32,
    load: ArcSwapOption<Reported>,
}

/// A load report and when it arrived.
#[derive(Debug, Clone)]
pub struct Reported {
    /// What the worker said (its `GET /load`).
    pub load: LoadReport,
    /// When the router received it.
    pub at: Instant,
}

/// A worker's base URL as the router keeps it, `scheme://host[:port]`, or why `url` cannot
/// be one: only http(s), a host, and an optional port. A path, query, fragment or
/// credentials would aim the router's requests (and its cluster token) somewhere other
/// than the worker's API, and credentials would show in headers and metric labels.
pub fn worker_base_url(url: &str) -> Result<String, String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("`{url}` is not an http(s) URL with a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("`{url}` holds credentials: give only scheme, host and port"));
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "`{url}` has a path, query or fragment: give only scheme, host and port"
        ));
    }
    Ok(u.origin().ascii_serialization())
}

/// Stable 64-bit id of a worker's name or URL (FNV-1a: the same on every router and run).
pub fn worker_id(name: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    name.trim_end_matches('/').hash(&mut h);
    h.finish()
}

impl Backend {
    /// A worker at `url`, assumed up until a check fails.
    pub fn new(url: &str) -> Arc<Self> {
        let url = url.trim_end_matches('/').to_string();
        Arc::new(Self {
            id: AtomicU64::new(worker_id(&url)),
            name: ArcSwapOption::empty(),
            clash_logged: AtomicBool::new(false),
            url,
            healthy: AtomicBool::new(true),
            checking: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            load: ArcSwapOption::empty(),
        })
    }

    /// The id the policy knows it by (see [`Backend::identify`]).
    pub fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// The id the worker reported, once it has.
    pub fn name(&self) -> Option<Arc<String>> {
        self.name.load_full()
    }

    /// Takes the id the worker reports as its identity, so that a worker that comes back
    /// at another address is the same worker to the policy (rendezvous hashing gives it
    /// its keys back) and one that is replaced at the same address is not. Returns whether
    /// the id changed. [`Registry::identify`] also settles a name reported at two
    /// addresses.
    pub fn identify(&self, name: &str) -> bool {
        if self.name.load().as_deref().is_some_and(|n| n == name) {
            return false;
        }
        let id = worker_id(name);
        self.name.store(Some(Arc::new(name.to_string())));
        let old = self.id.swap(id, Ordering::Relaxed);
        if old != id {
            tracing::info!(worker = %self.url, worker_id = name, "worker identified");
        }
        old != id
    }

    /// Goes back to being known by its URL.
    fn forget_identity(&self) {
        self.name.store(None);
        self.id.store(worker_id(&self.url), Ordering::Relaxed);
    }

    /// Its last load report; `None` until one has arrived.
    pub fn load(&self) -> Option<Arc<Reported>> {
        self.load.load_full()
    }

    pub(super) fn set_load(&self, load: Option<LoadReport>) {
        self.load.store(load.map(|load| Arc::new(Reported { load, at: Instant::now() })));
    }

    /// Whether health checks currently pass.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests the router has sent it that have not finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request to it starts; it ends when the guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// A check or request failed; `threshold` in a row mark it down.
    pub(super) fn failed(&self, threshold: u32, why: &str) {
        self.passes.store(0, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(worker = %self.url, %why, "worker marked down");
        }
    }

    fn passed(&self, threshold: u32) {
        self.fails.store(0, Ordering::Relaxed);
        let n = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(worker = %self.url, "worker marked up");
        }
    }

    /// Its entry in `GET /admin/workers`.
    pub fn info(&self) -> BackendInfo {
        // One read, so that the report and its age belong together.
        let reported = self.load();
        BackendInfo {
            url: self.url.clone(),
            id: format!("{:016x}", self.id()),
            worker_id: self.name().map(|n| n.to_string()),
            healthy: self.healthy(),
            in_flight: self.in_flight(),
            load: reported.as_ref().map(|r| r.load.clone()),
            load_age_ms: reported.map(|r| r.at.elapsed().as_millis() as u64),
            kv_blocks: None,
        }
    }
}

/// Counts one request against a worker's in-flight count while it lives.
pub(super) struct InFlightGuard(pub Arc<Backend>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's entry in `GET /admin/workers`.
#[derive(Debug, Serialize)]
pub struct BackendInfo {
    url: String,
    id: String,
    /// The id the worker reported (`--worker-id`), absent until it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    healthy: bool,
    in_flight: u32,
    /// Its last load report, absent until one has arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    load: Option<LoadReport>,
    /// Milliseconds since that report arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_age_ms: Option<u64>,
    /// Prefix blocks the router knows it holds, from its KV events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_blocks: Option<usize>,
}

/// The worker set, swapped whole on every change so that readers never lock.
pub struct Registry {
    backends: ArcSwap<Vec<Arc<Backend>>>,
    /// Failed checks (or refused requests) after which a worker is marked down.
    pub fail_threshold: u32,
    /// Passed checks after which a down worker is marked up again.
    pub success_threshold: u32,
}

impl Registry {
    /// Workers at `urls`, all assumed up until a check fails.
    pub fn new(urls: &[String], fail_threshold: u32, success_threshold: u32) -> Self {
        let backends = urls.iter().map(|u| Backend::new(u)).collect();
        Self { backends: ArcSwap::from_pointee(backends), fail_threshold, success_threshold }
    }

    /// The workers, in registration order.
    pub fn all(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// The workers whose checks pass.
    pub fn healthy(&self) -> Vec<Arc<Backend>> {
        self.backends.load().iter().filter(|b| b.healthy()).cloned().collect()
    }

    /// Adds a worker; false if it is already there.
    pub fn add(&self, url: &str) -> bool {
        self.insert(Backend::new(url))
    }

    /// Whether a worker at `url` is there.
    pub fn contains(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        self.backends.load().iter().any(|b| b.url == url)
    }

    /// Adds `b`; false if a worker at its URL is already there.
    pub fn insert(&self, b: Arc<Backend>) -> bool {
        let mut added = false;
        self.backends.rcu(|cur| {
            let mut v = (**cur).clone();
            added = !v.iter().any(|x| x.url == b.url);
            if added {
                v.push(b.clone());
            }
            v
        });
        added
    }

    /// Gives `b` the id its worker reports, unless a healthy worker at another address
    /// already has it: the same worker reached twice (two names for one host, a worker
    /// listed by hand and discovered too), which must not count twice; `b` keeps its URL
    /// id and the clash is logged. An unhealthy holder is the worker's old address: it
    /// goes back to its URL id and `b` takes the name. Returns whether `b` has the name.
    pub fn identify(&self, b: &Backend, name: &str) -> bool {
        if b.name().is_some_and(|n| n.as_str() == name) {
            return true;
        }
        let all = self.all();
        let holder =
            all.iter().find(|o| o.url != b.url && o.name().is_some_and(|n| n.as_str() == name));
        match holder {
            Some(o) if o.healthy() => {
                if b.clash_logged.swap(true, Ordering::Relaxed) {
                    return false;
                }
                tracing::warn!(worker = %b.url, other = %o.url, worker_id = name, "two addresses report the same worker id; routing to it by the first only");
                false
            }
            Some(o) => {
                o.forget_identity();
                b.identify(name);
                true
            }
            None => {
                b.identify(name);
                true
            }
        }
    }

    /// Whether a healthy worker other than at `url` reports `name`.
    pub fn named_elsewhere(&self, url: &str, name: &str) -> bool {
        self.all()
            .iter()
            .any(|o| o.url != url && o.healthy() && o.name().is_some_and(|n| n.as_str() == name))
    }

    /// Removes `b` itself (not another worker since added at its URL); false if it is gone.
    pub fn remove_backend(&self, b: &Arc<Backend>) -> bool {
        let mut removed = false;
        self.backends.rcu(|cur| {
            let v: Vec<_> = cur.iter().filter(|x| !Arc::ptr_eq(x, b)).cloned().collect();
            removed = v.len() != cur.len();
            v
        });
        removed
    }

    /// Removes a worker; false if it was not there.
    pub fn remove(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        let mut removed = false;
        self.backends.rcu(|cur| {
            let v: Vec<_> = cur.iter().filter(|b| b.url != url).cloned().collect();
            removed = v.len() != cur.len();
            v
        });
        removed
    }

    /// Checks every worker's `/health` every `interval`, forever. Each worker's check runs
    /// on its own task, and a worker whose last check has not ended yet is skipped: a frozen
    /// worker's one-second timeouts delay only its own checks, never the others' (with one
    /// round awaiting every check, one frozen worker slowed every worker's detection).
    pub async fn health_loop(self: Arc<Self>, client: reqwest::Client, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for b in self.all().iter() {
                if b.checking.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let (b, client, reg) = (b.clone(), client.clone(), self.clone());
                tokio::spawn(async move {
                    let _check = Checking(b.clone());
                    let r = client
                        .get(format!("{}/health", b.url))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => b.passed(reg.success_threshold),
                        Ok(r) => {
                            let status = r.status();
                            // A worker that says it is shutting down is out at once: that
                            // is its own word, not a failure that may pass.
                            let body = r.json::<ErrorBody>().await.ok();
                            let draining = body
                                .is_some_and(|e| e.error.code.as_deref() == Some(SHUTTING_DOWN));
                            let threshold = if draining { 1 } else { reg.fail_threshold };
                            b.failed(threshold, &format!("health {status}"))
                        }
                        Err(e) => b.failed(reg.fail_threshold, &e.to_string()),
                    }
                });
            }
        }
    }
}

/// Marks a worker's health check as ended when dropped, however the check ends (a panic, or
/// the runtime shutting down), so that no worker is left unchecked for good.
struct Checking(Arc<Backend>);

impl Drop for Checking {
    fn drop(&mut self) {
        self.0.checking.store(false, Ordering::Release);
    }
}
