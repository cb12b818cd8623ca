//! Reporting attempts: each one is told once to the outcome metric, the feedback log and
//! the policy, as `cancelled` if it is dropped before it ends.

use std::time::Instant;

use locus_policy::{Completion, Outcome, Routed};

use super::outcome::Seen;
use crate::router::gateway::Gateway;

impl Gateway {
    /// Tells the policy how an attempt ended, and counts it. `answered`: a worker's answer
    /// was relayed (see [`locus_policy::RouterPolicy::observe`]).
    pub(super) fn observe(&self, done: &Completion, answered: bool, routed: Routed) {
        self.metrics.outcomes.with_label_values(&[outcome_name(done.outcome)]).inc();
        self.feedback.record(done);
        self.policy.observe(done, answered, routed);
        // The request's end: answered, or its client gone (a retry is not the end).
        if answered || done.outcome == Outcome::Cancelled {
            self.queue.completed(done.request_id, done.generated_tokens);
        }
    }
}

/// An attempt under way: reported as `cancelled` if it is dropped before it ends (the
/// client went away while the router waited for the worker).
pub(super) struct Attempt<'a> {
    gw: &'a Gateway,
    /// The report as it stands.
    pub(super) done: Completion,
    /// When the request arrived.
    pub(super) started: Instant,
    /// Microseconds this request has spent being routed so far.
    pub(super) route_us: u64,
    /// Which side of a trial routed it.
    pub(super) routed: Routed,
    open: bool,
}

impl<'a> Attempt<'a> {
    /// An attempt begun: `done` is reported when it ends, or when it is dropped.
    pub(super) fn new(
        gw: &'a Gateway,
        done: Completion,
        started: Instant,
        route_us: u64,
        routed: Routed,
    ) -> Self {
        Self { gw, done, started, route_us, routed, open: true }
    }

    /// Reports the attempt as it stands (latency set now, unless already set).
    pub(super) fn end(mut self, answered: bool) {
        self.open = false;
        if self.done.latency_us == 0 {
            self.done.latency_us = self.started.elapsed().as_micros() as u64;
        }
        self.gw.observe(&self.done, answered, self.routed);
    }

    /// Hands the report to someone else (a stream's end).
    pub(super) fn take(mut self) -> Completion {
        self.open = false;
        self.done
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.done.outcome = Seen::Dropped.verdict().outcome;
            self.done.latency_us = self.started.elapsed().as_micros() as u64;
            self.gw.observe(&self.done, false, self.routed);
        }
    }
}

/// An outcome's label in the outcome metric.
fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Rejected => "rejected",
        Outcome::Overloaded => "overloaded",
        Outcome::Failed => "failed",
        Outcome::Unreachable => "unreachable",
        Outcome::Timeout => "timeout",
        Outcome::Broken => "broken",
        Outcome::Cancelled => "cancelled",
    }
}
