//! The audit log: every change of what routes traffic (a swap, a shadow or canary begun, a
//! promotion, an abort, a rollback), with when, which component, who asked and why. Kept
//! in memory for the admin API and, with a path, appended to a JSON-lines file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::slot::lock;

/// Entries kept in memory.
pub const AUDIT_KEPT: usize = 256;

/// The actor of changes the router makes on its own (fault rules, canary rules).
pub const SELF_ACTOR: &str = "locus";

/// Who asked for a change, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// A person or program (`alice@laptop`, `watch:/etc/locus/policy.wasm`, `locus`).
    pub who: String,
    /// Their reason, or the rule that fired.
    pub why: String,
}

impl Actor {
    /// `who` asking, for `why`.
    pub fn new(who: impl Into<String>, why: impl Into<String>) -> Self {
        Self { who: who.into(), why: why.into() }
    }

    /// The router itself, for `why`.
    pub fn locus(why: impl Into<String>) -> Self {
        Self::new(SELF_ACTOR, why)
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Unix seconds, to the millisecond.
    pub at: f64,
    /// `swap`, `rollback`, `shadow`, `canary`, `promote` or `abort`.
    pub event: &'static str,
    /// `router` or `cache`.
    pub world: String,
    /// The component the change concerns: the one swapped in, the candidate of a trial,
    /// the version rolled back to.
    pub name: String,
    /// Its sha256 (empty for native).
    pub sha256: String,
    /// The component it replaced or was compared with, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
    /// Who asked.
    pub who: String,
    /// Why.
    pub why: String,
}

/// The log.
pub struct AuditLog {
    recent: Mutex<VecDeque<AuditEntry>>,
    file: Option<(PathBuf, Mutex<File>)>,
}

impl AuditLog {
    /// A log kept in memory only.
    pub fn memory() -> Self {
        Self { recent: Mutex::new(VecDeque::new()), file: None }
    }

    /// A log also appended to `path` (created 0600 if missing).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { recent: Mutex::new(VecDeque::new()), file: Some((path.into(), Mutex::new(f))) })
    }

    /// Records `entry` (stamped now); a file that cannot be written is logged, not fatal:
    /// the change has happened either way.
    pub fn record(&self, mut entry: AuditEntry) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        entry.at = (now.as_secs_f64() * 1000.0).round() / 1000.0;
        tracing::info!(event = entry.event, world = %entry.world, policy = %entry.name,
            sha256 = %entry.sha256, who = %entry.who, why = %entry.why, "audit");
        if let Some((path, file)) = &self.file {
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            // One write per line: appends of a line this size are not interleaved.
            if let Err(e) = lock(file).write_all(&line) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
            }
        }
        let mut recent = lock(&self.recent);
        if recent.len() == AUDIT_KEPT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The kept entries, oldest first.
    pub fn recent(&self) -> Vec<AuditEntry> {
        lock(&self.recent).iter().cloned().collect()
    }
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: &'static str) -> AuditEntry {
        AuditEntry {
            at: 0.0,
            event,
            world: "router".into(),
            name: "hash".into(),
            sha256: "ab".into(),
            from_sha256: None,
            who: "tester".into(),
            why: "a reason, with \"quotes\"\nand a newline".into(),
        }
    }

    #[test]
    fn entries_are_appended_as_json_lines_and_kept_in_memory() {
        let dir = std::env::temp_dir().join(format!("locus-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::to_file(&path).unwrap();
        log.record(entry("swap"));
        log.record(entry("abort"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "swap");
        assert_eq!(lines[1]["event"], "abort");
        assert_eq!(lines[1]["why"], "a reason, with \"quotes\"\nand a newline");
        assert!(lines[0]["at"].as_f64().unwrap() > 1.7e9);
        assert_eq!(log.recent().len(), 2);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Opened again, it appends.
        AuditLog::to_file(&path).unwrap().record(entry("promote"));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
        let mem = AuditLog::memory();
        for _ in 0..AUDIT_KEPT + 5 {
            mem.record(entry("swap"));
        }
        assert_eq!(mem.recent().len(), AUDIT_KEPT);
    }
}
