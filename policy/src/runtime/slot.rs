//! A policy slot: the version now serving, the versions before it, and the machinery that
//! swaps, contains faults and rolls back. Generic over the world, so the router and cache
//! policies share all of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use wasmtime::Store;

use super::audit::{Actor, AuditEvent, AuditLog};
use super::fault::Fault;
use super::sandbox::State;
use super::version::Version;
use super::world::{Feed, World};
use crate::info::PolicyInfo;

/// When repeated faults make the slot give up on a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    /// Faults within `window` that trigger a rollback.
    pub max_faults: u32,
    /// The sliding window faults are counted in.
    pub window: Duration,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        Self { max_faults: 5, window: Duration::from_secs(60) }
    }
}

/// The version now serving, with history for rollback.
pub(crate) struct Slot<W: World> {
    current: ArcSwap<Version<W>>,
    history: Mutex<Vec<Arc<Version<W>>>>,
    swapping: Mutex<()>,
    faults: FaultPolicy,
    feed: ArcSwapOption<Box<dyn Feed<W>>>,
    total_faults: AtomicU64,
    rollbacks: AtomicU64,
    /// Where rollbacks made by the fault rules are recorded.
    audit: OnceLock<Arc<AuditLog>>,
}

/// Versions kept for rollback.
const HISTORY: usize = 8;

impl<W: World> Slot<W> {
    pub(crate) fn new(first: Version<W>, faults: FaultPolicy) -> Self {
        Self {
            current: ArcSwap::from_pointee(first),
            history: Mutex::new(Vec::new()),
            swapping: Mutex::new(()),
            faults,
            feed: ArcSwapOption::empty(),
            total_faults: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            audit: OnceLock::new(),
        }
    }

    /// Records the rollbacks the fault rules make in `audit`.
    pub(crate) fn set_audit(&self, audit: Arc<AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// The version serving now.
    pub(crate) fn current(&self) -> Arc<Version<W>> {
        self.current.load_full()
    }

    pub(crate) fn set_feed(&self, feed: Box<dyn Feed<W>>) {
        self.feed.store(Some(Arc::new(feed)));
    }

    /// Makes `next` serve. Calls that start after this returns use it.
    pub(crate) fn swap(&self, next: Version<W>) -> PolicyInfo {
        self.swap_arc(Arc::new(next))
    }

    /// [`Slot::swap`] for a version that served elsewhere (a promoted candidate).
    pub(crate) fn swap_arc(&self, next: Arc<Version<W>>) -> PolicyInfo {
        let _g = self.swapping.lock();
        let info = next.info();
        let old = self.current.swap(next);
        let mut history = self.history.lock();
        history.push(old);
        if history.len() > HISTORY {
            history.remove(0);
        }
        tracing::info!(world = W::NAME, policy = %info.name, sha256 = %info.sha256, "policy swapped in");
        info
    }

    /// Goes back to the previous version, or to the native fallback if there is none.
    pub(crate) fn rollback(&self) -> PolicyInfo {
        let _g = self.swapping.lock();
        self.rollback_locked()
    }

    fn rollback_locked(&self) -> PolicyInfo {
        let prev = self.history.lock().pop().unwrap_or_else(|| Arc::new(Version::native()));
        let info = prev.info();
        let from = self.current.swap(prev);
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(world = W::NAME, from = %from.info.name, to = %info.name, "policy rolled back");
        info
    }

    pub(crate) fn info(&self) -> PolicyInfo {
        self.current.load().info()
    }

    /// Whether the serving version implements contract version `v` (no copy of its info).
    pub(crate) fn serves_version(&self, v: &str) -> bool {
        self.current.load().info.version == v
    }

    pub(crate) fn total_faults(&self) -> u64 {
        self.total_faults.load(Ordering::Relaxed)
    }

    pub(crate) fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }

    /// Runs `f` on the serving version's policy; `fallback` decides natively when there
    /// is no wasm policy or when the call faults. Returns the fault, if any.
    pub(crate) fn call<R>(
        &self,
        f: impl FnOnce(&W::Bindings, &mut Store<State>) -> wasmtime::Result<Result<R, Fault>>,
        fallback: impl FnOnce() -> R,
    ) -> (R, Option<Fault>) {
        let version = self.current.load();
        let Some(wasm) = &version.wasm else {
            return (fallback(), None);
        };
        let feed = self.feed.load();
        match wasm.call(feed.as_deref().map(|b| &**b), f) {
            Ok(r) => (r, None),
            Err(fault) => {
                let version = arc_swap::Guard::into_inner(version);
                self.record_fault(&version, &fault);
                (fallback(), Some(fault))
            }
        }
    }

    fn record_fault(&self, version: &Arc<Version<W>>, fault: &Fault) {
        self.total_faults.fetch_add(1, Ordering::Relaxed);
        let n = version.faults.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(world = W::NAME, policy = %version.info.name, faults = n, %fault, "policy fault; native fallback served");
        let now = Instant::now();
        let over = {
            let mut recent = version.recent.lock();
            recent.push_back(now);
            while recent.front().is_some_and(|t| now.duration_since(*t) > self.faults.window) {
                recent.pop_front();
            }
            recent.len() >= self.faults.max_faults as usize
        };
        if over && !version.given_up.swap(true, Ordering::AcqRel) {
            let _g = self.swapping.lock();
            // Only if it still serves: a swap may have replaced it meanwhile.
            if Arc::ptr_eq(&self.current.load(), version) {
                tracing::warn!(
                    world = W::NAME,
                    policy = %version.info.name,
                    "{} faults within {:?}: rolling back",
                    self.faults.max_faults,
                    self.faults.window
                );
                let to = self.rollback_locked();
                if let Some(audit) = self.audit.get() {
                    let by = Actor::locus(format!(
                        "fault rules: {} faults within {:?} (last: {fault})",
                        self.faults.max_faults, self.faults.window
                    ));
                    audit.change(
                        AuditEvent::Rollback,
                        W::NAME,
                        &to,
                        Some(&version.info.sha256),
                        &by,
                    );
                }
            }
        }
    }
}
