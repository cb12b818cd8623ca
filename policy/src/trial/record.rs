//! What a trial records of each side: its decisions (per worker, fallbacks, predicted
//! prefix hits) and its completed requests (errors, cached tokens, a window of the latest
//! for the rules), and the rates and percentiles read from them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::report::{Side, SideReport};
use super::rules::TrialRules;
use crate::worlds::{Completion, Outcome, Workers};

/// What the router knows of how one routed request ended.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub(super) at: Instant,
    pub(super) error: bool,
    pub(super) fallback: bool,
    pub(super) ttft_us: Option<u64>,
}

/// Which samples a rate counts.
pub(super) type Counted = fn(&Sample) -> bool;

/// The share of `samples` that `f` counts; `None` for none.
pub(super) fn rate<'a>(
    samples: impl ExactSizeIterator<Item = &'a Sample>,
    f: Counted,
) -> Option<f64> {
    let n = samples.len();
    (n > 0).then(|| samples.filter(|s| f(s)).count() as f64 / n as f64)
}

/// The `q` quantile of the samples' TTFTs, in milliseconds; `None` when none was timed.
pub(super) fn ttft_ms<'a>(samples: impl Iterator<Item = &'a Sample>, q: f64) -> Option<f64> {
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
pub(super) struct SideDecisions {
    pub(super) decisions: u64,
    pub(super) fallbacks: u64,
    pub(super) per_worker: HashMap<u64, u64>,
    /// Prompt blocks of the decisions scored, and of those the leading ones the chosen
    /// worker held (the router's KV record when the live decision was made).
    pub(super) predicted_blocks: u64,
    pub(super) predicted_hits: u64,
}

impl SideDecisions {
    pub(super) fn decided(&mut self, worker: u64, fallback: bool) {
        self.decisions += 1;
        self.fallbacks += u64::from(fallback);
        *self.per_worker.entry(worker).or_default() += 1;
    }

    pub(super) fn score(&mut self, blocks: usize, held: usize) {
        self.predicted_blocks += blocks as u64;
        self.predicted_hits += held as u64;
    }
}

/// Both sides' decisions.
#[derive(Default)]
pub(super) struct Decisions {
    pub(super) live: SideDecisions,
    pub(super) candidate: SideDecisions,
    /// Shadow decisions compared with the live one, and of those the same worker.
    pub(super) compared: u64,
    pub(super) agreed: u64,
    /// Every worker offered to a decision.
    pub(super) workers: HashSet<u64>,
}

impl Decisions {
    pub(super) fn side(&mut self, side: Side) -> &mut SideDecisions {
        match side {
            Side::Live => &mut self.live,
            Side::Candidate => &mut self.candidate,
        }
    }

    pub(super) fn offered(&mut self, workers: &Workers) {
        if !workers.ids.iter().all(|w| self.workers.contains(w)) {
            self.workers.extend(workers.ids.iter().copied());
        }
    }
}

/// A side's completed requests.
#[derive(Default)]
pub(super) struct SideOutcomes {
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) prompt_tokens: u64,
    pub(super) cached_tokens: u64,
    /// The most recent requests, oldest first.
    pub(super) window: VecDeque<Sample>,
}

impl SideOutcomes {
    pub(super) fn completed(&mut self, s: Sample, done: &Completion, keep: usize) {
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

/// Both sides' completed requests.
#[derive(Default)]
pub(super) struct Outcomes {
    pub(super) live: SideOutcomes,
    pub(super) candidate: SideOutcomes,
}

impl Outcomes {
    /// The samples each side's window statistics are read from: the candidate's window,
    /// and the live side's requests since the oldest of those (the same span of time, so a
    /// worker's bad minute weighs on both sides alike); for a shadow, the live window.
    pub(super) fn compared(&self, rules: &TrialRules) -> (Vec<&Sample>, Vec<&Sample>) {
        let candidate: Vec<&Sample> = self.candidate.window.iter().collect();
        let live: Vec<&Sample> = match candidate.first() {
            Some(oldest) => self.live.window.iter().filter(|s| s.at >= oldest.at).collect(),
            None => self.live.window.iter().rev().take(rules.window).collect(),
        };
        (live, candidate)
    }
}

/// The canary rule that the candidate breaks now, if any.
pub(super) fn broken_rule(r: &TrialRules, o: &Outcomes) -> Option<String> {
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

/// A side's report from its record; `window` is what its window statistics read.
pub(super) fn side_report(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
