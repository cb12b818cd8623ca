//! Workers as separate `locus worker` processes, each with its own compute threads, so a
//! busy worker cannot borrow an idle one's cores as it can inside one process (where all
//! engines share one rayon pool).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a worker may take to load its model and listen.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Running worker processes; dropping this kills them.
pub struct WorkerProcs {
    children: Vec<Child>,
    /// The workers' base URLs, in start order (`worker-1` first).
    pub urls: Vec<String>,
}

impl WorkerProcs {
    /// Starts `n` workers from the binary `exe` on free loopback ports, each run as
    /// `exe worker --port 0 --worker-id worker-I ARGS` with `compute_threads` rayon
    /// threads (candle reads `RAYON_NUM_THREADS` too) and `token` as its admin token; each
    /// logs to `logs/worker-I.log`.
    pub async fn start(
        exe: &Path,
        n: usize,
        args: &[String],
        token: &str,
        compute_threads: usize,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
        let mut procs = Self { children: Vec::with_capacity(n), urls: Vec::with_capacity(n) };
        for i in 1..=n {
            let log = logs.join(format!("worker-{i}.log"));
            let log = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(exe)
                .arg("worker")
                .args(["--host", "127.0.0.1", "--port", "0", "--worker-id"])
                .arg(format!("worker-{i}"))
                .args(args)
                .env("LOCUS_ADMIN_TOKEN", token)
                .env("RAYON_NUM_THREADS", compute_threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {} worker", exe.display()))?;
            procs.children.push(child);
        }
        // The children load their models in parallel; collect their addresses in order.
        for (i, child) in procs.children.iter_mut().enumerate() {
            let stdout = child.stdout.take().context("worker stdout")?;
            let url = tokio::time::timeout(START_TIMEOUT, listening_url(stdout))
                .await
                .with_context(|| {
                    format!("worker-{} did not listen within {START_TIMEOUT:?}", i + 1)
                })?
                .with_context(|| format!("worker-{}", i + 1))?;
            procs.urls.push(url);
        }
        Ok(procs)
    }
}

/// Reads a worker's stdout up to its "listening on URL" line, then keeps draining it in
/// the background so the child never blocks on a full pipe.
async fn listening_url(stdout: tokio::process::ChildStdout) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            let url = url.to_string();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(url);
        }
    }
    bail!("exited before listening (its log says why)")
}

impl Drop for WorkerProcs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}
