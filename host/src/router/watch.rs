//! Swapping the routing policy when its file changes on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Gateway;
use crate::policy::{LoadOptions, PolicySource};

/// Swaps the policy whenever `path` changes on disk, with the same checks as a `PUT`;
/// a file that fails them is logged and the serving policy stays.
pub fn watch(gw: Arc<Gateway>, path: PathBuf) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create()) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the policy file");
            return;
        }
    };
    // Watch the directory: editors and `cp` replace files rather than write them in place.
    let dir =
        path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, path = %dir.display(), "cannot watch the policy file");
        return;
    }
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last: Option<Vec<u8>> = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Let a burst of events (truncate, write, close) settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if last.as_ref() == Some(&bytes) {
                continue;
            }
            last = Some(bytes);
            let source = PolicySource::File(path.clone());
            let opts = LoadOptions::with_settings(gw.options.settings.clone());
            let g = gw.clone();
            match tokio::task::spawn_blocking(move || g.policy.swap(&source, &opts)).await {
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
