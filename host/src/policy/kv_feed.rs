//! The router's record of which prefix KV blocks each worker holds, as its KV events told
//! it, and the log through which every routing-policy instance learns of them.
//!
//! The record is exact as far as the events are: it is what the workers published, applied
//! in their order. The log keeps the last [`LOG_BATCHES`] batches; an instance that fell
//! further behind (or a fresh one) is told every worker's whole set instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::slot::lock;

/// Batches kept for instances catching up.
pub const LOG_BATCHES: usize = 4096;

/// One worker's KV events, as delivered to a policy's `kv-events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBatch {
    /// Its place in the feed (from 1).
    pub seq: u64,
    /// The worker's id.
    pub worker: u64,
    /// The worker holds none of the blocks it held before.
    pub cleared: bool,
    /// Blocks it dropped (after `cleared`).
    pub removed: Vec<u64>,
    /// Blocks it stored (after `removed`).
    pub stored: Vec<u64>,
}

/// What an instance at some cursor has to be told.
pub(crate) enum Missed {
    /// These batches, in order.
    Batches(Vec<Arc<KvBatch>>),
    /// Too much: every worker's whole set (worker, blocks), then the cursor to resume at.
    Everything(Vec<(u64, Vec<u64>)>, u64),
}

#[derive(Default)]
struct State {
    sets: HashMap<u64, HashSet<u64>>,
    /// Every worker ever heard of, so that a replay also clears those now empty.
    seen: HashSet<u64>,
    log: VecDeque<Arc<KvBatch>>,
}

/// Per-worker block sets and the event log, shared by the gateway (which applies what the
/// workers publish) and the routing policy slot (which feeds its instances).
#[derive(Default)]
pub struct KvFeed {
    state: Mutex<State>,
    /// Seq of the last batch applied; read without the lock on every policy call.
    head: AtomicU64,
}

impl KvFeed {
    /// Applies one worker's events (in the order of [`KvBatch`]) and logs them.
    pub fn apply(&self, worker: u64, cleared: bool, removed: Vec<u64>, stored: Vec<u64>) {
        if !cleared && removed.is_empty() && stored.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        if cleared && !st.sets.contains_key(&worker) && removed.is_empty() && stored.is_empty() {
            // Nothing known to forget: a policy has no blocks of this worker either.
            return;
        }
        st.seen.insert(worker);
        let set = st.sets.entry(worker).or_default();
        if cleared {
            set.clear();
        }
        for h in &removed {
            set.remove(h);
        }
        set.extend(stored.iter().copied());
        if set.is_empty() {
            st.sets.remove(&worker);
        }
        let seq = self.head.load(Ordering::Relaxed) + 1;
        st.log.push_back(Arc::new(KvBatch { seq, worker, cleared, removed, stored }));
        if st.log.len() > LOG_BATCHES {
            st.log.pop_front();
        }
        self.head.store(seq, Ordering::Release);
    }

    /// Forgets a worker (it left, or its event stream was lost).
    pub fn clear(&self, worker: u64) {
        self.apply(worker, true, Vec::new(), Vec::new());
    }

    /// Blocks the router knows `worker` holds.
    pub fn blocks(&self, worker: u64) -> usize {
        lock(&self.state).sets.get(&worker).map_or(0, HashSet::len)
    }

    /// Whether the router knows `worker` holds `block`.
    pub fn holds(&self, worker: u64, block: u64) -> bool {
        lock(&self.state).sets.get(&worker).is_some_and(|s| s.contains(&block))
    }

    /// Blocks known, over all workers.
    pub fn total_blocks(&self) -> usize {
        lock(&self.state).sets.values().map(HashSet::len).sum()
    }

    /// The feed's position: the seq of the last batch applied.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every worker's whole set (empty for one that holds nothing now), and the cursor it
    /// brings an instance to.
    pub(crate) fn everything(&self) -> (Vec<(u64, Vec<u64>)>, u64) {
        let st = lock(&self.state);
        let sets = st
            .seen
            .iter()
            .map(|w| (*w, st.sets.get(w).map_or_else(Vec::new, |s| s.iter().copied().collect())))
            .collect();
        (sets, self.head.load(Ordering::Relaxed))
    }

    /// What an instance told up to `cursor` has missed; `None` when nothing.
    pub(crate) fn since(&self, cursor: u64) -> Option<Missed> {
        if self.head.load(Ordering::Acquire) <= cursor {
            return None;
        }
        let st = lock(&self.state);
        let first = st.log.front().map_or(u64::MAX, |b| b.seq);
        if first > cursor + 1 {
            drop(st);
            let (sets, head) = self.everything();
            return Some(Missed::Everything(sets, head));
        }
        let skip = (cursor + 1 - first) as usize;
        Some(Missed::Batches(st.log.iter().skip(skip).cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_follow_the_events_in_order() {
        let f = KvFeed::default();
        f.apply(1, false, vec![], vec![10, 11, 12]);
        f.apply(2, false, vec![], vec![10]);
        f.apply(1, false, vec![11], vec![13]);
        assert_eq!((f.blocks(1), f.blocks(2)), (3, 1));
        assert!(f.holds(1, 13) && !f.holds(1, 11));
        // `cleared` comes first, then removals, then stores.
        f.apply(1, true, vec![], vec![20]);
        assert_eq!(f.blocks(1), 1);
        assert!(f.holds(1, 20));
        f.clear(2);
        assert_eq!((f.blocks(2), f.total_blocks()), (0, 1));
        assert_eq!(f.head(), 5);
    }

    #[test]
    fn an_instance_far_behind_is_told_everything() {
        let f = KvFeed::default();
        assert!(f.since(0).is_none());
        f.apply(7, false, vec![], vec![1]);
        f.apply(7, false, vec![], vec![2]);
        match f.since(1) {
            Some(Missed::Batches(b)) => {
                assert_eq!(b.iter().map(|b| b.seq).collect::<Vec<_>>(), [2])
            }
            _ => panic!("expected one batch"),
        }
        for i in 0..LOG_BATCHES as u64 {
            f.apply(8, false, vec![], vec![100 + i]);
        }
        match f.since(1) {
            Some(Missed::Everything(sets, head)) => {
                assert_eq!(head, f.head());
                let mut sizes: Vec<_> = sets.iter().map(|(w, s)| (*w, s.len())).collect();
                sizes.sort();
                assert_eq!(sizes, [(7, 2), (8, LOG_BATCHES)]);
                f.clear(7);
                let (sets, _) = f.everything();
                assert!(sets.contains(&(7, vec![])), "a worker now empty is cleared too");
            }
            _ => panic!("expected a replay"),
        }
        // A cleared worker nobody knew of is not logged.
        let head = f.head();
        f.clear(99);
        assert_eq!(f.head(), head);
    }
}
