//! A canary: the candidate routes a stable share of requests, and the rules abort it when
//! its side does worse than the live side over the same span of time.

use std::sync::Arc;

use super::report::Side;
use super::rules::{TrialMode, TrialRules};
use super::state::{BlockFill, Trial, TrialKind, Trials};
use crate::worlds::router::observe_in;
use crate::worlds::{Completion, Request, Workers};

/// A canary routing `percent` of requests.
pub(super) struct Canary {
    pub(super) percent: f64,
}

impl TrialKind for Canary {
    fn mode(&self) -> TrialMode {
        TrialMode::Canary { percent: self.percent }
    }

    fn takes(&self, req: &Request) -> bool {
        let bucket = locus_policy_kit::mix(routing_key(req)) % 1_000_000;
        (bucket as f64) < self.percent * 10_000.0
    }

    fn blocks_on_path(&self) -> bool {
        // Its candidate may read them.
        true
    }

    fn live_decided(
        &self,
        t: &Trial,
        _req: &Request,
        workers: &Workers,
        (live, fallback): (u64, bool),
        _fill: Option<BlockFill>,
    ) {
        t.decided(Side::Live, workers, live, fallback);
    }

    fn observe(&self, trials: &Trials, t: &Arc<Trial>, done: &Completion, answered: bool) {
        observe_in(&t.slot, done, answered);
        trials.check_faults(t);
    }

    /// Enough live-side requests to cover the span of the candidate's window.
    fn live_keep(&self, rules: &TrialRules) -> usize {
        if self.percent < 100.0 {
            let w = rules.window as f64;
            (w * (100.0 - self.percent) / self.percent).ceil().clamp(w, 50_000.0) as usize
        } else {
            rules.window
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
