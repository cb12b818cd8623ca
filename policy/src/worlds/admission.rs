//! Admission policies: the `admission` world (contract 0.3.0). The router's host owns the
//! queue; the policy orders it and refuses arrivals past a tenant's or band's share.
//!
//! One instance serves every call (the policy keeps state). The facade keeps its own record
//! of what the policy has been told (waiting requests, tokens served per tenant), so that a
//! fresh instance (a swap, a rollback, a replacement after a fault) is told the same state
//! before it decides, and so that the native fallback (first in, first out) can decide
//! when the policy faults.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::info::PolicyInfo;
use crate::load::{LoadError, PolicySource};
use crate::runtime::sandbox::{Limits, State};
use crate::runtime::slot::Slot;
use crate::runtime::version::Version;
use crate::runtime::world::{Feed, World};
use crate::runtime::{Actor, AuditEvent, AuditLog, Fault, FaultPolicy, LoadOptions};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "admission" });
}

pub use bindings::locus::policy::admission_types::{
    AbandonReason, Arrival, Choice, Refusal, RefusalKind, Saturation,
};

/// Priority bands: 0 (lowest) to `BANDS - 1` (highest).
pub const BANDS: usize = 4;

/// Tenants whose served tokens are remembered for a fresh instance (least recently served
/// forgotten first), so that a stream of made-up tenant names cannot grow the record.
pub const TENANTS_KEPT: usize = 4096;

impl Saturation {
    /// A figure for an idle cluster of `slots` slots with nothing queued.
    pub fn idle(slots: u32) -> Self {
        Self {
            now_ms: 0,
            total_slots: slots,
            free_slots: slots,
            queued: vec![0; BANDS],
            band_caps: vec![0; BANDS],
            level: 0.0,
        }
    }
}

pub(crate) struct AdmissionWorld;

impl World for AdmissionWorld {
    const NAME: &'static str = "admission";
    const STATEFUL: bool = true;
    type Pre = bindings::AdmissionPre<State>;
    type Bindings = bindings::Admission;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
        bindings::AdmissionPre::new(ip)
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
        let mut s = Saturation::idle(4);
        s.band_caps = vec![64; BANDS];
        let a = Arrival {
            id: 1,
            tenant: "locus-smoke".into(),
            priority: 1,
            input_tokens: Some(40),
            uncached_tokens: Some(24),
            max_tokens: 16,
            bytes: 200,
            arrived_ms: 0,
        };
        b.call_served(&mut *store, "locus-smoke", 0, 0)?;
        if let Err(r) = b.call_arrive(&mut *store, &a, &s)? {
            // A refusal of the only request into an empty queue is a policy that can
            // never admit anything.
            return Ok(Err(Fault::Error(format!("refused into an empty queue: {}", r.reason))));
        }
        s.queued[1] = 1;
        match b.call_pick(&mut *store, &s)?.map(|c| c.id) {
            Some(1) => {
                b.call_dispatched(&mut *store, 1, Some(24))?;
                b.call_usage(&mut *store, 1, 8)?;
                b.call_completed(&mut *store, 1, Some(16))?;
            }
            Some(other) => {
                return Ok(Err(Fault::Error(format!(
                    "picked request {other}, which is not waiting"
                ))));
            }
            None => b.call_abandoned(&mut *store, 1, AbandonReason::Dropped)?,
        }
        Ok(Ok(()))
    }

    fn version(_: &Self::Pre) -> &'static str {
        "0.3.0"
    }
}

/// What one request was served, told when it completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Whose request it was.
    pub tenant: String,
    /// Prompt tokens charged at dispatch (the body's bytes / 4 when they were not counted).
    pub input: u64,
    /// Tokens generated.
    pub output: u64,
}

/// A request dispatched and not yet complete: whose it is, and what it has been charged.
struct Running {
    tenant: String,
    input: u64,
    output: u64,
}

/// What the policy has been told, kept by the host.
struct Mirror {
    /// Waiting requests by id: ids ascend with arrival, so this is arrival order too.
    waiting: BTreeMap<u64, Arrival>,
    running: HashMap<u64, Running>,
    /// Tokens served per tenant: (input charged at dispatch, output generated).
    served: LruCache<String, (u64, u64)>,
    /// The last saturation figure given, for telling a fresh instance its waiting requests.
    last: Saturation,
}

impl Mirror {
    fn serve(&mut self, tenant: &str, input: u64, output: u64) {
        match self.served.get_mut(tenant) {
            Some(s) => {
                s.0 += input;
                s.1 += output;
            }
            None => {
                self.served.put(tenant.to_string(), (input, output));
            }
        }
    }
}

/// Tells a fresh instance each tenant's tokens served, then every waiting request.
struct Backlog(Arc<Mutex<Mirror>>);

impl Feed<AdmissionWorld> for Backlog {
    fn replay(
        &self,
        b: &bindings::Admission,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64> {
        let (served, waiting, last) = {
            let m = self.0.lock();
            let served: Vec<(String, (u64, u64))> =
                m.served.iter().rev().map(|(t, s)| (t.clone(), *s)).collect();
            (served, m.waiting.values().cloned().collect::<Vec<_>>(), m.last.clone())
        };
        for (tenant, (input, output)) in served {
            State::arm(store, limits);
            b.call_served(&mut *store, &tenant, input, output)?;
        }
        for a in waiting {
            State::arm(store, limits);
            // Already queued: a refusal now cannot take it back.
            let _ = b.call_arrive(&mut *store, &a, &last)?;
        }
        Ok(0)
    }

    fn catch_up(
        &self,
        _: &bindings::Admission,
        _: &mut Store<State>,
        _: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64> {
        // One instance sees every call, so there is nothing it missed.
        Ok(cursor)
    }
}

/// The router's admission policy slot: which waiting request goes next, and which arrivals
/// are refused. When the policy faults, first in, first out decides (and refuses nothing);
/// repeated faults roll it back by the slot's fault rules.
pub struct AdmissionPolicy {
    slot: Slot<AdmissionWorld>,
    mirror: Arc<Mutex<Mirror>>,
    audit: std::sync::OnceLock<Arc<AuditLog>>,
}

impl AdmissionPolicy {
    /// Loads `source` as the first policy.
    pub fn load(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
    ) -> Result<Self, LoadError> {
        let slot = Slot::new(load(source, opts)?, faults);
        let mirror = Arc::new(Mutex::new(Mirror {
            waiting: BTreeMap::new(),
            running: HashMap::new(),
            served: LruCache::new(NonZeroUsize::new(TENANTS_KEPT).expect("non-zero")),
            last: Saturation::idle(0),
        }));
        slot.set_feed(Box::new(Backlog(mirror.clone())));
        Ok(Self { slot, mirror, audit: std::sync::OnceLock::new() })
    }

    /// Records every change (and the rollbacks the fault rules make) in `audit`, starting
    /// with the policy loaded first.
    pub fn set_audit(&self, audit: Arc<AuditLog>) {
        self.slot.set_audit(audit.clone());
        let info = self.info();
        audit.change(AuditEvent::Load, AdmissionWorld::NAME, &info, None, &Actor::locus("start"));
        let _ = self.audit.set(audit);
    }

    fn record(&self, event: AuditEvent, to: &PolicyInfo, from: &PolicyInfo, by: &Actor) {
        if let Some(a) = self.audit.get() {
            a.change(event, AdmissionWorld::NAME, to, Some(&from.sha256), by);
        }
    }

    /// Validates `source` and, only if it passes, makes it serve. Its first call is
    /// preceded by the tokens served per tenant and the waiting requests.
    pub fn swap(
        &self,
        source: &PolicySource,
        opts: &LoadOptions,
        by: &Actor,
    ) -> Result<PolicyInfo, LoadError> {
        let v = load(source, opts)?;
        let prev = self.info();
        let info = self.slot.swap(v);
        self.record(AuditEvent::Swap, &info, &prev, by);
        Ok(info)
    }

    /// Goes back to the previous policy (first in, first out if there is none).
    pub fn rollback(&self, by: &Actor) -> PolicyInfo {
        let prev = self.info();
        let info = self.slot.rollback();
        self.record(AuditEvent::Rollback, &info, &prev, by);
        info
    }

    /// What is serving.
    pub fn info(&self) -> PolicyInfo {
        self.slot.info()
    }

    /// Faults over the slot's lifetime.
    pub fn total_faults(&self) -> u64 {
        self.slot.total_faults()
    }

    /// Requests waiting, as the policy has been told.
    pub fn waiting(&self) -> usize {
        self.mirror.lock().waiting.len()
    }

    /// Tokens served to `tenant` so far: (input charged at dispatch, output generated).
    pub fn served(&self, tenant: &str) -> Option<(u64, u64)> {
        self.mirror.lock().served.peek(tenant).copied()
    }

    /// Tokens served to every tenant remembered so far: (tenant, input, output).
    pub fn served_all(&self) -> Vec<(String, u64, u64)> {
        self.mirror.lock().served.iter().map(|(t, (i, o))| (t.clone(), *i, *o)).collect()
    }

    /// Queue `a`, or refuse it. Returns the fault, if the policy faulted (then it is
    /// queued: first in, first out refuses nothing).
    pub fn arrive(&self, a: Arrival, s: &Saturation) -> (Result<(), Refusal>, Option<Fault>) {
        let r = self.slot.call(|b, st| Ok(Ok(b.call_arrive(st, &a, s)?)), || Ok(()));
        let mut m = self.mirror.lock();
        m.last = s.clone();
        if r.0.is_ok() {
            m.waiting.insert(a.id, a);
        }
        r
    }

    /// The waiting request to dispatch next, if any; it leaves the waiting record. An id
    /// that is not waiting is a fault (then the oldest waiting request goes, not ahead).
    pub fn pick(&self, s: &Saturation) -> (Option<Choice>, Option<Fault>) {
        let mirror = &self.mirror;
        let oldest = || mirror.lock().waiting.keys().next().map(|&id| Choice { id, ahead: false });
        let (choice, fault) = self.slot.call(
            |b, st| {
                Ok(match b.call_pick(st, s)? {
                    Some(c) if !mirror.lock().waiting.contains_key(&c.id) => {
                        Err(Fault::Error(format!("picked request {}, which is not waiting", c.id)))
                    }
                    picked => Ok(picked),
                })
            },
            oldest,
        );
        let mut m = self.mirror.lock();
        m.last = s.clone();
        if let Some(a) = choice.and_then(|c| m.waiting.remove(&c.id)) {
            let input = u64::from(a.input_tokens.unwrap_or(a.bytes / 4));
            m.serve(&a.tenant, input, 0);
            m.running.insert(a.id, Running { tenant: a.tenant, input, output: 0 });
        }
        (choice, fault)
    }

    /// The picked request `id` was sent to a worker that lacks `uncached` of its tokens.
    pub fn dispatched(&self, id: u64, uncached: Option<u32>) -> Option<Fault> {
        self.slot.call(|b, st| Ok(Ok(b.call_dispatched(st, id, uncached)?)), || ()).1
    }

    /// The dispatched request `id` generated `tokens` more tokens.
    pub fn usage(&self, id: u64, tokens: u32) -> Option<Fault> {
        {
            let mut m = self.mirror.lock();
            let r = m.running.get_mut(&id)?;
            r.output += u64::from(tokens);
            let tenant = r.tenant.clone();
            m.serve(&tenant, 0, u64::from(tokens));
        }
        self.slot.call(|b, st| Ok(Ok(b.call_usage(st, id, tokens)?)), || ()).1
    }

    /// The dispatched request `id` ended, having generated `generated` tokens if known.
    /// Returns what it was served (`None` for an id not dispatched, or told twice).
    pub fn completed(&self, id: u64, generated: Option<u32>) -> Option<Served> {
        let served = {
            let mut m = self.mirror.lock();
            let r = m.running.remove(&id)?;
            let rest = u64::from(generated.unwrap_or(0)).saturating_sub(r.output);
            if rest > 0 {
                m.serve(&r.tenant, 0, rest);
            }
            Served { tenant: r.tenant, input: r.input, output: r.output + rest }
        };
        self.slot.call(|b, st| Ok(Ok(b.call_completed(st, id, generated)?)), || ());
        Some(served)
    }

    /// The waiting request `id` left the queue without a worker.
    pub fn abandoned(&self, id: u64, reason: AbandonReason) -> Option<Fault> {
        self.mirror.lock().waiting.remove(&id)?;
        self.slot.call(|b, st| Ok(Ok(b.call_abandoned(st, id, reason)?)), || ()).1
    }
}

fn load(source: &PolicySource, opts: &LoadOptions) -> Result<Version<AdmissionWorld>, LoadError> {
    match source {
        PolicySource::Native => Ok(Version::native()),
        _ => Version::load(source, opts),
    }
}
