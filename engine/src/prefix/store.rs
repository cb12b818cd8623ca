//! The prefix store itself: blocks of K/V keyed by their chained hashes, within a byte
//! budget, told what to keep by a [`CachePolicy`] and reporting every change to a
//! [`KvListener`].

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use locus_tokens::blocks::{BLOCK_TOKENS, block_hashes};

use super::policy::{CacheEntry, CachePolicy};
use crate::gpt2::KvCache;

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
    /// Blocks inserted that another worker computed (counted in `inserted` too).
    pub imported: u64,
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
#[derive(Clone)]
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

    /// Keys of the longest resident chain from the start of `tokens`, at most `blocks` long,
    /// whose stored tokens and parents equal the prompt's.
    pub(crate) fn resident_chain(&self, tokens: &[u32], blocks: usize) -> Vec<u64> {
        let usable = blocks.min(tokens.len() / BLOCK_TOKENS);
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
        matched
    }

    /// The longest resident chain covering at most `max_tokens` of `tokens`; reports hits.
    pub(crate) fn lookup(&mut self, tokens: &[u32], max_tokens: usize) -> PrefixHit {
        let matched = self.resident_chain(tokens, max_tokens / BLOCK_TOKENS);
        let n_layer = matched.first().map_or(0, |k| self.blocks[k].kv.len());
        let mut layers = vec![Vec::with_capacity(matched.len()); n_layer];
        for key in &matched {
            for (l, kv) in self.blocks[key].kv.iter().enumerate() {
                layers[l].push(kv.clone());
            }
        }
        for key in matched.iter().rev() {
            self.touch(*key);
        }
        let hit = matched.len() * BLOCK_TOKENS;
        self.stats.hit_tokens += hit as u64;
        PrefixHit { tokens: hit, layers }
    }

    /// Marks `key` used now, for the store's clock and the policy.
    fn touch(&mut self, key: u64) {
        self.clock += 1;
        if let Some(b) = self.blocks.get_mut(&key) {
            b.last_use = self.clock;
        }
        self.policy.hit(key);
    }

    /// The resident blocks another worker asked for by its prompt's `tokens`: the longest
    /// chain from their start whose stored tokens equal them, each with its key and its
    /// per-layer K and V. The tensors are shared handles: holding them is the transfer's
    /// lease, since a block evicted meanwhile keeps its bytes until they are dropped. Not a
    /// hit (the store's hit counts are this worker's prompts), but the blocks count as used.
    pub(crate) fn export(&mut self, tokens: &[u32]) -> Vec<(u64, Vec<(Tensor, Tensor)>)> {
        let matched = self.resident_chain(tokens, usize::MAX);
        for key in matched.iter().rev() {
            self.touch(*key);
        }
        matched.into_iter().map(|k| (k, self.blocks[&k].kv.clone())).collect()
    }

    /// Offers blocks computed by another worker for the start of `tokens` (block `i` of
    /// `blocks` is the prompt's block `i`, verified by the caller) to the store, through the
    /// policy's `admit` and with the listener told, as computed blocks are. Returns how
    /// many of them are resident after.
    pub(crate) fn import(
        &mut self,
        tokens: &[u32],
        blocks: &[Vec<(Tensor, Tensor)>],
    ) -> candle_core::Result<usize> {
        let n = blocks.len().min(tokens.len() / BLOCK_TOKENS);
        let tokens = &tokens[..n * BLOCK_TOKENS];
        let before = self.stats.inserted;
        let mut kept = Vec::new();
        let result = self.insert_blocks(tokens, n, 0, |i| Ok(blocks[i].clone()), &mut kept);
        self.report_stored(&mut kept);
        self.stats.imported += self.stats.inserted - before;
        result?;
        Ok(self.resident_chain(tokens, n).len())
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
        let n_full = tokens.len().min(cache.seq_len()) / BLOCK_TOKENS;
        let block = |i: usize| slice_block(cache, i * BLOCK_TOKENS);
        let result = self.insert_blocks(tokens, n_full, from, block, &mut kept);
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

    /// Offers blocks `from..n_full` of `tokens`, whose K and V `block(i)` gives.
    fn insert_blocks(
        &mut self,
        tokens: &[u32],
        n_full: usize,
        from: usize,
        block: impl Fn(usize) -> candle_core::Result<Vec<(Tensor, Tensor)>>,
        kept: &mut Vec<u64>,
    ) -> candle_core::Result<()> {
        if self.capacity == 0 {
            return Ok(());
        }
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
            let kv = block(i)?;
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

#[cfg(test)]
mod tests;
