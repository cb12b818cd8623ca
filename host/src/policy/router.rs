//! Routing policies: the `router` world.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::sandbox::State;
use super::slot::{FaultPolicy, Slot, Version, World};
use super::{Fault, LoadError, LoadOptions, PolicyInfo, PolicySource, fallback};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "router" });
}

pub use bindings::locus::policy::types::{Completion, Request, Workers};

/// Builds the parallel lists of [`Workers`] from `(id, in_flight)` pairs.
pub fn workers(iter: impl IntoIterator<Item = (u64, u32)>) -> Workers {
    let (ids, in_flight) = iter.into_iter().unzip();
    Workers { ids, in_flight }
}

pub(crate) struct RouterWorld;

impl World for RouterWorld {
    const NAME: &'static str = "router";
    const STATEFUL: bool = false;
    type Pre = bindings::RouterPre<State>;
    type Bindings = bindings::Router;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
        bindings::RouterPre::new(ip)
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
        let workers = workers((1..=4).map(|id| (id, id as u32)));
        let req = Request {
            id: 0,
            prompt: "locus smoke call: the quick brown fox jumps over the lazy dog".into(),
            max_new_tokens: 16,
        };
        let index = match b.call_route(&mut *store, &req, &workers)? {
            Ok(i) => i,
            Err(msg) => return Ok(Err(Fault::Error(msg))),
        };
        if let Err(f) = check_index(index, &workers) {
            return Ok(Err(f));
        }
        let done = Completion {
            request_id: 0,
            worker_id: workers.ids[index as usize],
            ok: true,
            latency_us: 1000,
            prompt_tokens: 12,
            cached_tokens: 0,
        };
        b.call_observe(store, done)?;
        Ok(Ok(()))
    }
}

fn check_index(index: u32, workers: &Workers) -> Result<usize, Fault> {
    let len = workers.ids.len();
    if (index as usize) < len { Ok(index as usize) } else { Err(Fault::OutOfRange { index, len }) }
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen worker in the list given to [`RouterPolicy::route`].
    pub index: usize,
    /// Set when the policy faulted and the native fallback decided.
    pub fault: Option<Fault>,
}

/// The routing policy slot of a router: route requests, swap and roll back policies.
///
/// Router policies are stateless by default: several instances serve concurrent callers
/// (a pool, reused most-recent-first, so a single caller always meets the same instance).
pub struct RouterPolicy {
    slot: Slot<RouterWorld>,
}

impl RouterPolicy {
    /// Loads `source` as the first policy.
    pub fn load(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
    ) -> Result<Self, LoadError> {
        Ok(Self { slot: Slot::new(load(source, opts)?, faults) })
    }

    /// Validates `source` and, only if it passes, makes it serve. On error the serving
    /// policy is unchanged.
    pub fn swap(&self, source: &PolicySource, opts: &LoadOptions) -> Result<PolicyInfo, LoadError> {
        let v = load(source, opts)?;
        Ok(self.slot.swap(v))
    }

    /// Goes back to the previous policy (the native fallback if there is none).
    pub fn rollback(&self) -> PolicyInfo {
        self.slot.rollback()
    }

    /// What is serving.
    pub fn info(&self) -> PolicyInfo {
        self.slot.info()
    }

    /// Faults over the slot's lifetime, all versions together.
    pub fn total_faults(&self) -> u64 {
        self.slot.total_faults()
    }

    /// Rollbacks over the slot's lifetime (asked for or caused by faults).
    pub fn rollbacks(&self) -> u64 {
        self.slot.rollbacks()
    }

    /// Chooses one of `workers` (the healthy ones) for `req`; `None` when there is none
    /// (or the lists of `workers` differ in length).
    pub fn route(&self, req: &Request, workers: &Workers) -> Option<Decision> {
        let n = workers.ids.len();
        debug_assert_eq!(workers.in_flight.len(), n);
        if n == 0 || workers.in_flight.len() != n {
            return None;
        }
        let native = || fallback::rendezvous(&req.prompt, workers.ids.iter().copied());
        let (index, fault) = self.slot.call(
            |b, store| {
                Ok(b.call_route(store, req, workers)?
                    .map_err(Fault::Error)
                    .and_then(|i| check_index(i, workers)))
            },
            || native().expect("the worker list is not empty"),
        );
        Some(Decision { index, fault })
    }

    /// Tells the policy a routed request completed.
    pub fn observe(&self, done: &Completion) {
        self.slot.call(|b, store| b.call_observe(store, *done).map(Ok), || ());
    }
}

fn load(source: &PolicySource, opts: &LoadOptions) -> Result<Version<RouterWorld>, LoadError> {
    match source {
        PolicySource::Native => Ok(Version::native()),
        _ => {
            let mut opts = opts.clone();
            opts.instances = opts.instance_count();
            Version::load(source, &opts)
        }
    }
}
