//! The engine's KV listener: numbers the prefix store's operations and broadcasts them to
//! the `/kv_events` streams (see `kv_events`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use locus_engine::KvListener;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::broadcast;

use crate::api::signals::{KvEvent, KvEventKind};
use crate::clock::unix_micros;

/// Events buffered for each subscriber before it counts as lagging.
pub const CHANNEL_CAPACITY: usize = 4096;

/// The engine's KV listener: numbers the store's operations and broadcasts them.
pub(super) struct KvEvents {
    tx: broadcast::Sender<Arc<KvEvent>>,
    /// The last operation's number. Written only under the store's lock (listener calls), so
    /// a reader holding that lock (`with_resident_blocks`) sees a settled value.
    last_seq: AtomicU64,
    counted: [IntCounter; 3],
}

impl KvEvents {
    /// A listener counting its operations, by kind, in `counter`.
    pub(super) fn new(counter: &IntCounterVec) -> Self {
        let kinds = [KvEventKind::Stored, KvEventKind::Removed, KvEventKind::Cleared];
        Self {
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            last_seq: AtomicU64::new(0),
            counted: kinds.map(|k| counter.with_label_values(&[k.name()])),
        }
    }

    /// Streams connected now.
    pub(super) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A receiver of the operations after now, and the last operation's number. Call it
    /// under the store's lock (`with_resident_blocks`), so that no operation falls between
    /// the number and the first event received.
    pub(super) fn subscribe(&self) -> (broadcast::Receiver<Arc<KvEvent>>, u64) {
        (self.tx.subscribe(), self.last_seq.load(Ordering::Relaxed))
    }

    fn publish(&self, kind: KvEventKind, hashes: &[u64]) {
        let seq = self.last_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.counted[kind as usize].inc();
        let event = KvEvent {
            seq,
            kind,
            hashes: hashes.to_vec(),
            ts_us: unix_micros(SystemTime::now()),
            snapshot: false,
            worker_id: None,
            started_at_us: None,
        };
        // An error only means that nobody is subscribed.
        let _ = self.tx.send(Arc::new(event));
    }
}

impl KvListener for KvEvents {
    fn stored(&self, hashes: &[u64]) {
        self.publish(KvEventKind::Stored, hashes);
    }
    fn removed(&self, hashes: &[u64]) {
        self.publish(KvEventKind::Removed, hashes);
    }
    fn cleared(&self) {
        self.publish(KvEventKind::Cleared, &[]);
    }
}
