//! Tests of the prefix store: chains, eviction and its cascades, byte accounting, and what
//! the KV listener hears.

use candle_core::{DType, Device};
use parking_lot::Mutex;

use super::*;
use crate::prefix::policy::LruPolicy;

fn cache_of(n_tokens: usize) -> KvCache {
    let t = Tensor::zeros((1, 2, n_tokens, 4), DType::F32, &Device::Cpu).unwrap();
    KvCache::from_layers(vec![(t.clone(), t.clone()), (t.clone(), t)])
}

fn toks(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i * 7 + salt).collect()
}

// 2 layers x (K + V) x 2 heads x 16 tokens x 4 dims x 4 bytes
const BLOCK: u64 = 2 * 2 * 2 * 16 * 4 * 4;

#[test]
fn lru_evicts_chain_tails_and_accounts_bytes() {
    let policy = Arc::new(LruPolicy::new());
    let mut s = PrefixStore::new(3 * BLOCK, policy.clone());
    let a = toks(40, 0);
    s.insert(&a, &cache_of(40), 0).unwrap();
    assert_eq!(s.stats().entries, 2);
    assert_eq!(s.stats().bytes, 2 * BLOCK);
    let hit = s.lookup(&a, 39);
    assert_eq!(hit.tokens, 32);
    assert_eq!(hit.layers.len(), 2);
    // A second prompt: only one more block fits; then its second block forces an eviction.
    let b = toks(32, 1);
    s.insert(&b, &cache_of(32), 0).unwrap();
    assert_eq!(s.stats().bytes, 3 * BLOCK);
    assert!(s.stats().bytes <= s.stats().capacity_bytes);
    // Hits were reported deepest first, so a's tail (block 1) was older than its head and
    // was the one evicted.
    assert_eq!(s.lookup(&a, 40).tokens, 16);
    assert_eq!(s.lookup(&b, 32).tokens, 32);
    assert_eq!(s.entries().iter().map(|e| e.size).sum::<u64>(), s.stats().bytes);
    s.flush();
    assert_eq!(s.stats().entries, 0);
    assert_eq!(s.stats().bytes, 0);
    assert!(policy.evict(1).is_empty(), "flush told the policy");
}

struct Refuse;
impl CachePolicy for Refuse {
    fn admit(&self, _: u64, _: u64) -> bool {
        false
    }
    fn hit(&self, _: u64) {}
    fn evict(&self, _: u64) -> Vec<u64> {
        Vec::new()
    }
    fn removed(&self, _: u64) {}
}

#[test]
fn refused_and_oversized_blocks_are_not_stored() {
    let mut s = PrefixStore::new(10 * BLOCK, Arc::new(Refuse));
    s.insert(&toks(32, 0), &cache_of(32), 0).unwrap();
    assert_eq!(s.stats().entries, 0);
    let mut s = PrefixStore::new(BLOCK - 1, Arc::new(LruPolicy::new()));
    s.insert(&toks(32, 0), &cache_of(32), 0).unwrap();
    assert_eq!((s.stats().entries, s.stats().rejected), (0, 1));
}

#[test]
fn evicting_a_parent_drops_its_descendants() {
    let mut s = PrefixStore::new(100 * BLOCK, Arc::new(LruPolicy::new()));
    let a = toks(48, 0);
    s.insert(&a, &cache_of(48), 0).unwrap();
    let first = block_hashes(&a)[0];
    let mut dropped = Vec::new();
    s.drop_chain(first, false, &mut dropped);
    assert_eq!(dropped, block_hashes(&a), "parents first");
    assert_eq!(s.stats().entries, 0);
    assert_eq!(s.stats().bytes, 0);
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Stored(Vec<u64>),
    Removed(Vec<u64>),
    Cleared,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Heard>>);

impl Recorder {
    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl KvListener for Recorder {
    fn stored(&self, hashes: &[u64]) {
        self.0.lock().push(Heard::Stored(hashes.to_vec()));
    }
    fn removed(&self, hashes: &[u64]) {
        self.0.lock().push(Heard::Removed(hashes.to_vec()));
    }
    fn cleared(&self) {
        self.0.lock().push(Heard::Cleared);
    }
}

fn listened(capacity: u64) -> (PrefixStore, Arc<Recorder>) {
    let mut s = PrefixStore::new(capacity, Arc::new(LruPolicy::new()));
    let rec = Arc::new(Recorder::default());
    s.set_listener(Some(rec.clone()));
    (s, rec)
}

#[test]
fn the_listener_hears_only_the_blocks_an_insertion_keeps() {
    let (mut s, rec) = listened(100 * BLOCK);
    let a = toks(56, 0);
    let h = block_hashes(&a);
    s.insert(&a[..40], &cache_of(40), 0).unwrap();
    assert_eq!(rec.take(), [Heard::Stored(h[..2].to_vec())]);
    // The same prompt, longer: only its new block.
    s.insert(&a, &cache_of(56), 0).unwrap();
    assert_eq!(rec.take(), [Heard::Stored(vec![h[2]])]);
    s.insert(&a, &cache_of(56), 0).unwrap();
    assert_eq!(rec.take(), []);
    // A branch off the first block: its parent comes first in the listing.
    let mut b = a.clone();
    b[20] = 9999;
    let hb = block_hashes(&b);
    s.insert(&b[..32], &cache_of(32), 0).unwrap();
    assert_eq!(rec.take(), [Heard::Stored(vec![hb[1]])]);
    let keys = s.keys();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], h[0]);
    assert_eq!(keys[3], h[2]);
    // A refused block is never reported.
    s.set_policy(Arc::new(Refuse));
    s.insert(&toks(16, 5), &cache_of(16), 0).unwrap();
    assert_eq!(rec.take(), []);
}

#[test]
fn the_listener_hears_evictions_with_their_cascades() {
    let (mut s, rec) = listened(3 * BLOCK);
    let a = toks(48, 0);
    let ha = block_hashes(&a);
    s.insert(&a, &cache_of(48), 0).unwrap();
    assert_eq!(rec.take(), [Heard::Stored(ha.clone())]);
    // LRU picks a's first block; its descendants go with it, in the same event.
    let b = toks(16, 1);
    s.insert(&b, &cache_of(16), 0).unwrap();
    assert_eq!(rec.take(), [Heard::Removed(ha), Heard::Stored(block_hashes(&b))]);
    assert_eq!(s.keys(), block_hashes(&b));
}

#[test]
fn blocks_an_insertion_evicts_again_are_reported_stored_first() {
    let (mut s, rec) = listened(2 * BLOCK);
    let a = toks(48, 0);
    let ha = block_hashes(&a);
    s.insert(&a, &cache_of(48), 0).unwrap();
    // The third block evicts the oldest, a's first, which takes the second with it; the
    // third then has no parent and is refused, never reported.
    assert_eq!(rec.take(), [Heard::Stored(ha[..2].to_vec()), Heard::Removed(ha[..2].to_vec())]);
    assert!(s.keys().is_empty());
    assert_eq!(s.stats().rejected, 1);
}

#[test]
fn a_flush_is_one_cleared_call() {
    let (mut s, rec) = listened(100 * BLOCK);
    s.insert(&toks(48, 0), &cache_of(48), 0).unwrap();
    rec.take();
    s.flush();
    assert_eq!(rec.take(), [Heard::Cleared]);
    assert!(s.keys().is_empty());
    s.set_listener(None);
    s.insert(&toks(48, 0), &cache_of(48), 0).unwrap();
    assert_eq!(rec.take(), []);
}
