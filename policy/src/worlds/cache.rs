//! Cache policies: the `cache` world. The host stores the bytes; the policy decides
//! what is admitted and what is evicted.

use std::sync::Arc;

use parking_lot::Mutex;

use lru::LruCache;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::info::PolicyInfo;
use crate::load::{LoadError, PolicySource};
use crate::runtime::LoadOptions;
use crate::runtime::sandbox::{Limits, State};
use crate::runtime::slot::Slot;
use crate::runtime::version::Version;
use crate::runtime::world::{Feed, World};
use crate::runtime::{AuditLog, Fault, FaultPolicy};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "cache" });
}

pub use bindings::locus::policy::types::{Entry, EntryKind};

pub(crate) struct CacheWorld;

impl World for CacheWorld {
    const NAME: &'static str = "cache";
    const STATEFUL: bool = true;
    type Pre = bindings::CachePre<State>;
    type Bindings = bindings::Cache;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
        bindings::CachePre::new(ip)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings> {
        pre.instantiate(store)
    }

    fn configure(
        b: &Self::Bindings,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        b.call_configure(store, &settings.to_vec())
    }

    fn smoke(b: &Self::Bindings, store: &mut Store<State>) -> wasmtime::Result<Result<(), Fault>> {
        let e = Entry { key: 1, kind: EntryKind::Response, size: 1 };
        b.call_admit(&mut *store, e)?;
        b.call_hit(&mut *store, 1)?;
        b.call_evict(&mut *store, 1)?;
        b.call_removed(store, 1)?;
        Ok(Ok(()))
    }

    fn version(_: &Self::Pre) -> &'static str {
        // The cache world is the same in 0.1.0 and 0.2.0 (a component built for either
        // type-checks as both), so there is nothing to tell them apart by.
        "0.2.0"
    }
}

/// Tells a fresh instance the resident entries, least recently used first, so that the
/// policy's own recency order matches.
struct Residents(Arc<Mutex<LruCache<u64, Entry>>>);

impl Feed<CacheWorld> for Residents {
    fn replay(
        &self,
        b: &bindings::Cache,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64> {
        let entries: Vec<Entry> = self.0.lock().iter().rev().map(|(_, e)| *e).collect();
        for e in entries {
            State::arm(store, limits);
            b.call_admit(&mut *store, e)?;
        }
        Ok(0)
    }

    fn catch_up(
        &self,
        _: &bindings::Cache,
        _: &mut Store<State>,
        _: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64> {
        // One instance sees every call, so there is nothing it missed.
        Ok(cursor)
    }
}

/// A cache policy that passed loading and is ready to [`CachePolicy::install`].
pub struct PreparedCache(Version<CacheWorld>);

/// The cache policy slot of one store. One instance serves all calls, since a cache
/// policy keeps state.
///
/// The wrapper keeps its own record of what the policy has been told is resident (from
/// `admit`, `hit`, `evict` and `removed`), so that a fresh instance (after a fault, or a
/// swap) is told the resident entries again through `admit`, least recently used first,
/// before it decides anything. Nothing cached is forgotten by a swap.
pub struct CachePolicy {
    slot: Slot<CacheWorld>,
    residents: Arc<Mutex<LruCache<u64, Entry>>>,
}

impl CachePolicy {
    /// Loads `source` as the first policy.
    pub fn load(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
    ) -> Result<Self, LoadError> {
        let slot = Slot::new(load(source, opts)?, faults);
        let residents = Arc::new(Mutex::new(LruCache::unbounded()));
        slot.set_feed(Box::new(Residents(residents.clone())));
        Ok(Self { slot, residents })
    }

    /// Records the rollbacks the fault rules make in `audit`.
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        self.slot.set_audit(audit);
    }

    /// Validates `source` and, only if it passes, makes it serve.
    pub fn swap(&self, source: &PolicySource, opts: &LoadOptions) -> Result<PolicyInfo, LoadError> {
        Ok(self.install(Self::prepare(source, opts)?))
    }

    /// Loads and checks `source` without making it serve, so that several slots can be
    /// swapped together once all their candidates have passed.
    pub fn prepare(source: &PolicySource, opts: &LoadOptions) -> Result<PreparedCache, LoadError> {
        load(source, opts).map(PreparedCache)
    }

    /// Makes a prepared policy serve (told of the resident entries first).
    pub fn install(&self, prepared: PreparedCache) -> PolicyInfo {
        self.slot.swap(prepared.0)
    }

    /// Goes back to the previous policy (the native bypass if there is none).
    pub fn rollback(&self) -> PolicyInfo {
        self.slot.rollback()
    }

    /// What is serving.
    pub fn info(&self) -> PolicyInfo {
        self.slot.info()
    }

    /// Faults over the slot's lifetime.
    pub fn total_faults(&self) -> u64 {
        self.slot.total_faults()
    }

    /// Entries the policy has been told are resident, least recently used first.
    pub fn residents(&self) -> Vec<Entry> {
        self.residents.lock().iter().rev().map(|(_, e)| *e).collect()
    }

    /// Whether to keep `e`. The fallback admits nothing (the cache is bypassed).
    pub fn admit(&self, e: Entry) -> bool {
        let admitted = self.slot.call(|b, s| Ok(Ok(b.call_admit(s, e)?)), || false).0;
        if admitted {
            self.residents.lock().put(e.key, e);
        }
        admitted
    }

    /// A cached entry was used.
    pub fn hit(&self, key: u64) {
        self.slot.call(|b, s| Ok(Ok(b.call_hit(s, key)?)), || ());
        self.residents.lock().promote(&key);
    }

    /// Keys to drop to free `bytes_needed`; the fallback frees nothing. The returned keys
    /// count as removed.
    pub fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        let keys = self.slot.call(|b, s| Ok(Ok(b.call_evict(s, bytes_needed)?)), Vec::new).0;
        let mut residents = self.residents.lock();
        for k in &keys {
            residents.pop(k);
        }
        keys
    }

    /// The host dropped `key`.
    pub fn removed(&self, key: u64) {
        self.slot.call(|b, s| Ok(Ok(b.call_removed(s, key)?)), || ());
        self.residents.lock().pop(&key);
    }

    /// The host dropped everything.
    pub fn flushed(&self) {
        let keys: Vec<u64> = self.residents.lock().iter().map(|(k, _)| *k).collect();
        for k in keys {
            self.removed(k);
        }
    }
}

fn load(source: &PolicySource, opts: &LoadOptions) -> Result<Version<CacheWorld>, LoadError> {
    match source {
        PolicySource::Native => Ok(Version::native()),
        _ => Version::load(source, opts),
    }
}
