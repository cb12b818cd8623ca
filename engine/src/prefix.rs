//! Prefix KV store: keys and values of processed prompts, kept in blocks of
//! [`BLOCK_TOKENS`] tokens named by chained hashes (block `i`'s key hashes block `i-1`'s key and
//! its own tokens), as Dynamo's KV router and llm-d do. A block is only valid after all its
//! ancestors, so a prompt reuses the longest chain of resident blocks from its start.
//!
//! The store keeps the bytes; a [`CachePolicy`] decides what is admitted and what is evicted.
//! Sizes are exact: a block's size is the bytes of the K and V tensors it holds. A
//! [`KvListener`] hears of every block stored and dropped, so that a router can track which
//! worker holds which prefix.
//!
//! # Block hashes (a wire format)
//!
//! The keys are [`block_hashes`] of the prompt's token ids, which routers compute too: the
//! scheme is fixed and portable, and is defined and pinned in [`locus_tokens::blocks`] (the
//! crate routers share with workers). It is re-exported here, where the keys are used.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use lru::LruCache;
use parking_lot::Mutex;

use crate::gpt2::KvCache;

pub use locus_tokens::blocks::{BLOCK_HASH_SEED, BLOCK_TOKENS, block_hash, block_hashes};

/// The decision maker for admission and eviction (in production a wasm component; see
/// [`LruPolicy`] for the native default). Protocol, all calls made under the store's lock:
/// - insertion: `admit(key, size)`; when admitted and the store is short of space,
///   `evict(bytes_short)` and the store drops the returned keys (unknown keys are ignored);
///   when still short, the new block is dropped and `removed(key)` is called;
/// - reuse: `hit(key)` for each reused block, deepest first, so the first block of a chain is
///   the most recently used (a recency policy then evicts chains from their tails);
/// - `removed(key)` also tells of every block dropped without the policy choosing it: the
///   descendants of an evicted block (unreachable without it) and everything on `flush`.
pub trait CachePolicy: Send + Sync {
    /// Whether to keep a new block of `size` bytes.
    fn admit(&self, key: u64, size: u64) -> bool;
    /// A resident block was reused.
    fn hit(&self, key: u64);
    /// Keys to drop to free at least `bytes_needed` bytes (fewer is allowed).
    fn evict(&self, bytes_needed: u64) -> Vec<u64>;
    /// A block left the store without being chosen by `evict`.
    fn removed(&self, key: u64);
}

/// Least-recently-used policy: admits everything, evicts the oldest blocks first.
pub struct LruPolicy {
    // Unbounded: the store enforces the byte budget; this only keeps the order and sizes.
    // A lock without poisoning: a panic elsewhere cannot leave the order inconsistent, so
    // the policy keeps serving after one.
    order: Mutex<LruCache<u64, u64>>,
}

impl Default for LruPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl LruPolicy {
    /// An empty policy.
    pub fn new() -> Self {
        Self { order: Mutex::new(LruCache::unbounded()) }
    }

    /// A policy that already knows `entries` (oldest first), e.g. handed over on a swap.
    pub fn with_entries(entries: &[CacheEntry]) -> Self {
        let p = Self::new();
        for e in entries {
            p.admit(e.key, e.size);
        }
        p
    }
}

impl CachePolicy for LruPolicy {
    fn admit(&self, key: u64, size: u64) -> bool {
        self.order.lock().put(key, size);
        true
    }
    fn hit(&self, key: u64) {
        self.order.lock().get(&key);
    }
    fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        let mut order = self.order.lock();
        let (mut freed, mut keys) = (0u64, Vec::new());
        while freed < bytes_needed {
            match order.pop_lru() {
                Some((k, size)) => {
                    freed += size;
                    keys.push(k);
                }
                None => break,
            }
        }
        keys
    }
    fn removed(&self, key: u64) {
        self.order.lock().pop(&key);
    }
}

/// A resident block, as listed for a policy swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    /// Chained-hash key.
    pub key: u64,
    /// Bytes of K and V held.
    pub size: u64,
    /// Logical time of the last insertion or reuse (larger is more recent).
    pub last_use: u64,
}

/// Occupancy and counters of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Resident blocks.
    pub entries: usize,
    /// Bytes held (sum of block sizes).
    pub bytes: u64,
    /// Hard budget.
    pub capacity_bytes: u64,
    /// Prompt tokens served from the store, over all lookups.
    pub hit_tokens: u64,
    /// Blocks inserted.
    pub inserted: u64,
    /// Blocks dropped by the policy's `evict`, by cascade, or by flush.
    pub dropped: u64,
    /// Blocks the policy refused, or that did not fit after eviction.
    pub rejected: u64,
}

struct Block {
    parent: Option<u64>,
    /// Blocks before this one in its chain (0 for a prompt's first block).
    depth: usize,
    tokens: [u32; BLOCK_TOKENS],
    /// Per layer: K and V, each `[1, n_head, BLOCK_TOKENS, head_dim]`, owning their storage.
    kv: Vec<(Tensor, Tensor)>,
    size: u64,
    last_use: u64,
    children: Vec<u64>,
}

/// Hears of every change to the store's resident blocks, in the store's order: each call is
/// made under the store's lock (the engine holds the store behind a mutex), so it must be
/// quick and must not call back into the engine's cache methods.
pub trait KvListener: Send + Sync {
    /// Blocks now resident, parents before children: those one insertion kept (only blocks
    /// that were not resident before).
    fn stored(&self, hashes: &[u64]);
    /// Blocks dropped by one operation: the policy's eviction victims and their descendants,
    /// or a block dropped with its descendants.
    fn removed(&self, hashes: &[u64]);
    /// Every block was dropped (a flush).
    fn cleared(&self);
}

/// The store. Not synchronised itself: the engine holds it behind a mutex.
pub struct PrefixStore {
    blocks: HashMap<u64, Block>,
    policy: Arc<dyn CachePolicy>,
    capacity: u64,
    used: u64,
    clock: u64,
    stats: CacheStats,
    listener: Option<Arc<dyn KvListener>>,
}

/// Reused prefix: its length in tokens, keys, and per-layer block tensors to concatenate.
pub(crate) struct PrefixHit {
    pub tokens: usize,
    pub layers: Vec<Vec<(Tensor, Tensor)>>,
}

impl PrefixStore {
    /// An empty store of `capacity` bytes deciding through `policy`.
    pub fn new(capacity: u64, policy: Arc<dyn CachePolicy>) -> Self {
        Self {
            blocks: HashMap::new(),
            policy,
            capacity,
            used: 0,
            clock: 0,
            stats: CacheStats { capacity_bytes: capacity, ..Default::default() },
            listener: None,
        }
    }

    /// Installs (or with `None` removes) the listener told of every block stored and
    /// dropped from now on.
    pub fn set_listener(&mut self, listener: Option<Arc<dyn KvListener>>) {
        self.listener = listener;
    }

    /// Hashes of the resident blocks, every parent before its children (by depth in the
    /// chain, then by hash), so that replaying them as one `stored` event is valid.
    pub fn keys(&self) -> Vec<u64> {
        let mut v: Vec<(usize, u64)> = self.blocks.iter().map(|(&k, b)| (b.depth, k)).collect();
        v.sort_unstable();
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// Replaces the policy. Resident blocks stay; give the new policy [`Self::entries`] first if
    /// it should know them.
    pub fn set_policy(&mut self, policy: Arc<dyn CachePolicy>) {
        self.policy = policy;
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.blocks.len(), bytes: self.used, ..self.stats }
    }

    /// Resident blocks, least recently used first.
    pub fn entries(&self) -> Vec<CacheEntry> {
        let mut v: Vec<CacheEntry> = self
            .blocks
            .iter()
            .map(|(&key, b)| CacheEntry { key, size: b.size, last_use: b.last_use })
            .collect();
        v.sort_by_key(|e| e.last_use);
        v
    }

    /// Drops every block, telling the policy of each and the listener once (`cleared`).
    pub fn flush(&mut self) {
        for key in self.blocks.keys() {
            self.policy.removed(*key);
        }
        self.stats.dropped += self.blocks.len() as u64;
        self.blocks.clear();
        self.used = 0;
        if let Some(l) = &self.listener {
            l.cleared();
        }
    }

    /// The longest resident chain covering at most `max_tokens` of `tokens`; reports hits.
    pub(crate) fn lookup(&mut self, tokens: &[u32], max_tokens: usize) -> PrefixHit {
        let usable = max_tokens.min(tokens.len()) / BLOCK_TOKENS;
        let keys = block_hashes(&tokens[..usable * BLOCK_TOKENS]);
        let mut matched = Vec::new();
        let mut parent = None;
        for (i, key) in keys.iter().enumerate() {
            match self.blocks.get(key) {
                // Tokens and parent are compared so a hash collision can never serve wrong K/V.
                Some(b)
                    if b.parent == parent
                        && b.tokens[..] == tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS] =>
                {
                    matched.push(*key);
                    parent = Some(*key);
                }
                _ => break,
            }
        }
        let n_layer = matched.first().map_or(0, |k| self.blocks[k].kv.len());
        let mut layers = vec![Vec::with_capacity(matched.len()); n_layer];
        for key in &matched {
            for (l, kv) in self.blocks[key].kv.iter().enumerate() {
                layers[l].push(kv.clone());
            }
        }
        for key in matched.iter().rev() {
            self.clock += 1;
            if let Some(b) = self.blocks.get_mut(key) {
                b.last_use = self.clock;
            }
            self.policy.hit(*key);
        }
        let hit = matched.len() * BLOCK_TOKENS;
        self.stats.hit_tokens += hit as u64;
        PrefixHit { tokens: hit, layers }
    }

    /// Offers the full blocks of `tokens` (whose K/V `cache` holds) from block `from` on.
    /// The listener hears of the blocks kept in one `stored` call, after the `removed` call
    /// of any eviction they caused; an eviction in the middle of the chain first reports the
    /// blocks kept before it, so the listener's order is always the store's.
    pub(crate) fn insert(
        &mut self,
        tokens: &[u32],
        cache: &KvCache,
        from: usize,
    ) -> candle_core::Result<()> {
        let mut kept = Vec::new();
        let result = self.insert_blocks(tokens, cache, from, &mut kept);
        self.report_stored(&mut kept);
        result
    }

    /// Tells the listener of the blocks in `kept` (if any) and empties it.
    fn report_stored(&self, kept: &mut Vec<u64>) {
        if let (Some(l), false) = (&self.listener, kept.is_empty()) {
            l.stored(kept);
        }
        kept.clear();
    }

    fn insert_blocks(
        &mut self,
        tokens: &[u32],
        cache: &KvCache,
        from: usize,
        kept: &mut Vec<u64>,
    ) -> candle_core::Result<()> {
        if self.capacity == 0 {
            return Ok(());
        }
        let n_full = tokens.len().min(cache.seq_len()) / BLOCK_TOKENS;
        let keys = block_hashes(&tokens[..n_full * BLOCK_TOKENS]);
        for i in from..n_full {
            let key = keys[i];
            let parent = if i == 0 { None } else { Some(keys[i - 1]) };
            if parent.is_some_and(|p| !self.blocks.contains_key(&p)) {
                break; // chain broken: later blocks would be unreachable
            }
            if self.blocks.contains_key(&key) {
                continue;
            }
            let kv = slice_block(cache, i * BLOCK_TOKENS)?;
            let size: u64 = kv.iter().map(|(k, v)| tensor_bytes(k) + tensor_bytes(v)).sum();
            if !self.policy.admit(key, size) {
                self.stats.rejected += 1;
                break;
            }
            let free = self.capacity.saturating_sub(self.used);
            if size > free {
                let victims = self.policy.evict(size - free);
                let evicted_self = victims.contains(&key);
                let mut dropped = Vec::new();
                for victim in victims {
                    self.drop_chain(victim, false, &mut dropped);
                }
                if dropped.iter().any(|k| kept.contains(k)) {
                    // Blocks this insertion kept are gone again: the listener must hear of
                    // them being stored before it hears of them being removed.
                    self.report_stored(kept);
                }
                if let (Some(l), false) = (&self.listener, dropped.is_empty()) {
                    l.removed(&dropped);
                }
                if evicted_self {
                    // The policy already considers the new block gone: keeping it would leave
                    // bytes the policy can never evict again.
                    self.stats.rejected += 1;
                    break;
                }
            }
            let parent_gone = parent.is_some_and(|p| !self.blocks.contains_key(&p));
            if size > self.capacity.saturating_sub(self.used) || parent_gone {
                self.policy.removed(key);
                self.stats.rejected += 1;
                break;
            }
            self.clock += 1;
            let mut block_tokens = [0u32; BLOCK_TOKENS];
            block_tokens.copy_from_slice(&tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS]);
            if let Some(p) = parent.and_then(|p| self.blocks.get_mut(&p)) {
                p.children.push(key);
            }
            self.blocks.insert(
                key,
                Block {
                    parent,
                    depth: i,
                    tokens: block_tokens,
                    kv,
                    size,
                    last_use: self.clock,
                    children: Vec::new(),
                },
            );
            self.used += size;
            self.stats.inserted += 1;
            kept.push(key);
        }
        Ok(())
    }

    /// Removes `key` and its descendants, appending each removed key to `dropped` (parents
    /// first); the policy is told of every removal it did not choose.
    fn drop_chain(&mut self, key: u64, notify_root: bool, dropped: &mut Vec<u64>) {
        let Some(root) = self.blocks.get(&key) else {
            return;
        };
        if let Some(p) = root.parent.and_then(|p| self.blocks.get_mut(&p)) {
            p.children.retain(|&c| c != key);
        }
        let mut stack = vec![(key, notify_root)];
        while let Some((k, notify)) = stack.pop() {
            if let Some(b) = self.blocks.remove(&k) {
                self.used -= b.size;
                self.stats.dropped += 1;
                dropped.push(k);
                if notify {
                    self.policy.removed(k);
                }
                stack.extend(b.children.into_iter().map(|c| (c, true)));
            }
        }
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

/// Copies one block out of `cache`: `force_contiguous` always allocates, so the block owns
/// exactly its bytes and never pins the whole sequence's buffer.
fn slice_block(cache: &KvCache, start: usize) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some((k, v)) = cache.layer(i) {
        out.push((
            k.narrow(2, start, BLOCK_TOKENS)?.force_contiguous()?,
            v.narrow(2, start, BLOCK_TOKENS)?.force_contiguous()?,
        ));
        i += 1;
    }
    Ok(out)
}

/// Bytes one block of a model takes: K and V of every layer, f32.
pub fn block_bytes(n_layer: usize, n_embd: usize) -> u64 {
    (n_layer * 2 * BLOCK_TOKENS * n_embd * 4) as u64
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<LruPolicy>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

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
}
