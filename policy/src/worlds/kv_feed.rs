//! The router's record of which prefix KV blocks each worker holds, as its KV events told
//! it, and the log through which every routing-policy instance learns of them.
//!
//! The record is exact as far as the events are: it is what the workers published, applied
//! in their order. The log keeps the last [`LOG_BATCHES`] batches (and at most
//! [`LOG_HASHES`] hashes in all); an instance more than [`CATCH_UP_BATCHES`] behind, or
//! fresh, is told every worker's whole set instead, parents before children.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Batches kept for instances catching up.
pub const LOG_BATCHES: usize = 4096;

/// Hashes kept in the log over all its batches (8 MB): a flapping worker's snapshots are
/// whole block sets, and must not pile up.
pub const LOG_HASHES: usize = 1 << 20;

/// An instance further behind than this many batches is told everything at once instead:
/// one call per worker costs less than thousands of calls, each under the call deadline.
pub const CATCH_UP_BATCHES: u64 = 256;

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
    /// Per worker: each block it holds and when it was stored (a count over all stored
    /// hashes; a parent is stored before its children, so this order is parents first).
    sets: HashMap<u64, HashMap<u64, u64>>,
    stamp: u64,
    /// Every worker ever heard of, so that a replay also clears those now empty.
    seen: HashSet<u64>,
    log: VecDeque<Arc<KvBatch>>,
    /// Hashes over the log's batches.
    logged: usize,
}

impl State {
    fn leading(&self, worker: u64, blocks: &[u64]) -> usize {
        let Some(set) = self.sets.get(&worker) else { return 0 };
        blocks.iter().take_while(|b| set.contains_key(b)).count()
    }
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
        let mut st = self.state.lock();
        if cleared && !st.sets.contains_key(&worker) && removed.is_empty() && stored.is_empty() {
            // Nothing known to forget: a policy has no blocks of this worker either.
            return;
        }
        let seq = self.head.load(Ordering::Relaxed) + 1;
        st.seen.insert(worker);
        let mut stamp = st.stamp;
        let set = st.sets.entry(worker).or_default();
        if cleared {
            set.clear();
        }
        for h in &removed {
            set.remove(h);
        }
        for h in &stored {
            stamp += 1;
            set.entry(*h).or_insert(stamp);
        }
        let empty = set.is_empty();
        st.stamp = stamp;
        if empty {
            st.sets.remove(&worker);
        }
        st.logged += removed.len() + stored.len();
        st.log.push_back(Arc::new(KvBatch { seq, worker, cleared, removed, stored }));
        while st.log.len() > LOG_BATCHES || (st.logged > LOG_HASHES && st.log.len() > 1) {
            if let Some(b) = st.log.pop_front() {
                st.logged -= b.removed.len() + b.stored.len();
            }
        }
        self.head.store(seq, Ordering::Release);
    }

    /// Forgets a worker (it left, or its event stream was lost).
    pub fn clear(&self, worker: u64) {
        self.apply(worker, true, Vec::new(), Vec::new());
    }

    /// Blocks the router knows `worker` holds.
    pub fn blocks(&self, worker: u64) -> usize {
        self.state.lock().sets.get(&worker).map_or(0, HashMap::len)
    }

    /// Whether the router knows `worker` holds `block`.
    pub fn holds(&self, worker: u64, block: u64) -> bool {
        self.state.lock().sets.get(&worker).is_some_and(|s| s.contains_key(&block))
    }

    /// How many of `blocks` (a prompt's block hashes, in order) `worker` holds from the
    /// first on: the prefix it would reuse, as far as the router knows.
    pub fn leading(&self, worker: u64, blocks: &[u64]) -> usize {
        self.state.lock().leading(worker, blocks)
    }

    /// [`KvFeed::leading`] for each of `workers`, under one lock.
    pub fn leading_each(&self, workers: &[u64], blocks: &[u64]) -> Vec<u32> {
        let st = self.state.lock();
        workers.iter().map(|&w| st.leading(w, blocks) as u32).collect()
    }

    /// Blocks known, over all workers.
    pub fn total_blocks(&self) -> usize {
        self.state.lock().sets.values().map(HashMap::len).sum()
    }

    /// The feed's position: the seq of the last batch applied.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Every worker's whole set, parents before children (empty for a worker that holds
    /// nothing now), and the cursor it brings an instance to.
    pub(crate) fn everything(&self) -> (Vec<(u64, Vec<u64>)>, u64) {
        let st = self.state.lock();
        let in_order = |set: &HashMap<u64, u64>| {
            let mut v: Vec<(u64, u64)> = set.iter().map(|(h, stamp)| (*stamp, *h)).collect();
            v.sort_unstable();
            v.into_iter().map(|(_, h)| h).collect()
        };
        let sets =
            st.seen.iter().map(|w| (*w, st.sets.get(w).map_or_else(Vec::new, in_order))).collect();
        (sets, self.head.load(Ordering::Relaxed))
    }

    /// What an instance told up to `cursor` has missed; `None` when nothing.
    pub(crate) fn since(&self, cursor: u64) -> Option<Missed> {
        if self.head.load(Ordering::Acquire) <= cursor {
            return None;
        }
        let st = self.state.lock();
        let first = st.log.front().map_or(u64::MAX, |b| b.seq);
        let behind = self.head.load(Ordering::Relaxed) - cursor;
        if first > cursor + 1 || behind > CATCH_UP_BATCHES {
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
        // A replay lists blocks in the order they were stored: parents first.
        f.apply(7, false, vec![], vec![0, 99, 3]);
        let (sets, _) = f.everything();
        assert_eq!(sets.iter().find(|(w, _)| *w == 7).unwrap().1, [1, 2, 0, 99, 3]);
        for i in 0..LOG_BATCHES as u64 {
            f.apply(8, false, vec![], vec![100 + i]);
        }
        match f.since(1) {
            Some(Missed::Everything(sets, head)) => {
                assert_eq!(head, f.head());
                let mut sizes: Vec<_> = sets.iter().map(|(w, s)| (*w, s.len())).collect();
                sizes.sort();
                assert_eq!(sizes, [(7, 5), (8, LOG_BATCHES)]);
                f.clear(7);
                let (sets, _) = f.everything();
                assert!(sets.contains(&(7, vec![])), "a worker now empty is cleared too");
            }
            _ => panic!("expected a replay"),
        }
        // Beyond CATCH_UP_BATCHES an instance is told everything, even if the log has it.
        let head = f.head();
        for i in 0..CATCH_UP_BATCHES + 1 {
            f.apply(9, false, vec![], vec![i]);
        }
        assert!(matches!(f.since(head), Some(Missed::Everything(..))));
        assert!(matches!(f.since(head + 1), Some(Missed::Batches(_))));
        // The log holds at most LOG_HASHES hashes.
        f.apply(9, false, vec![], (0..LOG_HASHES as u64).collect());
        f.apply(9, false, vec![], vec![u64::MAX]);
        assert_eq!(f.state.lock().log.len(), 1);
        // A cleared worker nobody knew of is not logged.
        let head = f.head();
        f.clear(99);
        assert_eq!(f.head(), head);
    }
}
