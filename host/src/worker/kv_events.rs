//! `GET /kv_events`: the worker's prefix KV store as a stream of Server-Sent Events, a
//! snapshot first and then the operations `kv_listener` broadcasts; the protocol and its
//! types are in [`crate::api::signals`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use super::auth::events_auth;
use super::state::Worker;
use crate::api::signals::{KvEvent, KvEventKind};
use crate::clock::unix_micros;

/// Comment lines sent on an idle stream, so that proxies and the client see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Subscribes to the live events and takes the snapshot they continue, atomically (under
/// the store's lock, so no operation falls between them).
fn subscribe(w: &Worker) -> (broadcast::Receiver<Arc<KvEvent>>, [KvEvent; 2]) {
    let (rx, seq, hashes) = w.engine.with_resident_blocks(|hashes| {
        let (rx, seq) = w.kv_events.subscribe();
        (rx, seq, hashes.to_vec())
    });
    let snapshot = |kind, hashes| KvEvent {
        seq,
        kind,
        hashes,
        ts_us: unix_micros(SystemTime::now()),
        snapshot: true,
        worker_id: Some(w.options.worker_id.clone()),
        started_at_us: Some(unix_micros(w.started)),
    };
    (rx, [snapshot(KvEventKind::Cleared, Vec::new()), snapshot(KvEventKind::Stored, hashes)])
}

fn sse(event: &KvEvent) -> Result<Event, Infallible> {
    // Serializing numbers, a string and an enum cannot fail.
    Ok(Event::default().data(serde_json::to_string(event).unwrap_or_default()))
}

/// One subscriber's stream.
struct Feed {
    w: Arc<Worker>,
    rx: broadcast::Receiver<Arc<KvEvent>>,
    pending: VecDeque<KvEvent>,
    closing: watch::Receiver<bool>,
}

/// `GET /kv_events`: which prefixes this worker holds tells which prompts are hot, so it
/// is behind the cluster token (in `x-locus-cluster-token` or as a bearer token) when the
/// worker has one, and the admin token serves too; with neither configured it is open
/// (a local cluster on loopback).
pub(super) async fn kv_events(State(w): State<Arc<Worker>>, headers: HeaderMap) -> Response {
    if let Err(e) = events_auth(&w, &headers) {
        return e.into_response();
    }
    let (rx, snapshot) = subscribe(&w);
    let closing = w.closing.subscribe();
    let feed = Feed { w, rx, pending: VecDeque::from(snapshot), closing };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((sse(&event), feed));
            }
            let received = tokio::select! {
                received = feed.rx.recv() => received,
                // The worker is stopping: end the response so the graceful shutdown can finish.
                _ = feed.closing.wait_for(|closing| *closing) => return None,
            };
            match received {
                Ok(event) => return Some((sse(&event), feed)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a /kv_events subscriber lagged: sending a snapshot");
                    let (rx, snapshot) = subscribe(&feed.w);
                    feed.rx = rx;
                    feed.pending.extend(snapshot);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_the_wire_shape() {
        let live = KvEvent {
            seq: 7,
            kind: KvEventKind::Removed,
            hashes: vec![u64::MAX, 1],
            ts_us: 5,
            snapshot: false,
            worker_id: None,
            started_at_us: None,
        };
        let text = serde_json::to_string(&live).unwrap();
        assert_eq!(
            text,
            r#"{"seq":7,"type":"removed","hashes":[18446744073709551615,1],"ts_us":5}"#
        );
        assert_eq!(serde_json::from_str::<KvEvent>(&text).unwrap(), live);
        let snap = KvEvent {
            kind: KvEventKind::Cleared,
            hashes: vec![],
            snapshot: true,
            worker_id: Some("w".into()),
            started_at_us: Some(9),
            ..live
        };
        assert_eq!(
            serde_json::to_string(&snap).unwrap(),
            r#"{"seq":7,"type":"cleared","hashes":[],"ts_us":5,"snapshot":true,"worker_id":"w","started_at_us":9}"#
        );
        // A type from a newer worker is read as unknown, to be skipped, not as an error.
        let newer = r#"{"seq":8,"type":"moved","hashes":[1],"ts_us":6}"#;
        assert_eq!(serde_json::from_str::<KvEvent>(newer).unwrap().kind, KvEventKind::Unknown);
    }
}
