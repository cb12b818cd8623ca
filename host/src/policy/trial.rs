//! Trying a routing policy on live traffic before it routes all of it.
//!
//! - A **shadow** is asked every `route` the live policy is asked, and told the same
//!   feedback, on a thread of its own: its answer is only compared with the live one, so a
//!   slow or faulty shadow never touches a request. From the router's KV record it is
//!   scored as the live choice is: the leading prompt blocks the chosen worker holds, and
//!   how the decisions spread over workers.
//! - A **canary** routes a stable share of requests (by a hash of the request's session
//!   key, else of its prompt's leading 64 bytes, about one 16-token block), so a
//!   conversation stays on one side; both sides' real outcomes are kept, and the canary is
//!   aborted when, over the candidate's last requests and the live side's requests of the
//!   same span of time, its error or fallback rate or its TTFT p90 is worse than the live
//!   side's by more than a margin.
//!
//! A candidate that the fault rules give up on ends its trial as aborted; so does a change
//! of the live policy (a swap, or a rollback asked for or made by the fault rules).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use super::audit::{Actor, AuditLog};
use super::kv_feed::KvFeed;
use super::router::{RouterWorld, decide, observe_in};
use super::slot::{Slot, Version, lock};
use super::{Completion, Outcome, PolicyInfo, Request, Workers, unix_time};

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

impl TrialMode {
    /// `shadow` or `canary`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Canary { .. } => "canary",
        }
    }
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

/// Host settings that stay with the policy's own (read by the slot, not a trial).
const HOST_SETTINGS: &[&str] = &["locus.instances"];

/// Takes the host's trial settings (`locus.shadow`, `locus.canary`, `locus.min-requests`,
/// `locus.window`, `locus.error-margin`, `locus.fallback-margin`, `locus.ttft-margin`) out
/// of a swap's settings; the rest are the policy's. `None`: a plain swap. Any other
/// `locus.` setting is refused, so that a misspelt trial never becomes a full swap.
pub fn take_trial_settings(
    settings: &mut Vec<(String, String)>,
) -> Result<Option<(TrialMode, TrialRules)>, TrialSettingError> {
    let mut mode = None;
    let mut rules = TrialRules::default();
    let mut error = None;
    let mut rule_set = None;
    let mut min_set = false;
    settings.retain(|(k, v)| {
        let bad = |message: &str| TrialSettingError { param: k.clone(), message: message.into() };
        let fraction = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
        let count = |v: &str| v.parse::<usize>().ok().filter(|n| *n >= 1);
        let mut set_mode = |m: TrialMode| match mode.replace(m) {
            Some(prev) if prev != m => Err(bad("give one of locus.shadow and locus.canary")),
            _ => Ok(()),
        };
        let r = match k.as_str() {
            "locus.shadow" => match v.as_str() {
                "true" | "1" => set_mode(TrialMode::Shadow),
                "false" | "0" => Ok(()),
                _ => Err(bad("must be true or false")),
            },
            "locus.canary" => match v.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => set_mode(TrialMode::Canary { percent: p }),
                _ => Err(bad("must be a percentage of requests in (0, 100]")),
            },
            "locus.min-requests" => {
                min_set = true;
                count(v)
                    .map(|n| rules.min_requests = n)
                    .ok_or_else(|| bad("must be a whole number of requests, at least 1"))
            }
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
            key if key.starts_with("locus.") && !HOST_SETTINGS.contains(&key) => {
                Err(bad("is no locus setting: a trial takes locus.shadow or locus.canary, \
                 locus.min-requests, locus.window, locus.error-margin, \
                 locus.fallback-margin and locus.ttft-margin"))
            }
            _ => return true,
        };
        match r {
            Err(e) => {
                error.get_or_insert(e);
            }
            Ok(()) if k != "locus.shadow" && k != "locus.canary" => {
                rule_set.get_or_insert(k.clone());
            }
            Ok(()) => {}
        }
        false
    });
    if let Some(e) = error {
        return Err(e);
    }
    if let (None, Some(key)) = (mode, rule_set) {
        return Err(TrialSettingError {
            param: key,
            message: "is a canary rule: give it with locus.canary=PERCENT".into(),
        });
    }
    if rules.min_requests > rules.window {
        let (param, message) = if min_set {
            ("locus.min-requests", format!("must not exceed locus.window ({})", rules.window))
        } else {
            (
                "locus.window",
                format!(
                    "must be at least locus.min-requests ({}, the default): raise it or lower \
                     locus.min-requests",
                    rules.min_requests
                ),
            )
        };
        return Err(TrialSettingError { param: param.into(), message });
    }
    Ok(mode.map(|m| (m, rules)))
}

/// What the router knows of how one routed request ended.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    error: bool,
    fallback: bool,
    ttft_us: Option<u64>,
}

/// Which samples a rate counts.
type Counted = fn(&Sample) -> bool;

/// The share of `samples` that `f` counts; `None` for none.
fn rate<'a>(samples: impl ExactSizeIterator<Item = &'a Sample>, f: Counted) -> Option<f64> {
    let n = samples.len();
    (n > 0).then(|| samples.filter(|s| f(s)).count() as f64 / n as f64)
}

/// The `q` quantile of the samples' TTFTs, in milliseconds; `None` when none was timed.
fn ttft_ms<'a>(samples: impl Iterator<Item = &'a Sample>, q: f64) -> Option<f64> {
    let mut t: Vec<u64> = samples.filter_map(|s| s.ttft_us).collect();
    if t.is_empty() {
        return None;
    }
    t.sort_unstable();
    let i = ((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1;
    Some(t[i] as f64 / 1000.0)
}

/// A side's routing decisions: written by the request path (canary) or by the shadow's
/// thread (shadow), never by both, so the idle-priority thread holds no lock a request
/// waits for.
#[derive(Default)]
struct SideDecisions {
    decisions: u64,
    fallbacks: u64,
    per_worker: HashMap<u64, u64>,
    /// Prompt blocks of the decisions scored, and of those the leading ones the chosen
    /// worker held (the router's KV record when the live decision was made).
    predicted_blocks: u64,
    predicted_hits: u64,
}

impl SideDecisions {
    fn decided(&mut self, worker: u64, fallback: bool) {
        self.decisions += 1;
        self.fallbacks += u64::from(fallback);
        *self.per_worker.entry(worker).or_default() += 1;
    }

    fn score(&mut self, blocks: usize, held: usize) {
        self.predicted_blocks += blocks as u64;
        self.predicted_hits += held as u64;
    }
}

#[derive(Default)]
struct Decisions {
    live: SideDecisions,
    candidate: SideDecisions,
    /// Shadow decisions compared with the live one, and of those the same worker.
    compared: u64,
    agreed: u64,
    /// Every worker offered to a decision.
    workers: HashSet<u64>,
}

impl Decisions {
    fn side(&mut self, side: Side) -> &mut SideDecisions {
        match side {
            Side::Live => &mut self.live,
            Side::Candidate => &mut self.candidate,
        }
    }

    fn offered(&mut self, workers: &Workers) {
        if !workers.ids.iter().all(|w| self.workers.contains(w)) {
            self.workers.extend(workers.ids.iter().copied());
        }
    }
}

/// A side's completed requests.
#[derive(Default)]
struct SideOutcomes {
    requests: u64,
    errors: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// The most recent requests, oldest first.
    window: VecDeque<Sample>,
}

impl SideOutcomes {
    fn completed(&mut self, s: Sample, done: &Completion, keep: usize) {
        self.requests += 1;
        self.errors += u64::from(s.error);
        if done.outcome == Outcome::Ok
            && let (Some(p), Some(c)) = (done.prompt_tokens, done.cached_tokens)
        {
            self.prompt_tokens += u64::from(p);
            self.cached_tokens += u64::from(c);
        }
        if self.window.len() >= keep {
            self.window.pop_front();
        }
        self.window.push_back(s);
    }
}

#[derive(Default)]
struct Outcomes {
    live: SideOutcomes,
    candidate: SideOutcomes,
}

impl Outcomes {
    /// The samples each side's window statistics are read from: the candidate's window,
    /// and the live side's requests since the oldest of those (the same span of time, so a
    /// worker's bad minute weighs on both sides alike); for a shadow, the live window.
    fn compared(&self, rules: &TrialRules) -> (Vec<&Sample>, Vec<&Sample>) {
        let candidate: Vec<&Sample> = self.candidate.window.iter().collect();
        let live: Vec<&Sample> = match candidate.first() {
            Some(oldest) => self.live.window.iter().filter(|s| s.at >= oldest.at).collect(),
            None => self.live.window.iter().rev().take(rules.window).collect(),
        };
        (live, candidate)
    }
}

/// How a side of a trial is doing, as `GET /admin/policy/trial` shows it. A rate with
/// nothing to count is absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideReport {
    /// Routing decisions made (for a shadow: route calls compared).
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
    /// live decision was made), over the prompt blocks; scored in shadow trials only.
    pub predicted_hit_rate: Option<f64>,
    /// Requests this side routed that ended with an answer or an error (for a shadow
    /// trial, the live side routes all).
    pub requests: u64,
    /// Of those, failed: no worker could serve, overloaded, timed out, broken.
    pub errors: u64,
    /// Prompt tokens the workers found cached, over the prompt tokens, of answered requests.
    pub hit_rate: Option<f64>,
    /// Requests the window statistics below are read from: the candidate's last
    /// `window`, and the live side's requests over the same span of time.
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

fn side_report(
    d: &SideDecisions,
    o: &SideOutcomes,
    window: &[&Sample],
    workers: &HashSet<u64>,
) -> SideReport {
    let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    let spread = (!workers.is_empty() && d.decisions > 0).then(|| {
        let max = workers.iter().map(|w| d.per_worker.get(w).copied().unwrap_or(0)).max();
        max.unwrap_or(0) as f64 / (d.decisions as f64 / workers.len() as f64)
    });
    SideReport {
        decisions: d.decisions,
        fallbacks: d.fallbacks,
        fallback_rate: ratio(d.fallbacks, d.decisions),
        per_worker: d.per_worker.iter().map(|(w, n)| (w.to_string(), *n)).collect(),
        load_max_over_mean: spread,
        predicted_hit_rate: ratio(d.predicted_hits, d.predicted_blocks),
        requests: o.requests,
        errors: o.errors,
        hit_rate: ratio(o.cached_tokens, o.prompt_tokens),
        window_requests: window.len(),
        window_error_rate: rate(window.iter().copied(), |s| s.error),
        window_fallback_rate: rate(window.iter().copied(), |s| s.fallback),
        ttft_p50_ms: ttft_ms(window.iter().copied(), 0.5),
        ttft_p90_ms: ttft_ms(window.iter().copied(), 0.9),
    }
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

enum ShadowMsg {
    Route(Box<ShadowRoute>),
    Observe { done: Completion, answered: bool },
}

/// A live decision handed to the shadow.
struct ShadowRoute {
    req: Request,
    workers: Workers,
    /// The worker the live policy chose, and whether the fallback chose it.
    live: u64,
    live_fault: bool,
    /// The leading prompt blocks each offered worker held when the live policy decided
    /// (absent when the blocks are not known yet: `fill` makes them).
    held: Option<Vec<u32>>,
    fill: Option<BlockFill>,
}

/// A candidate under trial.
pub(crate) struct Trial {
    /// Tells this trial's requests from another's ([`super::Routed::trial`]).
    pub(crate) id: u64,
    pub(crate) mode: TrialMode,
    rules: TrialRules,
    pub(crate) slot: Slot<RouterWorld>,
    /// The version on trial (what a promotion installs).
    pub(crate) candidate: Arc<Version<RouterWorld>>,
    live_policy: PolicyInfo,
    /// The live slot's rollbacks when the trial began: one more ends the trial.
    pub(crate) live_rollbacks: u64,
    started: Instant,
    started_at: SystemTime,
    decisions: Mutex<Decisions>,
    outcomes: Mutex<Outcomes>,
    skipped: AtomicU64,
    /// The shadow's queue; emptied when the trial ends, which ends its thread.
    shadow: ArcSwapOption<SyncSender<ShadowMsg>>,
}

impl Trial {
    /// Records a decision a canary trial's side made.
    pub(crate) fn decided(&self, side: Side, workers: &Workers, worker: u64, fallback: bool) {
        let mut d = lock(&self.decisions);
        d.offered(workers);
        d.side(side).decided(worker, fallback);
    }

    /// Ends the shadow's thread (it sees its queue closed).
    pub(crate) fn shadow_stop(&self) {
        self.shadow.store(None);
    }

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

    /// Live-side requests kept: enough to cover the span of the candidate's window.
    fn live_keep(&self) -> usize {
        match self.mode {
            TrialMode::Canary { percent } if percent < 100.0 => {
                let w = self.rules.window as f64;
                (w * (100.0 - percent) / percent).ceil().clamp(w, 50_000.0) as usize
            }
            _ => self.rules.window,
        }
    }

    fn report(&self) -> TrialReport {
        let d = lock(&self.decisions);
        let o = lock(&self.outcomes);
        let (live_window, candidate_window) = o.compared(&self.rules);
        TrialReport {
            mode: self.mode,
            rules: self.rules,
            live_policy: self.live_policy.clone(),
            candidate_policy: self.candidate.info.clone(),
            started_at: unix_time(self.started_at),
            running_s: self.started.elapsed().as_secs_f64(),
            compared: d.compared,
            agreement: (d.compared > 0).then(|| d.agreed as f64 / d.compared as f64),
            skipped: self.skipped.load(Ordering::Relaxed),
            live: side_report(&d.live, &o.live, &live_window, &d.workers),
            candidate: side_report(&d.candidate, &o.candidate, &candidate_window, &d.workers),
            ended: None,
        }
    }

    /// The canary rule that the candidate breaks now, if any.
    fn broken_rule(&self, o: &Outcomes) -> Option<String> {
        let r = &self.rules;
        let (l, c) = o.compared(r);
        if l.len() < r.min_requests || c.len() < r.min_requests {
            return None;
        }
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let rates: [(&str, Counted, f64); 2] = [
            ("error rate", |s| s.error, r.error_margin),
            ("fallback rate", |s| s.fallback, r.fallback_margin),
        ];
        for (what, counted, margin) in rates {
            let (lr, cr) = (rate(l.iter().copied(), counted)?, rate(c.iter().copied(), counted)?);
            if cr - lr > margin {
                return Some(format!(
                    "{what} {} against the live side's {} over the candidate's last {} \
                     requests and the live side's {} of the same span (margin {})",
                    pct(cr),
                    pct(lr),
                    c.len(),
                    l.len(),
                    pct(margin)
                ));
            }
        }
        let timed = |s: &[&Sample]| s.iter().filter(|x| x.ttft_us.is_some()).count();
        if timed(&l) >= r.min_requests && timed(&c) >= r.min_requests {
            let (lt, ct) = (ttft_ms(l.iter().copied(), 0.9)?, ttft_ms(c.iter().copied(), 0.9)?);
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

/// The key that keeps a conversation on one side: its session, else its prompt's leading
/// 64 bytes (about one 16-token block; independent of tokenizing, so it is the same
/// whether or not the router computes block hashes).
fn routing_key(req: &Request) -> u64 {
    use std::hash::Hasher;
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

/// A bijective mixer: FNV values are well spread, but not in their low bits alone.
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
    /// Serializes ending (the rules end trials from request threads and the shadow's).
    ending: Mutex<()>,
    next_id: AtomicU64,
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
            ending: Mutex::new(()),
            next_id: AtomicU64::new(1),
            audit,
            kv,
        }
    }

    pub(crate) fn current(&self) -> arc_swap::Guard<Option<Arc<Trial>>> {
        self.current.load()
    }

    /// Starts trying `slot` beside `live` (the caller serializes changes).
    pub(crate) fn begin(
        self: &Arc<Self>,
        mode: TrialMode,
        rules: TrialRules,
        slot: Slot<RouterWorld>,
        live: PolicyInfo,
        live_rollbacks: u64,
        actor: &Actor,
    ) -> Result<TrialReport, TrialRunning> {
        if let Some(t) = &*self.current.load() {
            return Err(TrialRunning(t.mode.name()));
        }
        let candidate = slot.current();
        let trial = Arc::new(Trial {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            mode,
            rules,
            slot,
            candidate: candidate.clone(),
            live_policy: live.clone(),
            live_rollbacks,
            started: Instant::now(),
            started_at: SystemTime::now(),
            decisions: Mutex::new(Decisions::default()),
            outcomes: Mutex::new(Outcomes::default()),
            skipped: AtomicU64::new(0),
            shadow: ArcSwapOption::empty(),
        });
        if mode == TrialMode::Shadow {
            let (tx, rx) = std::sync::mpsc::sync_channel(SHADOW_QUEUE);
            trial.shadow.store(Some(Arc::new(tx)));
            let (trials, t) = (self.clone(), trial.clone());
            std::thread::Builder::new()
                .name("locus-shadow".into())
                .spawn(move || trials.shadow_loop(&t, &rx))
                .expect("a thread can be spawned");
        }
        self.current.store(Some(trial.clone()));
        let why = match mode {
            TrialMode::Canary { percent } if actor.why.is_empty() => {
                format!("{percent}% of requests")
            }
            TrialMode::Canary { percent } => format!("{percent}% of requests: {}", actor.why),
            TrialMode::Shadow => actor.why.clone(),
        };
        let by = Actor::new(actor.who.clone(), why);
        self.audit.change(mode.name(), "router", &candidate.info, Some(&live.sha256), &by);
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
        let _g = lock(&self.ending);
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
        *lock(&self.last) = Some(report.clone());
        self.current.store(None);
        trial.shadow.store(None);
        let mode = trial.mode.name();
        let why = match actor.why.as_str() {
            "" => format!("{mode} {how}"),
            why => format!("{mode} {how}: {why}"),
        };
        let event = if how == "promoted" { "promote" } else { "abort" };
        let (to, from) = (&report.candidate_policy, &report.live_policy.sha256);
        self.audit.change(event, "router", to, Some(from), &Actor::new(actor.who.clone(), why));
        Some(report)
    }

    /// The running trial's report, else the last one's.
    pub(crate) fn report(&self) -> Option<TrialReport> {
        match &*self.current.load() {
            Some(t) => Some(t.report()),
            None => lock(&self.last).clone(),
        }
    }

    /// Hands a live decision to the shadow; never waits. The blocks each worker holds are
    /// read now, when the live policy decided: by the time the shadow's thread runs, the
    /// chosen worker may have stored this very request's blocks.
    pub(crate) fn to_shadow(
        &self,
        t: &Trial,
        req: &Request,
        workers: &Workers,
        (live, live_fault): (u64, bool),
        fill: Option<BlockFill>,
    ) {
        let Some(tx) = t.shadow.load_full() else { return };
        let held = (!req.block_hashes.is_empty())
            .then(|| self.kv.leading_each(&workers.ids, &req.block_hashes));
        let msg = ShadowRoute {
            req: req.clone(),
            workers: workers.clone(),
            live,
            live_fault,
            held,
            fill,
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(ShadowMsg::Route(Box::new(msg))) {
            t.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells a trial how a routed attempt ended (`answered`: its answer was relayed).
    pub(crate) fn observe(&self, t: &Arc<Trial>, done: &Completion, answered: bool) {
        match t.mode {
            TrialMode::Shadow => {
                if let Some(tx) = &*t.shadow.load() {
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
        let sample = Sample { at: Instant::now(), error, fallback, ttft_us };
        let broken = {
            let mut o = lock(&t.outcomes);
            match side {
                Side::Live => o.live.completed(sample, done, t.live_keep()),
                Side::Candidate => o.candidate.completed(sample, done, t.rules.window),
            }
            // The candidate's window changes only with its own completions: the rules
            // (which sort the windows for the p90) look then.
            (side == Side::Candidate).then(|| t.broken_rule(&o)).flatten()
        };
        if let Some(why) = broken {
            tracing::warn!(candidate = %t.candidate.info.name, %why, "canary aborted");
            self.end(t, "aborted", &Actor::locus(format!("canary rules: {why}")));
        }
    }

    /// Ends a trial whose candidate the fault rules gave up on.
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
            if t.shadow.load().is_none() {
                // Ended: what is still queued is of no use.
                break;
            }
            match msg {
                ShadowMsg::Route(route) => self.shadow_route(t, *route),
                ShadowMsg::Observe { done, answered } => {
                    observe_in(&t.slot, &done, answered);
                }
            }
            self.check_faults(t);
        }
    }

    fn shadow_route(&self, t: &Arc<Trial>, r: ShadowRoute) {
        let ShadowRoute { mut req, workers, live, live_fault, held, fill } = r;
        if let Some(fill) = fill {
            fill(&mut req);
        }
        let (index, fault) = decide(&t.slot, &req, &workers);
        let mine = workers.ids[index];
        let blocks = req.block_hashes.len();
        let held_by = |w: u64| match &held {
            Some(h) => workers.ids.iter().position(|&id| id == w).map_or(0, |i| h[i] as usize),
            // Tokenized here, after the live decision: read now.
            None => self.kv.leading(w, &req.block_hashes),
        };
        let (held_live, held_mine) =
            if blocks > 0 { (held_by(live), held_by(mine)) } else { (0, 0) };
        let mut d = lock(&t.decisions);
        d.offered(&workers);
        d.compared += 1;
        d.agreed += u64::from(mine == live);
        d.live.decided(live, live_fault);
        d.candidate.decided(mine, fault.is_some());
        if blocks > 0 {
            d.live.score(blocks, held_live);
            d.candidate.score(blocks, held_mine);
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
        // Zeroed: priority 0, the only one SCHED_IDLE takes (and musl's struct has more
        // fields than glibc's).
        let param: libc::sched_param = std::mem::zeroed();
        if libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) != 0 {
            tracing::debug!("cannot lower the shadow thread's priority");
        }
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
            ("locus.canery", "10"),
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
        // A window below the default minimum names the window.
        let e =
            take_trial_settings(&mut settings(&[("locus.canary", "5"), ("locus.window", "10")]))
                .unwrap_err();
        assert_eq!(e.param, "locus.window");
        // A rule without a trial, or two modes, is refused rather than swapped in.
        let e = take_trial_settings(&mut settings(&[("locus.window", "50")])).unwrap_err();
        assert_eq!(e.param, "locus.window");
        let e =
            take_trial_settings(&mut settings(&[("locus.canary", "5"), ("locus.shadow", "true")]))
                .unwrap_err();
        assert_eq!(e.param, "locus.shadow");
        // The slot's own host setting stays with the policy's.
        let mut s = settings(&[("locus.instances", "1"), ("locus.shadow", "1")]);
        assert!(take_trial_settings(&mut s).unwrap().is_some());
        assert_eq!(s, settings(&[("locus.instances", "1")]));
    }

    #[test]
    fn the_routing_key_is_the_session_else_the_prompts_first_64_bytes() {
        let mut a = Request::new(1, "x".repeat(100), 1);
        let mut b = Request::new(2, format!("{}{}", "x".repeat(64), "different tail"), 1);
        assert_eq!(routing_key(&a), routing_key(&b));
        // Block hashes (known or not) do not move a request between sides.
        a.block_hashes = vec![7, 8];
        assert_eq!(routing_key(&a), routing_key(&b));
        b.prompt = "y".repeat(100);
        assert_ne!(routing_key(&a), routing_key(&b));
        a.session = Some("s1".into());
        assert_ne!(routing_key(&a), routing_key(&b));
        b.session = Some("s1".into());
        assert_eq!(routing_key(&a), routing_key(&b));
        // Multi-byte characters across the 64-byte cut.
        let c = Request::new(3, "é".repeat(100), 1);
        let _ = routing_key(&c);
    }

    #[test]
    fn percentiles_and_rates_read_the_window_and_the_same_span_of_the_live_side() {
        let mut o = Outcomes::default();
        let done = Completion::new(1, 1, Outcome::Ok);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Live: 10 errors long ago, then 10 good requests.
        for i in 0..20u64 {
            let s = Sample { at: at(i), error: i < 10, fallback: false, ttft_us: Some(1000) };
            o.live.completed(s, &done, 100);
        }
        // The candidate keeps its last 5, from 11 ms on.
        for i in 1..=10u64 {
            let s =
                Sample { at: at(5 + i), error: i > 8, fallback: false, ttft_us: Some(i * 1000) };
            o.candidate.completed(s, &done, 5);
        }
        assert_eq!((o.live.requests, o.live.errors), (20, 10));
        assert_eq!((o.candidate.requests, o.candidate.window.len()), (10, 5));
        let (live, candidate) = o.compared(&TrialRules::default());
        // The live side over the candidate's span: its requests from 11 ms, none failed.
        assert_eq!(live.len(), 9);
        assert_eq!(rate(live.iter().copied(), |s| s.error), Some(0.0));
        assert_eq!(rate(candidate.iter().copied(), |s| s.error), Some(0.4));
        assert_eq!(ttft_ms(candidate.iter().copied(), 0.9), Some(10.0));
        assert_eq!(ttft_ms(candidate.iter().copied(), 0.5), Some(8.0));
        assert_eq!(rate(std::iter::empty::<&Sample>(), |s| s.error), None);
    }
}
