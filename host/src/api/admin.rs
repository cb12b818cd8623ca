//! Answers of the admin APIs that clients read back (`locus policy report`), typed on both
//! ends so that the server and the CLI cannot drift apart.

use locus_policy::{AuditEntry, TrialReport};
use serde::{Deserialize, Serialize};

/// `GET /admin/policy/trial`: the running trial, else the last one (with how it ended).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialAnswer {
    /// `None` before any trial.
    pub trial: Option<TrialReport>,
}

/// `GET /admin/audit` of a router or a worker: the kept entries, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditAnswer {
    /// The entries.
    pub entries: Vec<AuditEntry>,
}
