//! A trial side by side, as `GET /admin/policy/trial` shows it and `locus policy report`
//! reads it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rules::{TrialMode, TrialRules};
use crate::info::PolicyInfo;

/// Which policy routed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The serving policy.
    #[default]
    Live,
    /// A canary's candidate.
    Candidate,
}

/// How a side of a trial is doing, as `GET /admin/policy/trial` shows it. A rate with
/// nothing to count is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialOutcome {
    /// Its candidate serves everything.
    Promoted,
    /// It ended with no change: asked for, or by the rules, or because the live policy
    /// changed.
    Aborted,
}

impl TrialOutcome {
    /// `promoted` or `aborted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Promoted => "promoted",
            Self::Aborted => "aborted",
        }
    }
}

/// How a trial ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialEnd {
    /// Promoted or aborted.
    pub how: TrialOutcome,
    /// Who ended it (`locus` for the rules).
    pub who: String,
    /// Why.
    pub why: String,
    /// Unix seconds.
    pub at: f64,
}

/// A trial, side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
