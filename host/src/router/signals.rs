//! What the workers tell the router beside their answers: their load (polled from
//! `GET /load`) and their prefix KV events (followed on `GET /kv_events`), kept per worker
//! for the routing policy. Workers may come and go: a worker added to the registry is
//! followed within one poll interval, one removed is forgotten, and a lost event stream
//! clears the worker's blocks until a reconnect brings its snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::gateway::Gateway;
use super::kv_reader::KvEventReader;
use super::registry::Backend;
use crate::api::CLUSTER_TOKEN;
use crate::api::signals::{KvEvent, KvEventKind, LoadReport};
use crate::clock::unix_micros;

/// Polls every worker's load each `interval` and keeps one KV event follower per worker,
/// for as long as the gateway lives. A follower belongs to a worker's address and id
/// together: a worker that identifies itself anew, or moves, gets a new one.
pub(super) async fn run(gw: std::sync::Weak<Gateway>, interval: Duration) {
    let mut followers: HashMap<(String, u64), JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gw) = gw.upgrade() else { break };
        let all = gw.registry.all();
        if gw.options.kv_events {
            followers.retain(|(url, id), task| {
                let keep = all.iter().any(|b| b.url == *url && b.id() == *id);
                if !keep {
                    task.abort();
                    clear_unless_owned(&gw, url, *id);
                }
                keep
            });
            for b in all.iter() {
                let id = b.id();
                followers
                    .entry((b.url.clone(), id))
                    .or_insert_with(|| tokio::spawn(follow(Arc::downgrade(&gw), b.clone(), id)));
            }
        }
        let polls = all.iter().map(|b| poll_load(&gw, b, interval));
        futures_util::future::join_all(polls).await;
    }
    for task in followers.values() {
        task.abort();
    }
}

/// Forgets the blocks filed under `id` by the follower of `url`, unless a worker at
/// another address now has that id (the same worker, moved): its follower owns them.
fn clear_unless_owned(gw: &Gateway, url: &str, id: u64) {
    if !gw.registry.all().iter().any(|b| b.id() == id && b.url != url) {
        gw.policy.kv().clear(id);
    }
}

/// Asks every listed worker its load once, so that those that answer within `timeout` are
/// known by their reported id from the first request on (see [`Backend::identify`]).
pub(super) async fn identify(gw: &Gateway, timeout: Duration) {
    let all = gw.registry.all();
    futures_util::future::join_all(all.iter().map(|b| poll_load(gw, b, timeout))).await;
}

async fn poll_load(gw: &Gateway, b: &Backend, interval: Duration) {
    // A slow answer is stale by the next poll; a worker that cannot say keeps its last
    // report, whose age the policy sees growing.
    let timeout = interval.max(Duration::from_millis(200));
    let r = gw.signals_client.get(format!("{}/load", b.url)).timeout(timeout).send().await;
    match r {
        Ok(r) if r.status().is_success() => match r.json::<LoadReport>().await {
            Ok(load) => {
                gw.registry.identify(b, &load.worker_id);
                b.set_load(Some(load));
            }
            Err(e) => tracing::debug!(worker = %b.url, error = %e, "unreadable load report"),
        },
        Ok(r) => tracing::debug!(worker = %b.url, status = %r.status(), "no load report"),
        Err(e) => tracing::debug!(worker = %b.url, error = %e, "load poll failed"),
    }
}

/// Longest wait between reconnects to a worker that went away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Wait before asking again a worker that answered `/kv_events` with an error status.
const NO_EVENTS_RETRY: Duration = Duration::from_secs(5);

/// Clears a worker's blocks when its follower ends, however it ends: an aborted task is
/// dropped after its last poll, so this clear comes after every event it applied.
struct ClearOnDrop(std::sync::Weak<Gateway>, String, u64);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Some(gw) = self.0.upgrade() {
            clear_unless_owned(&gw, &self.1, self.2);
        }
    }
}

/// Follows `b`'s KV events until the gateway or the worker's entry is gone, reconnecting
/// with backoff. While no stream is open the router knows none of its blocks.
/// Its blocks are filed under `id`, the worker's id when [`run`] started it: a worker that
/// identifies itself anew gets a new follower and this one is stopped.
async fn follow(gw: std::sync::Weak<Gateway>, b: Arc<Backend>, id: u64) {
    let _clear = ClearOnDrop(gw.clone(), b.url.clone(), id);
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let Some(g) = gw.upgrade() else { return };
        let mut req = g.signals_client.get(format!("{}/kv_events", b.url));
        let (cluster, worker) = (&g.options.cluster_token, &g.options.worker_token);
        if crate::http::may_carry_token(&b.url, g.options.cluster_over_http) {
            if let Some(t) = cluster {
                req = req.header(CLUSTER_TOKEN, t);
            }
            if let Some(t) = worker {
                req = req.bearer_auth(t);
            }
        } else if cluster.is_some() || worker.is_some() {
            crate::http::warn_token_withheld("following KV events", &b.url);
        }
        drop(g);
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                backoff = Duration::from_millis(100);
                warned = false;
                read_events(&gw, &b, id, r).await;
            }
            Ok(r) => {
                if !warned {
                    tracing::warn!(worker = %b.url, status = %r.status(), "worker gives no KV events; routing without its blocks");
                    warned = true;
                }
                // Not a locus worker, or a token mismatch: nothing will change soon.
                backoff = NO_EVENTS_RETRY;
            }
            Err(e) => tracing::debug!(worker = %b.url, error = %e, "KV event stream unreachable"),
        }
        if let Some(g) = gw.upgrade() {
            clear_unless_owned(&g, &b.url, id);
        }
        tokio::time::sleep(backoff).await;
        if backoff < MAX_BACKOFF {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn read_events(gw: &std::sync::Weak<Gateway>, b: &Backend, id: u64, r: reqwest::Response) {
    let mut stream = r.bytes_stream();
    let mut reader = KvEventReader::default();
    // A snapshot's `cleared` is held until its `stored`, so that policies see the worker's
    // set replaced in one step rather than empty for a moment.
    let mut pending_clear = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return };
        let events = match reader.push(&chunk) {
            Ok(events) => events,
            Err(e) => {
                // An event lost would leave the index wrong: start over from a snapshot.
                tracing::warn!(worker = %b.url, error = %e, "resubscribing to KV events");
                return;
            }
        };
        let Some(gw) = gw.upgrade() else { return };
        for ev in events {
            apply(&gw, b, id, ev, &mut pending_clear);
        }
    }
}

fn apply(gw: &Gateway, b: &Backend, id: u64, ev: KvEvent, pending_clear: &mut bool) {
    let feed = gw.policy.kv();
    gw.metrics.kv_events.with_label_values(&[ev.kind.name()]).inc();
    if !ev.snapshot && ev.ts_us > 0 {
        let now = unix_micros(SystemTime::now());
        gw.metrics.kv_event_lag.observe(now.saturating_sub(ev.ts_us) as f64 / 1e6);
    }
    match ev.kind {
        KvEventKind::Cleared if ev.snapshot => *pending_clear = true,
        KvEventKind::Cleared => feed.clear(id),
        KvEventKind::Stored => feed.apply(id, std::mem::take(pending_clear), Vec::new(), ev.hashes),
        KvEventKind::Removed => {
            feed.apply(id, std::mem::take(pending_clear), ev.hashes, Vec::new())
        }
        KvEventKind::Unknown => tracing::debug!(worker = %b.url, "unknown KV event type"),
    }
}
