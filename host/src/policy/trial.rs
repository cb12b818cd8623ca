//! Trying a routing policy on live traffic before it routes all of it.
//!
//! - A **shadow** is asked every `route` the live policy is asked, and told the same
//!   feedback, on a thread of its own: its answer is only compared with the live one, so a
//!   slow or faulty shadow never touches a request. From the router's KV record it is
//!   scored as the live choice is: the leading prompt blocks the chosen worker holds, and
//!   how the decisions spread over workers.
//! - A **canary** routes a stable share of requests (by a hash of the request's session
//!   key, else its leading prompt block), so a conversation stays on one side; both sides'
//!   real outcomes are kept, and the canary is aborted when, over a window of requests on
//!   each side, its error or fallback rate or its TTFT p90 is worse than the live side's by
//!   more than a margin.
//!
//! A candidate that the fault rules give up on ends its trial as aborted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::audit::{Actor, AuditEntry, AuditLog};
use super::kv_feed::KvFeed;
use super::router::{RouterWorld, decide, observe_in};
use super::slot::{Slot, lock};
use super::{Completion, Outcome, PolicyInfo, Request, Workers};

/// Route calls queued for a shadow; past this the shadow skips (and counts) them rather
/// than hold a request up.
pub const SHADOW_QUEUE: usize = 4096;

/// How long the shadow's thread naps when its queue is empty (at 20k requests/s, 20 calls
/// wait at most this long: far from [`SHADOW_QUEUE`]).
const SHADOW_NAP: Duration = Duration::from_millis(1);

/// Idle time after which the shadow's thread blocks instead of napping.
const SHADOW_IDLE: Duration = Duration::from_millis(100);

/// How a candidate is tried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum TrialMode {
    /// Decides beside the live policy; only recorded.
    Shadow,
    /// Routes `percent` of requests.
    Canary {
        /// Share of requests, in (0, 100].
        percent: f64,
    },
}

/// Which policy routed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The serving policy.
    #[default]
    Live,
    /// A canary's candidate.
    Candidate,
}

/// When a canary is aborted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrialRules {
    /// Requests each side must have in its window before the rules are applied.
    pub min_requests: usize,
    /// Requests per side the rules look at (the most recent ones).
    pub window: usize,
    /// Abort when the candidate's error rate exceeds the live one's by more than this.
    pub error_margin: f64,
    /// Abort when the candidate's fallback rate exceeds the live one's by more than this.
    pub fallback_margin: f64,
    /// Abort when the candidate's TTFT p90 exceeds the live one's by more than this
    /// fraction of it (0.5: 50% slower).
    pub ttft_margin: f64,
}

impl Default for TrialRules {
    fn default() -> Self {
        Self {
            min_requests: 20,
            window: 200,
            error_margin: 0.05,
            fallback_margin: 0.05,
            ttft_margin: 0.5,
        }
    }
}

/// A trial setting that cannot be used: the setting and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct TrialSettingError {
    /// The setting's name.
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

/// Takes the host's trial settings (`locus.shadow`, `locus.canary`, `locus.min-requests`,
/// `locus.window`, `locus.error-margin`, `locus.fallback-margin`, `locus.ttft-margin`) out
/// of a swap's settings; the rest are the policy's. `None`: a plain swap.
pub fn take_trial_settings(
    settings: &mut Vec<(String, String)>,
) -> Result<Option<(TrialMode, TrialRules)>, TrialSettingError> {
    let mut mode = None;
    let mut rules = TrialRules::default();
    let mut error = None;
    settings.retain(|(k, v)| {
        let bad = |message: &str| TrialSettingError { param: k.clone(), message: message.into() };
        let fraction = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
        let count = |v: &str| v.parse::<usize>().ok().filter(|n| *n >= 1);
        let r = match k.as_str() {
            "locus.shadow" => match v.as_str() {
                "true" | "1" => {
                    mode = mode.or(Some(TrialMode::Shadow));
                    Ok(())
                }
                "false" | "0" => Ok(()),
                _ => Err(bad("must be true or false")),
            },
            "locus.canary" => match v.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => {
                    mode = Some(TrialMode::Canary { percent: p });
                    Ok(())
                }
                _ => Err(bad("must be a percentage of requests in (0, 100]")),
            },
            "locus.min-requests" => count(v)
                .map(|n| rules.min_requests = n)
                .ok_or_else(|| bad("must be a whole number of requests, at least 1")),
            "locus.window" => count(v)
                .map(|n| rules.window = n)
                .ok_or_else(|| bad("must be a whole number of requests, at least 1")),
            "locus.error-margin" => fraction(v)
                .map(|x| rules.error_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.05: 5 points)")),
            "locus.fallback-margin" => fraction(v)
                .map(|x| rules.fallback_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.05: 5 points)")),
            "locus.ttft-margin" => fraction(v)
                .map(|x| rules.ttft_margin = x)
                .ok_or_else(|| bad("must be a non-negative number (0.5: 50% slower)")),
            _ => return true,
        };
        if let Err(e) = r {
            error.get_or_insert(e);
        }
        false
    });
    if let Some(e) = error {
        return Err(e);
    }
    if rules.min_requests > rules.window {
        return Err(TrialSettingError {
            param: "locus.min-requests".into(),
            message: format!("must not exceed locus.window ({})", rules.window),
        });
    }
    Ok(mode.map(|m| (m, rules)))
}

/// Which samples a rate counts.
type Counted = fn(&Sample) -> bool;

/// What the router knows of how one routed request ended.
#[derive(Debug, Clone, Copy)]
struct Sample {
    error: bool,
    fallback: bool,
    ttft_us: Option<u64>,
}

#[derive(Default)]
struct SideStats {
    decisions: u64,
    fallbacks: u64,
    per_worker: HashMap<u64, u64>,
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Prompt blocks of the decisions scored, and of those the leading ones the chosen
    /// worker held (the router's KV record at the time).
    predicted_blocks: u64,
    predicted_hits: u64,
    window: VecDeque<Sample>,
}

impl SideStats {
    fn decided(&mut self, worker: u64, fallback: bool) {
        self.decisions += 1;
        self.fallbacks += u64::from(fallback);
        *self.per_worker.entry(worker).or_default() += 1;
    }

    fn score(&mut self, blocks: usize, held: usize) {
        self.predicted_blocks += blocks as u64;
        self.predicted_hits += held as u64;
    }

    fn completed(&mut self, s: Sample, done: &Completion, window: usize) {
        self.requests += 1;
        self.errors += u64::from(s.error);
        if done.outcome == Outcome::Ok
            && let (Some(p), Some(c)) = (done.prompt_tokens, done.cached_tokens)
        {
            self.prompt_tokens += u64::from(p);
            self.cached_tokens += u64::from(c);
        }
        if self.window.len() == window {
            self.window.pop_front();
        }
        self.window.push_back(s);
    }

    fn rate(&self, f: impl Fn(&Sample) -> bool) -> Option<f64> {
        let n = self.window.len();
        (n > 0).then(|| self.window.iter().filter(|s| f(s)).count() as f64 / n as f64)
    }

    fn ttft_ms(&self, q: f64) -> Option<f64> {
        let mut t: Vec<u64> = self.window.iter().filter_map(|s| s.ttft_us).collect();
        if t.is_empty() {
            return None;
        }
        t.sort_unstable();
        let i = ((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1;
        Some(t[i] as f64 / 1000.0)
    }

    fn report(&self, workers: &HashSet<u64>) -> SideReport {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let spread = (!workers.is_empty() && self.decisions > 0).then(|| {
            let max = workers.iter().map(|w| self.per_worker.get(w).copied().unwrap_or(0)).max();
            max.unwrap_or(0) as f64 / (self.decisions as f64 / workers.len() as f64)
        });
        SideReport {
            decisions: self.decisions,
            fallbacks: self.fallbacks,
            fallback_rate: ratio(self.fallbacks, self.decisions),
            per_worker: self.per_worker.iter().map(|(w, n)| (w.to_string(), *n)).collect(),
            load_max_over_mean: spread,
            predicted_hit_rate: ratio(self.predicted_hits, self.predicted_blocks),
            requests: self.requests,
            errors: self.errors,
            hit_rate: ratio(self.cached_tokens, self.prompt_tokens),
            window_requests: self.window.len(),
            window_error_rate: self.rate(|s| s.error),
            window_fallback_rate: self.rate(|s| s.fallback),
            ttft_p50_ms: self.ttft_ms(0.5),
            ttft_p90_ms: self.ttft_ms(0.9),
        }
    }
}

#[derive(Default)]
struct Stats {
    live: SideStats,
    candidate: SideStats,
    /// Shadow decisions compared with the live one, and of those the same worker.
    compared: u64,
    agreed: u64,
    /// Route calls the shadow's queue had no room for.
    skipped: u64,
    /// Every worker offered to a decision.
    workers: HashSet<u64>,
    /// Completions since the canary rules last looked.
    since_check: u32,
}

impl Stats {
    fn side(&mut self, side: Side) -> &mut SideStats {
        match side {
            Side::Live => &mut self.live,
            Side::Candidate => &mut self.candidate,
        }
    }

    fn offered(&mut self, workers: &Workers) {
        if self.workers.len() < workers.ids.len()
            || !workers.ids.iter().all(|w| self.workers.contains(w))
        {
            self.workers.extend(workers.ids.iter().copied());
        }
    }
}

/// How a side of a trial is doing, as `GET /admin/policy/trial` shows it. A rate with
/// nothing to count is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideReport {
    /// Routing decisions made (for a shadow: route calls answered).
    pub decisions: u64,
    /// Of those, decided by the native fallback because the policy faulted.
    pub fallbacks: u64,
    /// `fallbacks / decisions`.
    pub fallback_rate: Option<f64>,
    /// Decisions per worker id.
    pub per_worker: BTreeMap<String, u64>,
    /// The most decisions any offered worker got, over the mean per offered worker.
    pub load_max_over_mean: Option<f64>,
    /// Leading prompt blocks the chosen worker held (by the router's KV record when the
    /// decision was scored), over the prompt blocks; scored in shadow trials only.
    pub predicted_hit_rate: Option<f64>,
    /// Requests this side routed that ended with an answer or an error (canary; for a
    /// shadow trial, the live side routes all).
    pub requests: u64,
    /// Of those, failed: no worker could serve, overloaded, timed out, broken.
    pub errors: u64,
    /// Prompt tokens the workers found cached, over the prompt tokens, of answered requests.
    pub hit_rate: Option<f64>,
    /// Requests in the window the abort rules read.
    pub window_requests: usize,
    /// Error rate over the window.
    pub window_error_rate: Option<f64>,
    /// Fallback rate over the window.
    pub window_fallback_rate: Option<f64>,
    /// TTFT percentiles over the window, as the router measured them (milliseconds).
    pub ttft_p50_ms: Option<f64>,
    /// See `ttft_p50_ms`.
    pub ttft_p90_ms: Option<f64>,
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialEnd {
    /// `promoted` or `aborted`.
    pub how: &'static str,
    /// Who ended it (`locus` for the rules).
    pub who: String,
    /// Why.
    pub why: String,
    /// Unix seconds.
    pub at: f64,
}

/// A trial, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialReport {
    /// Shadow or canary (with its percent).
    #[serde(flatten)]
    pub mode: TrialMode,
    /// The rules a canary is held to.
    pub rules: TrialRules,
    /// The policy serving when the trial began.
    pub live_policy: PolicyInfo,
    /// The candidate.
    pub candidate_policy: PolicyInfo,
    /// Unix seconds.
    pub started_at: f64,
    /// Seconds it has run (or ran).
    pub running_s: f64,
    /// Shadow decisions compared with the live one.
    pub compared: u64,
    /// Share of those on the same worker.
    pub agreement: Option<f64>,
    /// Route calls the shadow skipped because its queue was full.
    pub skipped: u64,
    /// The live side.
    pub live: SideReport,
    /// The candidate's side.
    pub candidate: SideReport,
    /// Set once it has ended.
    pub ended: Option<TrialEnd>,
}

/// Fills in a request's block hashes (and prompt token count): how a shadow's thread
/// tokenizes a prompt that the live policy had no use for.
pub type BlockFill = Arc<dyn Fn(&mut Request) + Send + Sync>;

// Route calls are most of the traffic: boxing them would add an allocation per routed
// request, while the queue's 4,096 slots of this size are 1.4 MB.
#[allow(clippy::large_enum_variant)]
enum ShadowMsg {
    Route { req: Request, workers: Workers, live: u64, fill: Option<BlockFill> },
    Observe { done: Completion, answered: bool },
}

/// A candidate under trial.
pub(crate) struct Trial {
    pub(crate) mode: TrialMode,
    rules: TrialRules,
    pub(crate) slot: Slot<RouterWorld>,
    live_policy: PolicyInfo,
    started: Instant,
    started_at: SystemTime,
    stats: Mutex<Stats>,
    /// The shadow's queue; dropped when the trial ends, which ends its thread.
    shadow: Mutex<Option<SyncSender<ShadowMsg>>>,
}

impl Trial {
    /// Whether a canary routes `req`.
    pub(crate) fn takes(&self, req: &Request) -> bool {
        match self.mode {
            TrialMode::Shadow => false,
            TrialMode::Canary { percent } => {
                let bucket = splitmix64(routing_key(req)) % 1_000_000;
                (bucket as f64) < percent * 10_000.0
            }
        }
    }

    fn report(&self) -> TrialReport {
        let st = lock(&self.stats);
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
        };
        TrialReport {
            mode: self.mode,
            rules: self.rules,
            live_policy: self.live_policy.clone(),
            candidate_policy: self.slot.info(),
            started_at: (unix(self.started_at) * 1000.0).round() / 1000.0,
            running_s: self.started.elapsed().as_secs_f64(),
            compared: st.compared,
            agreement: (st.compared > 0).then(|| st.agreed as f64 / st.compared as f64),
            skipped: st.skipped,
            live: st.live.report(&st.workers),
            candidate: st.candidate.report(&st.workers),
            ended: None,
        }
    }

    /// The canary rule that the candidate breaks now, if any.
    fn broken_rule(&self, st: &Stats) -> Option<String> {
        let r = &self.rules;
        let (l, c) = (&st.live, &st.candidate);
        if l.window.len() < r.min_requests || c.window.len() < r.min_requests {
            return None;
        }
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let rates: [(&str, Counted, f64); 2] = [
            ("error rate", |s| s.error, r.error_margin),
            ("fallback rate", |s| s.fallback, r.fallback_margin),
        ];
        for (what, counted, margin) in rates {
            let (lr, cr) = (l.rate(counted)?, c.rate(counted)?);
            if cr - lr > margin {
                return Some(format!(
                    "{what} {} against the live side's {} over the last {} / {} requests \
                     (margin {})",
                    pct(cr),
                    pct(lr),
                    c.window.len(),
                    l.window.len(),
                    pct(margin)
                ));
            }
        }
        let timed = |s: &SideStats| s.window.iter().filter(|x| x.ttft_us.is_some()).count();
        if timed(l) >= r.min_requests && timed(c) >= r.min_requests {
            let (lt, ct) = (l.ttft_ms(0.9)?, c.ttft_ms(0.9)?);
            if ct > lt * (1.0 + r.ttft_margin) {
                return Some(format!(
                    "TTFT p90 {ct:.1} ms against the live side's {lt:.1} ms (margin {:.0}%)",
                    r.ttft_margin * 100.0
                ));
            }
        }
        None
    }
}

/// The key that keeps a conversation on one side: its session, else its leading prompt
/// block, else (a prompt shorter than a block, or no tokenizing) its leading 64 bytes.
fn routing_key(req: &Request) -> u64 {
    use std::hash::Hasher;
    if let Some(&first) = req.block_hashes.first()
        && req.session.is_none()
    {
        return first;
    }
    let mut h = fnv::FnvHasher::default();
    match &req.session {
        Some(s) => {
            h.write_u8(1);
            h.write(s.as_bytes());
        }
        None => {
            let mut end = req.prompt.len().min(64);
            while !req.prompt.is_char_boundary(end) {
                end -= 1;
            }
            h.write_u8(2);
            h.write(&req.prompt.as_bytes()[..end]);
        }
    }
    h.finish()
}

/// A bijective mixer: block hashes and FNV values are well spread, but not in their low
/// bits alone.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The routing slot's trial, if one runs, and the report of the last one that ended.
pub(crate) struct Trials {
    current: ArcSwapOption<Trial>,
    last: Mutex<Option<TrialReport>>,
    /// Serializes starting and ending.
    changing: Mutex<()>,
    pub(crate) audit: Arc<AuditLog>,
    kv: Arc<KvFeed>,
}

/// Why a trial cannot begin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {0} trial is running: promote or abort it first")]
pub struct TrialRunning(pub &'static str);

impl Trials {
    pub(crate) fn new(audit: Arc<AuditLog>, kv: Arc<KvFeed>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            last: Mutex::new(None),
            changing: Mutex::new(()),
            audit,
            kv,
        }
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<Trial>>> {
        self.current.load()
    }

    /// Starts trying `slot` beside `live`.
    pub(crate) fn begin(
        self: &Arc<Self>,
        mode: TrialMode,
        rules: TrialRules,
        slot: Slot<RouterWorld>,
        live: PolicyInfo,
        actor: &Actor,
    ) -> Result<TrialReport, TrialRunning> {
        let _g = lock(&self.changing);
        if let Some(t) = &*self.current.load() {
            return Err(TrialRunning(mode_name(t.mode)));
        }
        let candidate = slot.info();
        let (tx, rx) = match mode {
            TrialMode::Shadow => {
                let (tx, rx) = std::sync::mpsc::sync_channel(SHADOW_QUEUE);
                (Some(tx), Some(rx))
            }
            TrialMode::Canary { .. } => (None, None),
        };
        let trial = Arc::new(Trial {
            mode,
            rules,
            slot,
            live_policy: live.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            stats: Mutex::new(Stats::default()),
            shadow: Mutex::new(tx),
        });
        if let Some(rx) = rx {
            let (trials, t) = (self.clone(), trial.clone());
            std::thread::Builder::new()
                .name("locus-shadow".into())
                .spawn(move || trials.shadow_loop(&t, &rx))
                .expect("a thread can be spawned");
        }
        self.current.store(Some(trial.clone()));
        self.audit.record(AuditEntry {
            at: 0.0,
            event: mode_name(mode),
            world: "router".into(),
            name: candidate.name.clone(),
            sha256: candidate.sha256.clone(),
            from_sha256: Some(live.sha256),
            who: actor.who.clone(),
            why: match mode {
                TrialMode::Canary { percent } if actor.why.is_empty() => {
                    format!("{percent}% of requests")
                }
                TrialMode::Canary { percent } => format!("{percent}% of requests: {}", actor.why),
                TrialMode::Shadow => actor.why.clone(),
            },
        });
        Ok(trial.report())
    }

    /// Ends `trial` if it still runs (`promoted` or `aborted`), records why, and returns
    /// its final report; `None` if it had already ended.
    pub(crate) fn end(
        &self,
        trial: &Arc<Trial>,
        how: &'static str,
        actor: &Actor,
    ) -> Option<TrialReport> {
        let _g = lock(&self.changing);
        let prev = self.current.compare_and_swap(trial, None::<Arc<Trial>>);
        if !prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, trial)) {
            return None;
        }
        lock(&trial.shadow).take();
        let mut report = trial.report();
        let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        report.ended = Some(TrialEnd {
            how,
            who: actor.who.clone(),
            why: actor.why.clone(),
            at: (at.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        let c = &report.candidate_policy;
        self.audit.record(AuditEntry {
            at: 0.0,
            event: if how == "promoted" { "promote" } else { "abort" },
            world: "router".into(),
            name: c.name.clone(),
            sha256: c.sha256.clone(),
            from_sha256: Some(report.live_policy.sha256.clone()),
            who: actor.who.clone(),
            why: match actor.why.as_str() {
                "" => format!("{} {how}", mode_name(trial.mode)),
                why => format!("{} {how}: {why}", mode_name(trial.mode)),
            },
        });
        *lock(&self.last) = Some(report.clone());
        Some(report)
    }

    /// The running trial's report, else the last one's.
    pub(crate) fn report(&self) -> Option<TrialReport> {
        match &*self.current.load() {
            Some(t) => Some(t.report()),
            None => lock(&self.last).clone(),
        }
    }

    /// Records a decision the live policy or a canary made.
    pub(crate) fn decided(
        &self,
        t: &Trial,
        side: Side,
        workers: &Workers,
        worker: u64,
        fallback: bool,
    ) {
        let mut st = lock(&t.stats);
        st.offered(workers);
        st.side(side).decided(worker, fallback);
    }

    /// Hands a live decision to the shadow; never waits.
    pub(crate) fn to_shadow(
        &self,
        t: &Trial,
        req: &Request,
        workers: &Workers,
        live: u64,
        fill: Option<BlockFill>,
    ) {
        let sent = match &*lock(&t.shadow) {
            Some(tx) => {
                let (req, workers) = (req.clone(), workers.clone());
                tx.try_send(ShadowMsg::Route { req, workers, live, fill })
            }
            None => return,
        };
        if let Err(TrySendError::Full(_)) = sent {
            lock(&t.stats).skipped += 1;
        }
    }

    /// Tells a trial how a routed attempt ended (`answered`: its answer was relayed).
    pub(crate) fn observe(self: &Arc<Self>, t: &Arc<Trial>, done: &Completion, answered: bool) {
        match t.mode {
            TrialMode::Shadow => {
                if let Some(tx) = &*lock(&t.shadow) {
                    let _ = tx.try_send(ShadowMsg::Observe { done: *done, answered });
                }
            }
            TrialMode::Canary { .. } => {
                observe_in(&t.slot, done, answered);
                self.check_faults(t);
            }
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
        let broken = {
            let mut st = lock(&t.stats);
            st.side(side).completed(Sample { error, fallback, ttft_us }, done, t.rules.window);
            st.since_check += 1;
            // The rules sort a window for the p90: on every candidate completion, and on
            // every 16th live one.
            let check = matches!(t.mode, TrialMode::Canary { .. })
                && (side == Side::Candidate || st.since_check >= 16);
            if check {
                st.since_check = 0;
                t.broken_rule(&st)
            } else {
                None
            }
        };
        if let Some(why) = broken {
            tracing::warn!(candidate = %t.slot.info().name, %why, "canary aborted");
            self.end(t, "aborted", &Actor::locus(format!("canary rules: {why}")));
        }
    }

    /// Ends a candidate that the fault rules gave up on.
    pub(crate) fn check_faults(&self, t: &Arc<Trial>) {
        if t.slot.rollbacks() > 0 {
            self.end(
                t,
                "aborted",
                &Actor::locus(format!(
                    "fault rules: {} faults (the candidate was given up on)",
                    t.slot.total_faults()
                )),
            );
        }
    }

    /// The shadow's thread. It drains its queue, then naps for [`SHADOW_NAP`] rather than
    /// block: a blocked receiver makes every routed request pay a wake-up (a futex call and
    /// a context switch), which cost a quarter of the router's throughput when measured.
    /// Idle for longer than [`SHADOW_IDLE`], it blocks until the next call arrives.
    fn shadow_loop(&self, t: &Arc<Trial>, rx: &Receiver<ShadowMsg>) {
        lower_priority();
        let mut idle = Duration::ZERO;
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) if idle < SHADOW_IDLE => {
                    std::thread::sleep(SHADOW_NAP);
                    idle += SHADOW_NAP;
                    continue;
                }
                Err(TryRecvError::Empty) => match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            idle = Duration::ZERO;
            if lock(&t.shadow).is_none() {
                // Ended: what is still queued is of no use.
                break;
            }
            match msg {
                ShadowMsg::Route { mut req, workers, live, fill } => {
                    if let Some(fill) = fill {
                        fill(&mut req);
                    }
                    self.shadow_route(t, &req, &workers, live);
                }
                ShadowMsg::Observe { done, answered } => observe_in(&t.slot, &done, answered),
            }
        }
    }

    fn shadow_route(&self, t: &Arc<Trial>, req: &Request, workers: &Workers, live: u64) {
        let (index, fault) = decide(&t.slot, req, workers);
        let mine = workers.ids[index];
        let blocks = req.block_hashes.len();
        let (held_live, held_mine) = if blocks > 0 {
            (self.kv.leading(live, &req.block_hashes), self.kv.leading(mine, &req.block_hashes))
        } else {
            (0, 0)
        };
        {
            let mut st = lock(&t.stats);
            st.offered(workers);
            st.compared += 1;
            st.agreed += u64::from(mine == live);
            st.live.decided(live, false);
            st.candidate.decided(mine, fault.is_some());
            if blocks > 0 {
                st.live.score(blocks, held_live);
                st.candidate.score(blocks, held_mine);
            }
        }
        if fault.is_some() {
            self.check_faults(t);
        }
    }
}

/// Makes the calling thread run only on CPU time the router's own threads leave
/// (SCHED_IDLE): a shadow is an observer, so on a saturated machine it skips calls
/// (counted as skipped) rather than take CPU from the requests it watches.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread (Linux schedules threads one by one).
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!("cannot lower the shadow thread's priority");
        }
    }
}

fn mode_name(m: TrialMode) -> &'static str {
    match m {
        TrialMode::Shadow => "shadow",
        TrialMode::Canary { .. } => "canary",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn trial_settings_are_taken_out_and_checked() {
        let mut s =
            settings(&[("locus.canary", "10"), ("load-weight", "8"), ("locus.window", "50")]);
        let (mode, rules) = take_trial_settings(&mut s).unwrap().unwrap();
        assert_eq!(mode, TrialMode::Canary { percent: 10.0 });
        assert_eq!(rules.window, 50);
        assert_eq!(s, settings(&[("load-weight", "8")]));
        let mut s = settings(&[("locus.shadow", "true")]);
        assert_eq!(take_trial_settings(&mut s).unwrap().unwrap().0, TrialMode::Shadow);
        let mut s = settings(&[("k", "v")]);
        assert_eq!(take_trial_settings(&mut s).unwrap(), None);
        for (k, v) in [
            ("locus.canary", "0"),
            ("locus.canary", "101"),
            ("locus.canary", "ten"),
            ("locus.shadow", "maybe"),
            ("locus.window", "0"),
            ("locus.error-margin", "-1"),
            ("locus.ttft-margin", "NaN"),
        ] {
            let e = take_trial_settings(&mut settings(&[(k, v)])).unwrap_err();
            assert_eq!(e.param, k, "{k}={v}");
        }
        let e = take_trial_settings(&mut settings(&[
            ("locus.canary", "5"),
            ("locus.window", "10"),
            ("locus.min-requests", "11"),
        ]))
        .unwrap_err();
        assert_eq!(e.param, "locus.min-requests");
    }

    #[test]
    fn the_routing_key_is_the_session_else_the_first_block_else_the_prompts_start() {
        let mut a = Request::new(1, "x".repeat(100), 1);
        let mut b = Request::new(2, format!("{}{}", "x".repeat(64), "different tail"), 1);
        assert_eq!(routing_key(&a), routing_key(&b));
        b.prompt = "y".repeat(100);
        assert_ne!(routing_key(&a), routing_key(&b));
        a.block_hashes = vec![7, 8];
        b.block_hashes = vec![7, 9];
        assert_eq!(routing_key(&a), routing_key(&b));
        a.session = Some("s1".into());
        assert_ne!(routing_key(&a), routing_key(&b));
        b.session = Some("s1".into());
        assert_eq!(routing_key(&a), routing_key(&b));
        // Multi-byte characters across the 64-byte cut.
        let c = Request::new(3, "é".repeat(100), 1);
        let _ = routing_key(&c);
    }

    #[test]
    fn percentiles_and_rates_read_the_window() {
        let mut s = SideStats::default();
        let done = Completion::new(1, 1, Outcome::Ok);
        for i in 1..=10u64 {
            let sample = Sample { error: i > 8, fallback: false, ttft_us: Some(i * 1000) };
            s.completed(sample, &done, 5);
        }
        assert_eq!(s.requests, 10);
        assert_eq!(s.window.len(), 5);
        assert_eq!(s.ttft_ms(0.9), Some(10.0));
        assert_eq!(s.ttft_ms(0.5), Some(8.0));
        assert_eq!(s.rate(|x| x.error), Some(0.4));
        assert_eq!(SideStats::default().rate(|x| x.error), None);
    }
}
