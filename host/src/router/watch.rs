//! Following files on disk: the routing policy's (swapped when it changes) and the
//! workers file's (see `discovery`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::gateway::Gateway;
use locus_policy::{Actor, LoadOptions, PolicySource};

/// Sends the contents of `path` each time they change (not the contents it has now).
///
/// Watches the file's directory, not the file: editors and `cp` replace files rather than
/// write them in place, and a Kubernetes ConfigMap volume swaps a `..data` symlink. A
/// burst of events (truncate, write, close) is read once, after it settles. A file that
/// cannot be read is skipped until it can. The watch ends when the receiver is dropped.
pub(super) fn watch_file(path: PathBuf) -> notify::Result<mpsc::UnboundedReceiver<Vec<u8>>> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create()) {
            let _ = tx.send(());
        }
    })?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    // Read now, not in the task: a change made between this call and the task's first
    // run would otherwise be taken for the starting contents and never sent.
    let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
    let (out, contents) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if last.as_ref() == Some(&bytes) {
                continue;
            }
            last = Some(bytes.clone());
            if out.send(bytes).is_err() {
                break;
            }
        }
    });
    Ok(contents)
}

/// Swaps the policy whenever `path` changes on disk, with the same checks as a `PUT`;
/// a file that fails them is logged and the serving policy stays.
pub fn watch(gw: Arc<Gateway>, path: PathBuf) {
    let mut changes = match watch_file(path.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot watch the policy file");
            return;
        }
    };
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let source = PolicySource::File(path.clone());
            let opts = LoadOptions::with_settings(gw.options.settings.clone());
            let g = gw.clone();
            let by = Actor::new(format!("watch:{}", path.display()), "the policy file changed");
            match tokio::task::spawn_blocking(move || g.policy.swap(&source, &opts, &by)).await {
                Ok(Ok(info)) => {
                    tracing::info!(policy = %info.name, sha256 = %info.sha256, "policy file changed: swapped")
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "policy file changed but was rejected; the old policy keeps serving")
                }
                Err(e) => tracing::error!(error = %e, "policy reload failed"),
            }
        }
    });
}
