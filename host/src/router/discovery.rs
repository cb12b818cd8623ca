//! Finding workers without a fixed list: a DNS name re-resolved on an interval (a Compose
//! service or network alias, a Kubernetes headless Service), or a file of worker URLs
//! followed as it changes. Each source adds the workers it finds once they answer, and
//! removes the ones it added when they are gone from its answer; workers given by
//! `--workers` or the admin API are never removed by it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::gateway::Gateway;
use super::registry::{Backend, worker_base_url};
use crate::api::signals::LoadReport;

/// Where a router looks for workers, besides its fixed list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discover {
    /// Every address `name` resolves to, as `http://ADDRESS:port`.
    Dns {
        /// Host name to resolve.
        name: String,
        /// The workers' port.
        port: u16,
    },
    /// Worker base URLs, one per line (`#` starts a comment), re-read when the file changes.
    File(PathBuf),
}

impl FromStr for Discover {
    type Err = String;

    /// `dns:NAME:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not dns:NAME:PORT (e.g. dns:worker:8001)");
        let rest = s.strip_prefix("dns:").ok_or_else(bad)?;
        let (name, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
        if name.is_empty() || name.contains(['/', ' ']) {
            return Err(bad());
        }
        Ok(Self::Dns { name: name.to_string(), port })
    }
}

impl std::fmt::Display for Discover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns { name, port } => write!(f, "dns:{name}:{port}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// How long a newly found worker has to answer before it is added (it is asked again at
/// the next look otherwise).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts following `source` for as long as the gateway lives.
pub(super) fn spawn(gw: &Arc<Gateway>, source: Discover, interval: Duration) {
    let weak = Arc::downgrade(gw);
    match source {
        Discover::Dns { name, port } => {
            tokio::spawn(dns(weak, name, port, interval));
        }
        Discover::File(path) => {
            tokio::spawn(file(weak, path, interval));
        }
    }
}

/// The workers a source added, by URL: the very entries, so that one removed (or
/// replaced) through the admin API is no longer the source's to remove.
type Mine = BTreeMap<String, Arc<Backend>>;

async fn dns(gw: Weak<Gateway>, name: String, port: u16, interval: Duration) {
    let label = format!("dns:{name}:{port}");
    let mut mine = Mine::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = tokio::net::lookup_host((name.as_str(), port)).await;
        let Some(gw) = gw.upgrade() else { return };
        match answer {
            Ok(addrs) => {
                failing = false;
                let want = addrs.map(|a| format!("http://{a}")).collect();
                sync(&gw, &label, &mut mine, &want).await;
            }
            // No answer is not an empty answer (a DNS server restarting, or every worker
            // down at once): the workers stay, and their health checks tell.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(source = %label, error = %e, "worker discovery: no DNS answer; keeping the workers known");
            }
            Err(_) => {}
        }
    }
}

async fn file(gw: Weak<Gateway>, path: PathBuf, interval: Duration) {
    let label = format!("file:{}", path.display());
    let mut mine = Mine::new();
    let mut changes = match super::watch::watch_file(path.clone()) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(source = %label, error = %e, "cannot watch the workers file; re-reading it every interval");
            None
        }
    };
    // The list in force: read at the start, then as `replaces` decides; the timer also asks
    // again workers that did not answer.
    let mut accepted: Option<String> = None;
    let mut last_read: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let changed = match &mut changes {
            Some(rx) => tokio::select! {
                _ = tick.tick() => false,
                c = rx.recv() => match c {
                    Some(_) => true,
                    None => { changes = None; false }
                },
            },
            None => {
                tick.tick().await;
                false
            }
        };
        let Some(gw) = gw.upgrade() else { return };
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => {
                warned = false;
                if replaces(&text, changed, accepted.as_deref(), last_read.as_deref()) {
                    accepted = Some(text.clone());
                }
                last_read = Some(text);
            }
            Err(e) if !warned => {
                tracing::warn!(source = %label, error = %e, "cannot read the workers file; keeping the workers known");
                warned = true;
            }
            Err(_) => {}
        }
        if let Some(text) = &accepted {
            let want = parse_workers_file(text, &label);
            sync(&gw, &label, &mut mine, &want).await;
        }
    }
}

/// Whether a read of the workers file, `read`, replaces the list in force (`accepted`):
/// the first read; a read equal to the one before it (`last_read`, a timer's interval
/// earlier); or a settled change (`changed`, from `watch_file`) that removes no worker. A
/// change that removes workers waits for the next read to agree, so that a file caught
/// half written (truncated, its writer slow) does not remove every worker.
fn replaces(read: &str, changed: bool, accepted: Option<&str>, last_read: Option<&str>) -> bool {
    let Some(accepted) = accepted else { return true };
    if last_read == Some(read) {
        return true;
    }
    changed && urls_in(accepted).0.is_subset(&urls_in(read).0)
}

/// The worker URLs in a workers file: one per line, blank lines and `#` comments skipped,
/// lines that are not a worker's base URL (see [`worker_base_url`]) logged and skipped.
pub fn parse_workers_file(text: &str, label: &str) -> BTreeSet<String> {
    let (urls, skipped) = urls_in(text);
    for (line, why) in skipped {
        tracing::warn!(source = %label, line, %why, "not a worker URL; skipped");
    }
    urls
}

/// The URLs in a workers file, and the lines skipped (1-based, with why).
fn urls_in(text: &str) -> (BTreeSet<String>, Vec<(usize, String)>) {
    let (mut urls, mut skipped) = (BTreeSet::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match worker_base_url(line) {
            Ok(url) => {
                urls.insert(url);
            }
            Err(why) => skipped.push((n + 1, why)),
        }
    }
    (urls, skipped)
}

/// Makes the workers this source added match `want`: removes those gone from it, and adds
/// the new ones that answer (identified by the id they report).
async fn sync(gw: &Gateway, label: &str, mine: &mut Mine, want: &BTreeSet<String>) {
    // Entries removed or replaced through the admin API are no longer this source's.
    let present = gw.registry.all();
    mine.retain(|_, b| present.iter().any(|p| Arc::ptr_eq(p, b)));
    mine.retain(|url, b| {
        let keep = want.contains(url);
        if !keep && gw.registry.remove_backend(b) {
            tracing::info!(source = %label, worker = %url, "worker gone from discovery; removed");
        }
        keep
    });
    // A worker listed by hand (or added through the admin API) is not this source's.
    let new: Vec<&String> =
        want.iter().filter(|u| !mine.contains_key(*u) && !gw.registry.contains(u)).collect();
    let probes = new.into_iter().map(|url| probe(gw, url));
    for (found, name) in futures_util::future::join_all(probes).await.into_iter().flatten() {
        let url = found.url.clone();
        let name = name.as_deref();
        if let Some(n) = name {
            if gw.registry.named_elsewhere(&url, n) {
                // The same worker, reached at another address too: counted once.
                tracing::debug!(source = %label, worker = %url, worker_id = n, "worker already known at another address; not added");
                continue;
            }
            // Takes the name over from an address of the worker's that is down.
            gw.registry.identify(&found, n);
        }
        if gw.registry.insert(found.clone()) {
            tracing::info!(source = %label, worker = %url, worker_id = name, "worker discovered; added");
            mine.insert(url, found);
        }
    }
}

/// The worker at `url` if it answers, with the id it reports in `/load` (a locus
/// worker); one without `/load` (another engine) is taken if it passes `/health`, and is
/// known by its URL.
async fn probe(gw: &Gateway, url: &str) -> Option<(Arc<Backend>, Option<String>)> {
    let b = Backend::new(url);
    let client = &gw.signals_client;
    let load = client.get(format!("{}/load", b.url)).timeout(PROBE_TIMEOUT).send().await;
    match load {
        Ok(r) if r.status().is_success() => {
            let report = r.json::<LoadReport>().await.ok()?;
            let name = report.worker_id.clone();
            b.set_load(Some(report));
            Some((b, Some(name)))
        }
        Ok(_) => {
            let health =
                client.get(format!("{}/health", b.url)).timeout(PROBE_TIMEOUT).send().await;
            health.ok().filter(|r| r.status().is_success()).map(|_| (b, None))
        }
        Err(e) => {
            tracing::debug!(worker = %b.url, error = %e, "discovered worker does not answer yet");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_sources_parse_and_bad_ones_are_refused() {
        assert_eq!(
            "dns:worker:8001".parse::<Discover>(),
            Ok(Discover::Dns { name: "worker".into(), port: 8001 })
        );
        assert_eq!(
            "dns:locus-worker.default.svc.cluster.local:8001".parse::<Discover>().map(
                |d| match d {
                    Discover::Dns { name, .. } => name,
                    Discover::File(_) => String::new(),
                }
            ),
            Ok("locus-worker.default.svc.cluster.local".into())
        );
        for bad in
            ["worker:8001", "dns:worker", "dns::8001", "dns:worker:0", "dns:worker:x", "dns:a b:1"]
        {
            let e = bad.parse::<Discover>().unwrap_err();
            assert!(e.contains("dns:NAME:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_workers_file_keeps_urls_and_skips_the_rest() {
        let text = "# the pool\nhttp://a:8001/\n\n  https://b:8001  # second\nc:8001\nhttp://\nhttp://a:8001\n";
        let urls: Vec<String> = parse_workers_file(text, "test").into_iter().collect();
        assert_eq!(urls, ["http://a:8001", "https://b:8001"]);
    }

    /// A change that removes workers waits for a second read to agree; one that only adds
    /// is taken at once.
    #[test]
    fn a_truncated_workers_file_removes_no_worker_until_a_second_read_agrees() {
        let two = "http://a:1\nhttp://b:1\n";
        assert!(replaces(two, false, None, None), "the first read");
        // Caught truncated, or half written: kept out, by a change or by the timer.
        for half in ["", "http://a:1\n", "http://a:1\nhttp://b"] {
            assert!(!replaces(half, true, Some(two), Some(two)), "{half:?}");
            assert!(!replaces(half, false, Some(two), Some(two)), "{half:?}");
            // The next read agrees: it is what the operator wrote.
            assert!(replaces(half, false, Some(two), Some(half)), "{half:?}");
        }
        // Adding (or moving nothing) is taken at once.
        assert!(replaces("http://a:1\nhttp://b:1\nhttp://c:1\n", true, Some(two), Some(two)));
        assert!(!replaces("http://c:1\n", false, Some(two), Some(two)), "a timer read alone");
    }

    /// A worker URL is scheme, host and port: nothing that would aim the router's requests
    /// elsewhere or put credentials in its headers and metric labels.
    #[test]
    fn a_worker_url_is_only_scheme_host_and_port() {
        let text = "http://u:p@a:8001\nhttp://a:8001/v1\nhttp://a:8001?x=1\nhttp://a:8001#f\n\
                    ftp://a:21\nhttp://A:8001/\nhttp://[::1]:80\n";
        let urls: Vec<String> = parse_workers_file(text, "test").into_iter().collect();
        assert_eq!(urls, ["http://[::1]", "http://a:8001"]);
        for bad in ["http://u@a:1", "http://a:1/x", "http://a:1/?q", "http://a:1/#f", "a:1", ""] {
            assert!(worker_base_url(bad).is_err(), "{bad}");
        }
        assert_eq!(worker_base_url(" https://W.example:443/ ").unwrap(), "https://w.example");
    }
}
