//! What the scheduler loop and the engine's callers share: the model, the tokenizer, what
//! runs, and the prefix store behind its lock, with the two ways a sequence meets the store
//! (starting from its longest cached prefix, offering its new blocks).

use locus_tokens::{BLOCK_TOKENS, Tokenizer};
use parking_lot::{Mutex, MutexGuard};

use crate::gpt2::{Gpt2, KvCache};
use crate::prefix::{PrefixHit, PrefixStore};
use crate::request::ModelInfo;

/// What the scheduler loop and callers share: the model, the tokenizer, the prefix store.
pub(crate) struct Shared {
    pub(crate) model: Gpt2,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) info: ModelInfo,
    // A lock without poisoning: generation state lives outside it, so a panicked request
    // leaves nothing half-done and the store keeps serving.
    store: Mutex<PrefixStore>,
}

impl Shared {
    /// Shares `model`, which `info` describes, with `store` as its prefix store.
    pub(crate) fn new(model: Gpt2, info: ModelInfo, store: PrefixStore) -> Self {
        Self { model, tokenizer: Tokenizer::new(), info, store: Mutex::new(store) }
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, PrefixStore> {
        self.store.lock()
    }

    /// A cache for `ids` with room for `positions` tokens, starting from the longest prefix
    /// the store holds or `pinned` holds (at most all but the last token, whose logits must
    /// be computed), and that prefix's length. `use_cache` false skips the store.
    pub(crate) fn cache_for(
        &self,
        ids: &[u32],
        positions: usize,
        use_cache: bool,
        pinned: Option<&PrefixHit>,
    ) -> candle_core::Result<(KvCache, usize)> {
        let max = ids.len() - 1;
        let mut hit = use_cache.then(|| self.store().lookup(ids, max));
        if let Some(p) = pinned {
            let blocks = p.tokens.min(max) / BLOCK_TOKENS;
            if blocks * BLOCK_TOKENS > hit.as_ref().map_or(0, |h| h.tokens) {
                let layers = p.layers.iter().map(|l| l[..blocks].to_vec()).collect();
                hit = Some(PrefixHit { tokens: blocks * BLOCK_TOKENS, layers });
            }
        }
        match hit {
            // Copied outside the store's lock: the block tensors are shared handles.
            Some(hit) if hit.tokens > 0 => {
                Ok((KvCache::from_blocks(&hit.layers, positions)?, hit.tokens))
            }
            _ => Ok((KvCache::with_capacity(self.info.config.n_layer, positions), 0)),
        }
    }

    /// Offers the full blocks of `ids` that `cache` holds beyond the `cached` prefix to the
    /// store.
    pub(crate) fn keep_prefix(
        &self,
        ids: &[u32],
        cache: &KvCache,
        cached: usize,
    ) -> candle_core::Result<()> {
        self.store().insert(ids, cache, cached / BLOCK_TOKENS)
    }
}
