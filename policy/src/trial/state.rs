//! A trial's state and life, whatever its kind: the candidate's slot, both sides' record,
//! start, end (promoted or aborted, into the audit log), and the canary rules applied on
//! each of the candidate's completions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::record::{Decisions, Outcomes, Sample, broken_rule, side_report};
use super::report::{Side, TrialEnd, TrialOutcome, TrialReport};
use super::rules::{TrialMode, TrialRules};
use crate::info::{PolicyInfo, unix_time};
use crate::runtime::slot::Slot;
use crate::runtime::version::Version;
use crate::runtime::{Actor, AuditEvent, AuditLog};
use crate::worlds::router::RouterWorld;
use crate::worlds::{Completion, Outcome, Request, Workers};

/// Fills in a request's block hashes (and prompt token count): how a shadow's thread
/// tokenizes a prompt that the live policy had no use for.
pub type BlockFill = Arc<dyn Fn(&mut Request) + Send + Sync>;

/// What a shadow and a canary each do beside the live policy.
pub(crate) trait TrialKind: Send + Sync {
    /// Shadow or canary (with its share).
    fn mode(&self) -> TrialMode;
    /// Starts what runs beside the request path (a shadow's thread).
    fn start(&self, _trials: &Arc<Trials>, _t: &Arc<Trial>) {}
    /// Whether the candidate routes `req` itself (a canary's share).
    fn takes(&self, req: &Request) -> bool;
    /// Whether block hashes must be known on the request's path before deciding.
    fn blocks_on_path(&self) -> bool;
    /// The live policy chose `live` (and whether the fallback did) among `workers`;
    /// `fill` makes `req`'s block hashes when they are not known yet. Never waits.
    fn live_decided(
        &self,
        t: &Trial,
        req: &Request,
        workers: &Workers,
        live: (u64, bool),
        fill: Option<BlockFill>,
    );
    /// How a routed attempt ended (`answered`: its answer was relayed).
    fn observe(&self, trials: &Trials, t: &Arc<Trial>, done: &Completion, answered: bool);
    /// Live-side requests kept for the window statistics.
    fn live_keep(&self, rules: &TrialRules) -> usize;
    /// Route calls skipped rather than waited for.
    fn skipped(&self) -> u64 {
        0
    }
    /// The trial ended (or its router is dropped): stops what runs beside it.
    fn stop(&self) {}
}

/// A candidate under trial.
pub(crate) struct Trial {
    /// Tells this trial's requests from another's ([`crate::Routed::trial`]).
    pub(crate) id: u64,
    rules: TrialRules,
    pub(crate) slot: Slot<RouterWorld>,
    /// The version on trial (what a promotion installs).
    pub(crate) candidate: Arc<Version<RouterWorld>>,
    live_policy: PolicyInfo,
    /// The live slot's rollbacks when the trial began: one more ends the trial.
    pub(crate) live_rollbacks: u64,
    started: Instant,
    started_at: SystemTime,
    pub(super) decisions: Mutex<Decisions>,
    outcomes: Mutex<Outcomes>,
    /// What its kind does beside the live policy.
    pub(crate) kind: Box<dyn TrialKind>,
}

impl Trial {
    /// Shadow or canary (with its share): what its kind is.
    pub(crate) fn mode(&self) -> TrialMode {
        self.kind.mode()
    }

    /// Records a decision a canary trial's side made.
    pub(crate) fn decided(&self, side: Side, workers: &Workers, worker: u64, fallback: bool) {
        let mut d = self.decisions.lock();
        d.offered(workers);
        d.side(side).decided(worker, fallback);
    }

    /// Its report now.
    fn report(&self) -> TrialReport {
        let d = self.decisions.lock();
        let o = self.outcomes.lock();
        let (live_window, candidate_window) = o.compared(&self.rules);
        TrialReport {
            mode: self.mode(),
            rules: self.rules,
            live_policy: self.live_policy.clone(),
            candidate_policy: self.candidate.info.clone(),
            started_at: unix_time(self.started_at),
            running_s: self.started.elapsed().as_secs_f64(),
            compared: d.compared,
            agreement: (d.compared > 0).then(|| d.agreed as f64 / d.compared as f64),
            skipped: self.kind.skipped(),
            live: side_report(&d.live, &o.live, &live_window, &d.workers),
            candidate: side_report(&d.candidate, &o.candidate, &candidate_window, &d.workers),
            ended: None,
        }
    }
}

/// The routing slot's trial, if one runs, and the report of the last one that ended.
pub(crate) struct Trials {
    current: ArcSwapOption<Trial>,
    last: Mutex<Option<TrialReport>>,
    /// Serializes ending (the rules end trials from request threads and the shadow's).
    ending: Mutex<()>,
    next_id: AtomicU64,
    pub(crate) audit: Arc<AuditLog>,
}

/// Why a trial cannot begin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {0} trial is running: promote or abort it first")]
pub struct TrialRunning(pub &'static str);

impl Trials {
    pub(crate) fn new(audit: Arc<AuditLog>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last: Mutex::new(None),
            ending: Mutex::new(()),
            next_id: AtomicU64::new(1),
            audit,
        }
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<Trial>>> {
        self.current.load()
    }

    /// Starts trying `slot` beside `live` (the caller serializes changes).
    pub(crate) fn begin(
        self: &Arc<Self>,
        kind: Box<dyn TrialKind>,
        rules: TrialRules,
        slot: Slot<RouterWorld>,
        live: PolicyInfo,
        live_rollbacks: u64,
        actor: &Actor,
    ) -> Result<TrialReport, TrialRunning> {
        if let Some(t) = &*self.current.load() {
            return Err(TrialRunning(t.mode().name()));
        }
        let mode = kind.mode();
        let candidate = slot.current();
        let trial = Arc::new(Trial {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            rules,
            slot,
            candidate: candidate.clone(),
            live_policy: live.clone(),
            live_rollbacks,
            started: Instant::now(),
            started_at: SystemTime::now(),
            decisions: Mutex::new(Decisions::default()),
            outcomes: Mutex::new(Outcomes::default()),
            kind,
        });
        trial.kind.start(self, &trial);
        self.current.store(Some(trial.clone()));
        let why = match mode {
            TrialMode::Canary { percent } if actor.why.is_empty() => {
                format!("{percent}% of requests")
            }
            TrialMode::Canary { percent } => format!("{percent}% of requests: {}", actor.why),
            TrialMode::Shadow => actor.why.clone(),
        };
        let by = Actor::new(actor.who.clone(), why);
        let event = match mode {
            TrialMode::Shadow => AuditEvent::Shadow,
            TrialMode::Canary { .. } => AuditEvent::Canary,
        };
        self.audit.change(event, "router", &candidate.info, Some(&live.sha256), &by);
        Ok(trial.report())
    }

    /// Ends `trial` if it still runs, records how and why, and returns its final report;
    /// `None` if it had already ended.
    pub(crate) fn end(
        &self,
        trial: &Arc<Trial>,
        how: TrialOutcome,
        actor: &Actor,
    ) -> Option<TrialReport> {
        let _g = self.ending.lock();
        if !self.current.load().as_ref().is_some_and(|c| Arc::ptr_eq(c, trial)) {
            return None;
        }
        let mut report = trial.report();
        report.ended = Some(TrialEnd {
            how,
            who: actor.who.clone(),
            why: actor.why.clone(),
            at: unix_time(SystemTime::now()),
        });
        // Kept before the trial stops being current, so a report is never missing.
        *self.last.lock() = Some(report.clone());
        self.current.store(None);
        trial.kind.stop();
        let (mode, how_name) = (trial.mode().name(), how.name());
        let why = match actor.why.as_str() {
            "" => format!("{mode} {how_name}"),
            why => format!("{mode} {how_name}: {why}"),
        };
        let event = match how {
            TrialOutcome::Promoted => AuditEvent::Promote,
            TrialOutcome::Aborted => AuditEvent::Abort,
        };
        let (to, from) = (&report.candidate_policy, &report.live_policy.sha256);
        self.audit.change(event, "router", to, Some(from), &Actor::new(actor.who.clone(), why));
        Some(report)
    }

    /// The running trial's report, else the last one's.
    pub(crate) fn report(&self) -> Option<TrialReport> {
        match &*self.current.load() {
            Some(t) => Some(t.report()),
            None => self.last.lock().clone(),
        }
    }

    /// Counts how a request ended on `side`; a canary that now breaks a rule is aborted.
    pub(crate) fn completed(&self, t: &Arc<Trial>, side: Side, fallback: bool, done: &Completion) {
        let error = matches!(
            done.outcome,
            Outcome::Overloaded
                | Outcome::Failed
                | Outcome::Unreachable
                | Outcome::Timeout
                | Outcome::Broken
        );
        let ttft_us = if done.outcome == Outcome::Ok { done.ttft_us } else { None };
        let sample = Sample { at: Instant::now(), error, fallback, ttft_us };
        let broken = {
            let mut o = t.outcomes.lock();
            match side {
                Side::Live => o.live.completed(sample, done, t.kind.live_keep(&t.rules)),
                Side::Candidate => o.candidate.completed(sample, done, t.rules.window),
            }
            // The candidate's window changes only with its own completions: the rules
            // (which sort the windows for the p90) look then.
            (side == Side::Candidate).then(|| broken_rule(&t.rules, &o)).flatten()
        };
        if let Some(why) = broken {
            tracing::warn!(candidate = %t.candidate.info.name, %why, "canary aborted");
            self.end(t, TrialOutcome::Aborted, &Actor::locus(format!("canary rules: {why}")));
        }
    }

    /// Ends a trial whose candidate the fault rules gave up on.
    pub(crate) fn check_faults(&self, t: &Arc<Trial>) {
        if t.slot.rollbacks() > 0 {
            self.end(
                t,
                TrialOutcome::Aborted,
                &Actor::locus(format!(
                    "fault rules: {} faults (the candidate was given up on)",
                    t.slot.total_faults()
                )),
            );
        }
    }
}
