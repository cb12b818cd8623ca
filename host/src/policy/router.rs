//! Routing policies: the `router` world.

use std::sync::{Arc, Mutex};

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::audit::{Actor, AuditLog};
use super::kv_feed::{KvFeed, Missed};
use super::sandbox::{Limits, State};
use super::slot::{FaultPolicy, Feed, Slot, Version, World, lock};
use super::trial::{
    BlockFill, Side, Trial, TrialMode, TrialReport, TrialRules, TrialRunning, Trials,
};
use super::{Fault, LoadError, LoadOptions, PolicyInfo, PolicySource, fallback};

#[allow(missing_docs)]
mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router",
        additional_derives: [serde::Serialize],
    });
}

#[allow(missing_docs)]
mod v1 {
    wasmtime::component::bindgen!({ path: "../wit/0.1.0", world: "router" });
}

pub use v2::locus::policy::types::{Completion, Outcome, Request, Workers};

/// Builds [`Workers`] from `(id, in_flight)` pairs, with no load reported yet.
pub fn workers(iter: impl IntoIterator<Item = (u64, u32)>) -> Workers {
    let (ids, in_flight): (Vec<u64>, Vec<u32>) = iter.into_iter().unzip();
    let n = ids.len();
    Workers {
        ids,
        in_flight,
        load_known: vec![false; n],
        load_age_ms: vec![0; n],
        waiting: vec![0; n],
        running: vec![0; n],
        kv_used_blocks: vec![0; n],
        kv_total_blocks: vec![0; n],
        tokens_per_second: vec![0.0; n],
    }
}

impl Workers {
    /// An empty list with room for `n` workers.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            in_flight: Vec::with_capacity(n),
            load_known: Vec::with_capacity(n),
            load_age_ms: Vec::with_capacity(n),
            waiting: Vec::with_capacity(n),
            running: Vec::with_capacity(n),
            kv_used_blocks: Vec::with_capacity(n),
            kv_total_blocks: Vec::with_capacity(n),
            tokens_per_second: Vec::with_capacity(n),
        }
    }

    /// Whether every list has one entry per worker.
    pub fn consistent(&self) -> bool {
        let n = self.ids.len();
        [
            self.in_flight.len(),
            self.load_known.len(),
            self.load_age_ms.len(),
            self.waiting.len(),
            self.running.len(),
            self.kv_used_blocks.len(),
            self.kv_total_blocks.len(),
            self.tokens_per_second.len(),
        ]
        .iter()
        .all(|&l| l == n)
    }
}

impl Request {
    /// A request with only a prompt (no block hashes, token count or session).
    pub fn new(id: u64, prompt: impl Into<String>, max_new_tokens: u32) -> Self {
        Self {
            id,
            prompt: prompt.into(),
            max_new_tokens,
            block_hashes: Vec::new(),
            prompt_tokens: None,
            session: None,
        }
    }
}

impl Completion {
    /// A completion of `outcome` with nothing measured yet.
    pub fn new(request_id: u64, worker_id: u64, outcome: Outcome) -> Self {
        Self {
            request_id,
            worker_id,
            outcome,
            status: 0,
            attempt: 0,
            latency_us: 0,
            ttft_us: None,
            prompt_tokens: None,
            cached_tokens: None,
            response_cache_hit: None,
            generated_tokens: None,
        }
    }
}

/// A router component of either contract version.
pub(crate) enum Pre {
    V2(v2::RouterPre<State>),
    V1(v1::RouterPre<State>),
}

pub(crate) enum Bindings {
    V2(v2::Router),
    V1(v1::Router),
}

fn to_v1_request(r: &Request) -> v1::locus::policy::types::Request {
    v1::locus::policy::types::Request {
        id: r.id,
        prompt: r.prompt.clone(),
        max_new_tokens: r.max_new_tokens,
    }
}

fn to_v1_workers(w: &Workers) -> v1::locus::policy::types::Workers {
    v1::locus::policy::types::Workers { ids: w.ids.clone(), in_flight: w.in_flight.clone() }
}

fn to_v1_completion(c: &Completion) -> v1::locus::policy::types::Completion {
    v1::locus::policy::types::Completion {
        request_id: c.request_id,
        worker_id: c.worker_id,
        ok: c.outcome == Outcome::Ok,
        latency_us: c.latency_us,
        // 0.1.0 has no "unknown": what it always got for a count it could not know.
        prompt_tokens: c.prompt_tokens.unwrap_or(0),
        cached_tokens: c.cached_tokens.unwrap_or(0),
    }
}

impl Bindings {
    fn route(
        &self,
        store: &mut Store<State>,
        req: &Request,
        workers: &Workers,
    ) -> wasmtime::Result<Result<u32, String>> {
        match self {
            Self::V2(b) => b.call_route(store, req, workers),
            Self::V1(b) => b.call_route(store, &to_v1_request(req), &to_v1_workers(workers)),
        }
    }

    fn observe(
        &self,
        store: &mut Store<State>,
        done: &Completion,
        answered: bool,
    ) -> wasmtime::Result<()> {
        match self {
            Self::V2(b) => b.call_observe(store, *done),
            // 0.1.0 promised one completion per request, once a worker answered it.
            Self::V1(b) if answered => b.call_observe(store, to_v1_completion(done)),
            Self::V1(_) => Ok(()),
        }
    }

    fn kv_events(
        &self,
        store: &mut Store<State>,
        worker: u64,
        cleared: bool,
        removed: &[u64],
        stored: &[u64],
    ) -> wasmtime::Result<()> {
        match self {
            Self::V2(b) => b.call_kv_events(store, worker, cleared, removed, stored),
            // 0.1.0 has no KV events.
            Self::V1(_) => Ok(()),
        }
    }
}

pub(crate) struct RouterWorld;

impl World for RouterWorld {
    const NAME: &'static str = "router";
    const STATEFUL: bool = false;
    type Pre = Pre;
    type Bindings = Bindings;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
        match v2::RouterPre::new(ip.clone()) {
            Ok(p) => Ok(Pre::V2(p)),
            // Not 0.2.0: a 0.1.0 component keeps working; if it is neither, 0.2.0's
            // complaint is the one to read.
            Err(e2) => v1::RouterPre::new(ip).map(Pre::V1).map_err(|_| e2),
        }
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings> {
        Ok(match pre {
            Pre::V2(p) => Bindings::V2(p.instantiate(store)?),
            Pre::V1(p) => Bindings::V1(p.instantiate(store)?),
        })
    }

    fn configure(
        b: &Self::Bindings,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match b {
            Bindings::V2(b) => b.call_configure(store, &settings.to_vec()),
            Bindings::V1(b) => b.call_configure(store, &settings.to_vec()),
        }
    }

    fn smoke(b: &Self::Bindings, store: &mut Store<State>) -> wasmtime::Result<Result<(), Fault>> {
        let mut workers = workers((1..=4).map(|id| (id, id as u32)));
        workers.load_known[1] = true;
        workers.waiting[1] = 2;
        workers.kv_total_blocks[1] = 1024;
        let prompt = "locus smoke call: the quick brown fox jumps over the lazy dog";
        let mut req = Request::new(0, prompt, 16);
        req.block_hashes = vec![0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
        req.prompt_tokens = Some(40);
        b.kv_events(&mut *store, 2, true, &[], &req.block_hashes)?;
        let index = match b.route(&mut *store, &req, &workers)? {
            Ok(i) => i,
            Err(msg) => return Ok(Err(Fault::Error(msg))),
        };
        if let Err(f) = check_index(index, &workers) {
            return Ok(Err(f));
        }
        let mut done = Completion::new(0, workers.ids[index as usize], Outcome::Ok);
        done.status = 200;
        done.latency_us = 1000;
        done.ttft_us = Some(400);
        done.prompt_tokens = Some(40);
        done.cached_tokens = Some(0);
        done.response_cache_hit = Some(false);
        done.generated_tokens = Some(16);
        b.observe(&mut *store, &done, true)?;
        b.kv_events(store, 2, true, &[], &[])?;
        Ok(Ok(()))
    }

    fn version(pre: &Self::Pre) -> &'static str {
        match pre {
            Pre::V2(_) => "0.2.0",
            Pre::V1(_) => "0.1.0",
        }
    }
}

fn check_index(index: u32, workers: &Workers) -> Result<usize, Fault> {
    let len = workers.ids.len();
    if (index as usize) < len { Ok(index as usize) } else { Err(Fault::OutOfRange { index, len }) }
}

/// Brings each instance up to date with the workers' KV events before its next call.
struct KvEvents(Arc<KvFeed>);

impl KvEvents {
    fn tell_everything(
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        sets: Vec<(u64, Vec<u64>)>,
    ) -> wasmtime::Result<()> {
        for (worker, blocks) in sets {
            State::arm(store, limits);
            b.kv_events(&mut *store, worker, true, &[], &blocks)?;
        }
        Ok(())
    }
}

impl Feed<RouterWorld> for KvEvents {
    fn replay(
        &self,
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64> {
        if let Bindings::V1(_) = b {
            return Ok(self.0.head());
        }
        let (sets, head) = self.0.everything();
        Self::tell_everything(b, store, limits, sets)?;
        Ok(head)
    }

    fn catch_up(
        &self,
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64> {
        if let Bindings::V1(_) = b {
            return Ok(cursor);
        }
        match self.0.since(cursor) {
            None => Ok(cursor),
            Some(Missed::Batches(batches)) => {
                let mut at = cursor;
                for batch in batches {
                    State::arm(store, limits);
                    b.kv_events(
                        &mut *store,
                        batch.worker,
                        batch.cleared,
                        &batch.removed,
                        &batch.stored,
                    )?;
                    at = batch.seq;
                }
                Ok(at)
            }
            Some(Missed::Everything(sets, head)) => {
                // Every worker ever heard of comes with `cleared` and its whole set
                // (empty for one that holds nothing now), so no stale block survives.
                Self::tell_everything(b, store, limits, sets)?;
                Ok(head)
            }
        }
    }
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen worker in the list given to [`RouterPolicy::route`].
    pub index: usize,
    /// Set when the policy faulted and the native fallback decided.
    pub fault: Option<Fault>,
    /// Which policy decided: the live one, or a canary's candidate.
    pub side: Side,
    /// The trial running when it was decided (0: none).
    pub trial: u64,
}

impl Decision {
    /// What [`RouterPolicy::observe`] needs to know of it.
    pub fn routed(&self) -> Routed {
        Routed { side: self.side, fallback: self.fault.is_some(), trial: self.trial }
    }
}

/// Which side of a trial routed a request, and whether the native fallback decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// The live policy or a canary's candidate.
    pub side: Side,
    /// The policy faulted and the fallback decided.
    pub fallback: bool,
    /// The trial it was routed under (0: none): a completion counts only in that one.
    pub trial: u64,
}

/// Asks `slot`'s policy to choose; the native fallback decides when it faults.
pub(crate) fn decide(
    slot: &Slot<RouterWorld>,
    req: &Request,
    workers: &Workers,
) -> (usize, Option<Fault>) {
    let native = || fallback::rendezvous(&req.prompt, workers.ids.iter().copied());
    slot.call(
        |b, store| {
            Ok(b.route(store, req, workers)?
                .map_err(Fault::Error)
                .and_then(|i| check_index(i, workers)))
        },
        || native().expect("the worker list is not empty"),
    )
}

/// Tells `slot`'s policy how an attempt ended; returns the fault, if any.
pub(crate) fn observe_in(
    slot: &Slot<RouterWorld>,
    done: &Completion,
    answered: bool,
) -> Option<Fault> {
    slot.call(|b, store| b.observe(store, done, answered).map(Ok), || ()).1
}

/// Why a candidate cannot be tried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrialError {
    /// It failed to load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Another trial runs.
    #[error(transparent)]
    Running(#[from] TrialRunning),
}

/// The routing policy slot of a router: route requests, swap and roll back policies, try
/// candidates as a shadow or a canary, and record every change in the audit log.
///
/// Router policies are stateless by default: several instances serve concurrent callers
/// (a pool, reused most-recent-first, so a single caller always meets the same instance).
pub struct RouterPolicy {
    slot: Slot<RouterWorld>,
    kv: Arc<KvFeed>,
    trials: Arc<Trials>,
    faults: FaultPolicy,
    /// One change at a time: a swap, rollback, trial start, promotion or abort.
    changing: Mutex<()>,
}

impl RouterPolicy {
    /// Loads `source` as the first policy; changes are audited in memory only.
    pub fn load(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
    ) -> Result<Self, LoadError> {
        Self::load_audited(source, opts, faults, Arc::new(AuditLog::memory()))
    }

    /// Loads `source` as the first policy, recording it and every later change in `audit`.
    pub fn load_audited(
        source: &PolicySource,
        opts: &LoadOptions,
        faults: FaultPolicy,
        audit: Arc<AuditLog>,
    ) -> Result<Self, LoadError> {
        let slot = Slot::new(load(source, opts)?, faults);
        let kv = Arc::new(KvFeed::default());
        slot.set_feed(Box::new(KvEvents(kv.clone())));
        slot.set_audit(audit.clone());
        let trials = Arc::new(Trials::new(audit, kv.clone()));
        let p = Self { slot, trials, kv, faults, changing: Mutex::new(()) };
        p.audit_change("load", &p.info(), None, &Actor::locus("the router started"));
        Ok(p)
    }

    fn audit_change(
        &self,
        event: &'static str,
        to: &PolicyInfo,
        from: Option<&PolicyInfo>,
        by: &Actor,
    ) {
        self.trials.audit.change(event, "router", to, from.map(|f| f.sha256.as_str()), by);
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.trials.audit
    }

    /// The workers' KV blocks as the router knows them; what is applied here reaches
    /// every instance of the policy.
    pub fn kv(&self) -> &Arc<KvFeed> {
        &self.kv
    }

    /// Whether requests must carry block hashes when routed: the serving policy reads them
    /// (it implements 0.2.0), or a canary runs (its candidate may read them), so that the
    /// router tokenizes prompts only when they are used.
    pub fn wants_blocks(&self) -> bool {
        self.slot.serves_version("0.2.0")
            || self.trials.current().as_ref().is_some_and(|t| t.mode != TrialMode::Shadow)
    }

    /// Whether a shadow runs, which reads block hashes (to decide, and to be scored) but
    /// can be given them later: a route call handed a [`BlockFill`] leaves tokenizing to
    /// the shadow's thread.
    pub fn shadow_wants_blocks(&self) -> bool {
        self.trials.current().as_ref().is_some_and(|t| t.mode == TrialMode::Shadow)
    }

    /// Validates `source` and, only if it passes, makes it serve; a trial running is
    /// aborted (its comparison was with the policy replaced). On error nothing changes.
    pub fn swap(
        &self,
        source: &PolicySource,
        opts: &LoadOptions,
        by: &Actor,
    ) -> Result<PolicyInfo, LoadError> {
        let v = load(source, opts)?;
        let _one_change = lock(&self.changing);
        self.end_trial_for(&format!("the live policy was replaced by {}", v.info.name));
        let prev = self.info();
        let info = self.slot.swap(v);
        self.audit_change("swap", &info, Some(&prev), by);
        Ok(info)
    }

    /// Goes back to the previous policy (the native fallback if there is none); a trial
    /// running is aborted.
    pub fn rollback(&self, by: &Actor) -> PolicyInfo {
        let _one_change = lock(&self.changing);
        self.end_trial_for("the live policy was rolled back");
        let prev = self.info();
        let info = self.slot.rollback();
        self.audit_change("rollback", &info, Some(&prev), by);
        info
    }

    fn end_trial_for(&self, why: &str) {
        if let Some(t) = self.trials.current().clone() {
            self.trials.end(&t, "aborted", &Actor::locus(why));
        }
    }

    /// Ends `t` if the live policy changed under it: the fault rules rolled it back.
    fn check_live(&self, t: &Arc<Trial>) {
        if self.slot.rollbacks() != t.live_rollbacks {
            self.trials.end(
                t,
                "aborted",
                &Actor::locus("the live policy was rolled back by the fault rules"),
            );
        }
    }

    /// Loads `source` and tries it beside the serving policy, as a shadow or a canary.
    pub fn try_candidate(
        &self,
        source: &PolicySource,
        opts: &LoadOptions,
        mode: TrialMode,
        rules: TrialRules,
        by: &Actor,
    ) -> Result<TrialReport, TrialError> {
        // Refused before the compile when it can be; checked again once loaded.
        if let Some(t) = &*self.trials.current() {
            return Err(TrialRunning(t.mode.name()).into());
        }
        let slot = Slot::new(load(source, opts)?, self.faults);
        slot.set_feed(Box::new(KvEvents(self.kv.clone())));
        let _one_change = lock(&self.changing);
        let live_rollbacks = self.slot.rollbacks();
        Ok(self.trials.begin(mode, rules, slot, self.info(), live_rollbacks, by)?)
    }

    /// Makes the candidate on trial serve everything. Refused when no trial runs, and when
    /// the fault rules have given up on the candidate (the trial is then aborted).
    pub fn promote(&self, by: &Actor) -> Result<(PolicyInfo, TrialReport), PromoteError> {
        let _one_change = lock(&self.changing);
        let t = self.trials.current().clone().ok_or(PromoteError::NoTrial)?;
        if t.slot.rollbacks() > 0 || t.candidate.given_up() {
            let why = Actor::locus("fault rules: the candidate was given up on");
            // Ended here, or a moment ago by the rules themselves.
            let report = self.trials.end(&t, "aborted", &why).or_else(|| self.trial());
            return Err(PromoteError::Failed(Box::new(report)));
        }
        let report = self.trials.end(&t, "promoted", by).ok_or(PromoteError::NoTrial)?;
        let info = self.slot.swap_arc(t.candidate.clone());
        Ok((info, report))
    }

    /// Ends the trial, leaving the serving policy as it is; `None` when none runs.
    pub fn abort(&self, by: &Actor) -> Option<TrialReport> {
        let _one_change = lock(&self.changing);
        let t = self.trials.current().clone()?;
        self.trials.end(&t, "aborted", by)
    }

    /// The running trial's report, else the last one's; `None` before any.
    pub fn trial(&self) -> Option<TrialReport> {
        self.trials.report()
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
    /// (or the lists of `workers` differ in length). A canary decides its share of
    /// requests; a shadow is handed the live decision to compare with.
    pub fn route(&self, req: &Request, workers: &Workers) -> Option<Decision> {
        self.route_then(req, workers, None)
    }

    /// [`RouterPolicy::route`] for a request whose block hashes a shadow computes itself
    /// with `fill`, off the request's path, when the live policy has no use for them.
    pub fn route_then(
        &self,
        req: &Request,
        workers: &Workers,
        fill: Option<BlockFill>,
    ) -> Option<Decision> {
        if workers.ids.is_empty() || !workers.consistent() {
            return None;
        }
        let trial = self.trials.current();
        let Some(t) = &*trial else {
            let (index, fault) = decide(&self.slot, req, workers);
            return Some(Decision { index, fault, side: Side::Live, trial: 0 });
        };
        if t.takes(req) {
            let (index, fault) = decide(&t.slot, req, workers);
            t.decided(Side::Candidate, workers, workers.ids[index], fault.is_some());
            if fault.is_some() {
                self.trials.check_faults(t);
            }
            return Some(Decision { index, fault, side: Side::Candidate, trial: t.id });
        }
        let (index, fault) = decide(&self.slot, req, workers);
        let chosen = (workers.ids[index], fault.is_some());
        match t.mode {
            TrialMode::Shadow => self.trials.to_shadow(t, req, workers, chosen, fill),
            TrialMode::Canary { .. } => {
                t.decided(Side::Live, workers, chosen.0, chosen.1);
            }
        }
        if fault.is_some() {
            self.check_live(t);
        }
        Some(Decision { index, fault, side: Side::Live, trial: t.id })
    }

    /// Tells the policy how a routed attempt ended. `answered` is false for an attempt
    /// that got no answer to relay (it is retried, or the request fails): a 0.1.0 policy
    /// hears only of answered ones, as it always did. A trial's candidate is told too, and
    /// an answered attempt counts for the side that `routed` it, if that trial still runs.
    pub fn observe(&self, done: &Completion, answered: bool, routed: Routed) {
        let fault = observe_in(&self.slot, done, answered);
        if let Some(t) = &*self.trials.current() {
            self.trials.observe(t, done, answered);
            if answered && routed.trial == t.id {
                self.trials.completed(t, routed.side, routed.fallback, done);
            }
            if fault.is_some() {
                self.check_live(t);
            }
        }
    }

    /// Counts a request that no worker could serve (every attempt failed) for its side.
    pub fn unserved(&self, routed: Routed) {
        if let Some(t) = &*self.trials.current()
            && routed.trial == t.id
        {
            let done = Completion::new(0, 0, Outcome::Failed);
            self.trials.completed(t, routed.side, routed.fallback, &done);
        }
    }
}

impl Drop for RouterPolicy {
    /// Ends a shadow's thread with the policy: it holds the trial, not the policy.
    fn drop(&mut self) {
        if let Some(t) = &*self.trials.current() {
            t.shadow_stop();
        }
    }
}

/// Why a promotion was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PromoteError {
    /// No trial runs.
    #[error("no trial is running: start one with locus.shadow or locus.canary")]
    NoTrial,
    /// The fault rules gave up on the candidate; the trial was aborted (its report).
    #[error("the fault rules gave up on the candidate: the trial is aborted, not promoted")]
    Failed(Box<Option<TrialReport>>),
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
