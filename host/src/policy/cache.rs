//! Cache policies: the `cache` world. The host stores the bytes; the policy decides
//! what is admitted and what is evicted.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::sandbox::State;
use super::slot::{FaultPolicy, Slot, Version, World};
use super::{Fault, LoadError, LoadOptions, PolicyInfo, PolicySource};

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
}

/// The cache policy slot of one store. One instance serves all calls, since a cache
/// policy keeps state. When an instance is re-made (after a fault, or a swap), the
/// host's resident entries are replayed to it through `admit` in recency order (least
/// recent first), so the new instance knows what is cached.
pub struct CachePolicy {
    slot: Slot<CacheWorld>,
}

impl CachePolicy {
    /// Loads `source` as the first policy.
    pub fn load(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
    ) -> Result<Self, LoadError> {
        Ok(Self { slot: Slot::new(load(source, opts)?, faults) })
    }

    /// Where fresh instances learn the resident entries: least recently used first.
    pub fn set_residents(&self, residents: impl Fn() -> Vec<Entry> + Send + Sync + 'static) {
        let residents = Arc::new(residents);
        self.slot.set_init(Box::new(move |b, store| {
            for e in residents() {
                b.call_admit(&mut *store, e)?;
            }
            Ok(())
        }));
    }

    /// Validates `source` and, only if it passes, makes it serve.
    pub fn swap(&self, source: &PolicySource, opts: &LoadOptions) -> Result<PolicyInfo, LoadError> {
        Ok(self.slot.swap(load(source, opts)?))
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

    /// Whether to keep `e`. The fallback admits nothing (the cache is bypassed).
    pub fn admit(&self, e: Entry) -> bool {
        self.slot.call(|b, s| Ok(Ok(b.call_admit(s, e)?)), || false).0
    }

    /// A cached entry was used.
    pub fn hit(&self, key: u64) {
        self.slot.call(|b, s| Ok(Ok(b.call_hit(s, key)?)), || ());
    }

    /// Keys to drop to free `bytes_needed`; the fallback frees nothing.
    pub fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        self.slot.call(|b, s| Ok(Ok(b.call_evict(s, bytes_needed)?)), Vec::new).0
    }

    /// The host dropped `key`.
    pub fn removed(&self, key: u64) {
        self.slot.call(|b, s| Ok(Ok(b.call_removed(s, key)?)), || ());
    }
}

fn load(source: &PolicySource, opts: &LoadOptions) -> Result<Version<CacheWorld>, LoadError> {
    match source {
        PolicySource::Native => Ok(Version::native()),
        _ => Version::load(source, opts),
    }
}
