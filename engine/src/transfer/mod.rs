//! KV on the move: one worker's resident prefix blocks sent to another, so that a request
//! placed for load need not recompute a prefix another worker holds.
//!
//! The holder answers an importer's token ids with the K and V of the longest chain of
//! resident blocks whose stored tokens equal them ([`Engine::export_prefix`]); the importer
//! checks the stream ([`wire::Decoder`]: the holder's [`KvFingerprint`] first, then each
//! block's checksum over its own block hashes) and offers the verified blocks to its store
//! ([`Engine::import_prefix`]), which pins them for the request that asked.
//!
//! [`Engine::export_prefix`]: crate::Engine::export_prefix
//! [`Engine::import_prefix`]: crate::Engine::import_prefix

mod fingerprint;
pub mod wire;

use candle_core::Tensor;
pub use fingerprint::{FINGERPRINT_BYTES, KV_LAYOUT_VERSION, KvFingerprint};

use crate::prefix::PrefixHit;

/// Blocks imported for one request, held until it has used them: its own handles on the
/// K and V, so that the store evicting them meanwhile costs the request nothing.
#[derive(Clone)]
pub struct ImportedPrefix {
    pub(crate) hit: PrefixHit,
}

impl ImportedPrefix {
    /// Prompt tokens whose K and V it holds.
    pub fn tokens(&self) -> usize {
        self.hit.tokens
    }

    /// Arranges blocks (each per layer) as the store's hits are (per layer, each per block).
    pub(crate) fn from_blocks(blocks: &[Vec<(Tensor, Tensor)>], block_tokens: usize) -> Self {
        let n_layer = blocks.first().map_or(0, Vec::len);
        let layers = (0..n_layer).map(|l| blocks.iter().map(|b| b[l].clone()).collect()).collect();
        Self { hit: PrefixHit { tokens: blocks.len() * block_tokens, layers } }
    }
}
