//! The audit log: every change of what routes traffic (a swap, a shadow or canary begun, a
//! promotion, an abort, a rollback), with when, which component, who asked and why. Kept
//! in memory for the admin API and, with a path, appended to a JSON-lines file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::info::{PolicyInfo, unix_time};

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

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditEvent {
    /// The first policy of a slot, at start.
    Load,
    /// A new policy serves.
    Swap,
    /// The previous version serves again (asked for, or by the fault rules).
    Rollback,
    /// A shadow trial began.
    Shadow,
    /// A canary trial began.
    Canary,
    /// A trial's candidate serves everything.
    Promote,
    /// A trial ended without a change.
    Abort,
}

impl AuditEvent {
    /// Its name in the log: `load`, `swap`, `rollback`, `shadow`, `canary`, `promote`,
    /// `abort`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Swap => "swap",
            Self::Rollback => "rollback",
            Self::Shadow => "shadow",
            Self::Canary => "canary",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds, to the millisecond.
    pub at: f64,
    /// What changed.
    pub event: AuditEvent,
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
        let f = open_append(path)?;
        Ok(Self { recent: Mutex::new(VecDeque::new()), file: Some((path.into(), Mutex::new(f))) })
    }

    /// The log a server was asked for: appended to `path` when there is one, else kept in
    /// memory only.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => Self::to_file(p)
                .map_err(|e| anyhow::anyhow!("cannot open the audit log {}: {e}", p.display())),
            None => Ok(Self::memory()),
        }
    }

    /// Records now that `event` made `to` the policy of `world` (or, for a trial, its
    /// candidate), in place of the component `from_sha256`, asked for by `by`.
    pub fn change(
        &self,
        event: AuditEvent,
        world: &str,
        to: &PolicyInfo,
        from_sha256: Option<&str>,
        by: &Actor,
    ) {
        self.record(AuditEntry {
            at: unix_time(SystemTime::now()),
            event,
            world: world.into(),
            name: to.name.clone(),
            sha256: to.sha256.clone(),
            from_sha256: from_sha256.map(str::to_string),
            who: by.who.clone(),
            why: by.why.clone(),
        });
    }

    /// Records `entry`; a file that cannot be written is logged, not fatal: the change
    /// has happened either way.
    fn record(&self, entry: AuditEntry) {
        tracing::info!(event = entry.event.name(), world = %entry.world, policy = %entry.name,
            sha256 = %entry.sha256, who = %entry.who, why = %entry.why, "audit");
        if let Some((path, file)) = &self.file {
            let mut line = serde_json::to_vec(&entry).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = append(path, &mut file.lock(), &line) {
                tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
            }
        }
        let mut recent = self.recent.lock();
        if recent.len() == AUDIT_KEPT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The kept entries, oldest first.
    pub fn recent(&self) -> Vec<AuditEntry> {
        self.recent.lock().iter().cloned().collect()
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Appends `line` to the log at `path` (open as `file`) and syncs it: reopened first when
/// the path no longer names the open file (a rotation moved it away), and cut back to its
/// length before when the write fails part way, so that the log holds whole lines only.
fn append(path: &Path, file: &mut File, line: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    let moved = std::fs::metadata(path).map(|m| (m.dev(), m.ino()) != (open.dev(), open.ino()));
    if moved.unwrap_or(true) {
        *file = open_append(path)?;
    }
    let before = file.metadata()?.len();
    // One write per line, under the lock: appends are not interleaved.
    if let Err(e) = file.write_all(line).and_then(|()| file.sync_data()) {
        let _ = file.set_len(before);
        return Err(e);
    }
    Ok(())
}

impl Default for AuditLog {
    fn default() -> Self {
        Self::memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::compiled_cache::Origin;

    fn info() -> PolicyInfo {
        PolicyInfo {
            name: "hash".into(),
            world: "router".into(),
            sha256: "ab".into(),
            version: "0.1.0".into(),
            size: 1,
            loaded_at: SystemTime::now(),
            settings: Vec::new(),
            faults: 0,
            code: Some(Origin::Compiled),
            load_us: 0,
        }
    }

    fn record(log: &AuditLog, event: AuditEvent) {
        let by = Actor::new("tester", "a reason, with \"quotes\"\nand a newline");
        log.change(event, "router", &info(), None, &by);
    }

    #[test]
    fn entries_are_appended_as_json_lines_and_kept_in_memory() {
        let dir = std::env::temp_dir().join(format!("locus-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::to_file(&path).unwrap();
        record(&log, AuditEvent::Swap);
        record(&log, AuditEvent::Abort);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "swap");
        assert_eq!(lines[1]["event"], "abort");
        assert_eq!(lines[1]["why"], "a reason, with \"quotes\"\nand a newline");
        assert!(lines[0]["at"].as_f64().unwrap() > 1.7e9);
        assert_eq!(log.recent().len(), 2);
        // The lines read back as entries.
        let typed: AuditEntry = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(typed, log.recent()[0]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // Opened again, it appends.
        record(&AuditLog::to_file(&path).unwrap(), AuditEvent::Promote);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
        let mem = AuditLog::memory();
        for _ in 0..AUDIT_KEPT + 5 {
            record(&mem, AuditEvent::Swap);
        }
        assert_eq!(mem.recent().len(), AUDIT_KEPT);
    }

    /// logrotate moves the log away: the next entry goes to a new file at the path (0600),
    /// not on into the moved one.
    #[test]
    fn a_rotated_log_is_reopened_at_its_path() {
        let dir = std::env::temp_dir().join(format!("locus-audit-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, old) = (dir.join("audit.jsonl"), dir.join("audit.jsonl.1"));
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::to_file(&path).unwrap();
        record(&log, AuditEvent::Swap);
        std::fs::rename(&path, &old).unwrap();
        record(&log, AuditEvent::Abort);
        record(&log, AuditEvent::Promote);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&old), lines(&path)), (1, 2));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
