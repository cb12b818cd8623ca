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

//!
//! The two kinds differ only in what they do beside the live policy (`TrialKind`:
//! `shadow.rs`, `canary.rs`); what they share is the trial's state and life (`state.rs`,
//! from start to promotion or abort, each change in the audit log), its record
//! (`record.rs`), its report (`report.rs`, rendered by `table.rs`) and its settings
//! (`rules.rs`). The kinds import the state; the state never imports a kind (it is handed
//! one, made here by `kind_for`).

mod canary;
mod record;
mod report;
mod rules;
mod shadow;
mod state;
mod table;

use std::sync::Arc;

pub use report::{Side, SideReport, TrialEnd, TrialOutcome, TrialReport};
pub use rules::{TrialMode, TrialRules, TrialSettingError, take_trial_settings};
pub use shadow::SHADOW_QUEUE;
pub use state::{BlockFill, TrialRunning};
pub(crate) use state::{Trial, TrialKind, Trials};
pub use table::render_trial;

use crate::worlds::KvFeed;

/// What a trial in `mode` does beside the live policy; a shadow scores against `kv`.
pub(crate) fn kind_for(mode: TrialMode, kv: &Arc<KvFeed>) -> Box<dyn TrialKind> {
    match mode {
        TrialMode::Shadow => Box::new(shadow::Shadow::new(kv.clone())),
        TrialMode::Canary { percent } => Box::new(canary::Canary { percent }),
    }
}
