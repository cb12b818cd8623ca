//! The routing policy of a router, as its request path and admin API see it: one facade
//! over the live policy's slot, the trial running beside it, and the audit log.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::info::PolicyInfo;
use crate::load::{LoadError, PolicySource};
use crate::runtime::LoadOptions;
use crate::runtime::slot::Slot;
use crate::runtime::version::Version;
use crate::runtime::{Actor, AuditEvent, AuditLog, Fault, FaultPolicy};
use crate::trial::{
    BlockFill, Side, Trial, TrialMode, TrialOutcome, TrialReport, TrialRules, TrialRunning, Trials,
    kind_for,
};
use crate::worlds::router::{Chosen, KvEvents, RouterWorld, SourceDropped, decide, observe_in};
use crate::worlds::{Completion, KvFeed, Outcome, Request, Workers};

/// Where a request's KV block hashes come from, when a policy reads them: the router
/// tokenizes the prompt only if the live policy reads them or a trial's candidate may, and
/// leaves it to a shadow's thread when only a shadow does.
pub trait Blocks: Sync {
    /// Fills in `req`'s block hashes (and prompt token count) now.
    fn fill(&self, req: &mut Request);
    /// A filler to run later, off the request's path, owning what it reads; `None` when
    /// there is nothing to read.
    fn deferred(&self) -> Option<BlockFill>;
}

/// A request as the router asks about it: what the policy sees, and where its block
/// hashes come from. The same `Ask` serves every attempt of a request, so the prompt is
/// tokenized at most once.
pub struct Ask<'a> {
    /// What the policy sees.
    pub request: Request,
    /// Where its block hashes come from until they are made (`None` once made, or when
    /// they were given).
    blocks: Option<&'a dyn Blocks>,
}

impl<'a> Ask<'a> {
    /// A request whose block hashes are given already (or never read).
    pub fn new(request: Request) -> Self {
        Self { request, blocks: None }
    }

    /// A request whose block hashes `blocks` makes when they are read.
    pub fn with_blocks(request: Request, blocks: &'a dyn Blocks) -> Self {
        Self { request, blocks: Some(blocks) }
    }

    fn fill(&mut self) {
        if let Some(b) = self.blocks.take() {
            b.fill(&mut self.request);
        }
    }

    fn deferred(&self) -> Option<BlockFill> {
        self.blocks.and_then(Blocks::deferred)
    }
}

/// A routing decision. Non-exhaustive: what a decision carries grows (a source to pull a
/// prefix's KV from, a time to dispatch at).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Index of the chosen worker in the list given to [`RouterPolicy::route`].
    pub index: usize,
    /// Index (in the same list) of the worker to pull the prompt's prefix KV from, when the
    /// policy named one that can serve the chosen worker.
    pub kv_source: Option<usize>,
    /// Why a source the policy named was not passed on.
    pub kv_source_dropped: Option<SourceDropped>,
    /// Set when the policy faulted and the native fallback decided.
    pub fault: Option<Fault>,
    /// Which policy decided: the live one, or a canary's candidate.
    pub side: Side,
    /// The trial running when it was decided (0: none).
    pub trial: u64,
}

impl Decision {
    fn new((index, source): Chosen, fault: Option<Fault>, side: Side, trial: u64) -> Self {
        let (kv_source, kv_source_dropped) = match source {
            Ok(s) => (s, None),
            Err(why) => (None, Some(why)),
        };
        Self { index, kv_source, kv_source_dropped, fault, side, trial }
    }

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
        let trials = Arc::new(Trials::new(audit));
        let p = Self { slot, trials, kv, faults, changing: Mutex::new(()) };
        p.audit_change(AuditEvent::Load, &p.info(), None, &Actor::locus("the router started"));
        Ok(p)
    }

    fn audit_change(
        &self,
        event: AuditEvent,
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

    /// Whether the request's path must know block hashes before deciding: the serving
    /// policy reads them (every component version after 0.1.0 does; the native fallback,
    /// of no version, does not), or a trial's candidate may (a canary).
    fn blocks_on_path(&self, trial: Option<&Arc<Trial>>) -> bool {
        let reads = !self.slot.serves_version("0.1.0") && !self.slot.serves_version("");
        reads || trial.is_some_and(|t| t.kind.blocks_on_path())
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
        let _one_change = self.changing.lock();
        self.end_trial_for(&format!("the live policy was replaced by {}", v.info.name));
        let prev = self.info();
        let info = self.slot.swap(v);
        self.audit_change(AuditEvent::Swap, &info, Some(&prev), by);
        Ok(info)
    }

    /// Goes back to the previous policy (the native fallback if there is none); a trial
    /// running is aborted.
    pub fn rollback(&self, by: &Actor) -> PolicyInfo {
        let _one_change = self.changing.lock();
        self.end_trial_for("the live policy was rolled back");
        let prev = self.info();
        let info = self.slot.rollback();
        self.audit_change(AuditEvent::Rollback, &info, Some(&prev), by);
        info
    }

    fn end_trial_for(&self, why: &str) {
        if let Some(t) = self.trials.current().clone() {
            self.trials.end(&t, TrialOutcome::Aborted, &Actor::locus(why));
        }
    }

    /// Ends `t` if the live policy changed under it: the fault rules rolled it back.
    fn check_live(&self, t: &Arc<Trial>) {
        if self.slot.rollbacks() != t.live_rollbacks {
            self.trials.end(
                t,
                TrialOutcome::Aborted,
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
            return Err(TrialRunning(t.mode().name()).into());
        }
        let slot = Slot::new(load(source, opts)?, self.faults);
        slot.set_feed(Box::new(KvEvents(self.kv.clone())));
        let _one_change = self.changing.lock();
        let live_rollbacks = self.slot.rollbacks();
        let kind = kind_for(mode, &self.kv);
        Ok(self.trials.begin(kind, rules, slot, self.info(), live_rollbacks, by)?)
    }

    /// Makes the candidate on trial serve everything. Refused when no trial runs, and when
    /// the fault rules have given up on the candidate (the trial is then aborted).
    pub fn promote(&self, by: &Actor) -> Result<(PolicyInfo, TrialReport), PromoteError> {
        let _one_change = self.changing.lock();
        let t = self.trials.current().clone().ok_or(PromoteError::NoTrial)?;
        if t.slot.rollbacks() > 0 || t.candidate.given_up() {
            let why = Actor::locus("fault rules: the candidate was given up on");
            // Ended here, or a moment ago by the rules themselves.
            let report = self.trials.end(&t, TrialOutcome::Aborted, &why).or_else(|| self.trial());
            return Err(PromoteError::Failed(Box::new(report)));
        }
        let report =
            self.trials.end(&t, TrialOutcome::Promoted, by).ok_or(PromoteError::NoTrial)?;
        let info = self.slot.swap_arc(t.candidate.clone());
        Ok((info, report))
    }

    /// Ends the trial, leaving the serving policy as it is; `None` when none runs.
    pub fn abort(&self, by: &Actor) -> Option<TrialReport> {
        let _one_change = self.changing.lock();
        let t = self.trials.current().clone()?;
        self.trials.end(&t, TrialOutcome::Aborted, by)
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

    /// Chooses one of `workers` (the healthy ones) for `ask`; `None` when there is none
    /// (or the lists of `workers` differ in length). The one entry point of the request
    /// path: block hashes are made here when a policy reads them, a canary decides its
    /// share of requests, and a shadow is handed the live decision to compare with.
    pub fn route(&self, ask: &mut Ask<'_>, workers: &Workers) -> Option<Decision> {
        if workers.ids.is_empty() || !workers.consistent() {
            return None;
        }
        let trial = self.trials.current();
        if self.blocks_on_path(trial.as_ref()) {
            ask.fill();
        }
        let req = &ask.request;
        let Some(t) = &*trial else {
            let (chosen, fault) = decide(&self.slot, req, workers);
            return Some(Decision::new(chosen, fault, Side::Live, 0));
        };
        if t.kind.takes(req) {
            let (chosen, fault) = decide(&t.slot, req, workers);
            t.decided(Side::Candidate, workers, workers.ids[chosen.0], fault.is_some());
            if fault.is_some() {
                self.trials.check_faults(t);
            }
            return Some(Decision::new(chosen, fault, Side::Candidate, t.id));
        }
        let (chosen, fault) = decide(&self.slot, req, workers);
        let live = (workers.ids[chosen.0], fault.is_some());
        t.kind.live_decided(t, req, workers, live, ask.deferred());
        if fault.is_some() {
            self.check_live(t);
        }
        Some(Decision::new(chosen, fault, Side::Live, t.id))
    }

    /// Tells the policy how a routed attempt ended. `answered` is false for an attempt
    /// that got no answer to relay (it is retried, or the request fails): a 0.1.0 policy
    /// hears only of answered ones, as it always did. A trial's candidate is told too, and
    /// an answered attempt counts for the side that `routed` it, if that trial still runs.
    pub fn observe(&self, done: &Completion, answered: bool, routed: Routed) {
        let fault = observe_in(&self.slot, done, answered);
        if let Some(t) = &*self.trials.current() {
            t.kind.observe(&self.trials, t, done, answered);
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
            t.kind.stop();
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
