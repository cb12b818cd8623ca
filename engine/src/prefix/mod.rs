//! Prefix KV store: keys and values of processed prompts, kept in blocks of
//! [`BLOCK_TOKENS`] tokens named by chained hashes (block `i`'s key hashes block `i-1`'s key and
//! its own tokens), as Dynamo's KV router and llm-d do. A block is only valid after all its
//! ancestors, so a prompt reuses the longest chain of resident blocks from its start.
//!
//! The store ([`PrefixStore`]) keeps the bytes; a [`CachePolicy`] decides what is admitted
//! and what is evicted. Sizes are exact: a block's size is the bytes of the K and V tensors it
//! holds. A [`KvListener`] hears of every block stored and dropped, so that a router can track
//! which worker holds which prefix.
//!
//! # Block hashes (a wire format)
//!
//! The keys are [`block_hashes`] of the prompt's token ids, which routers compute too: the
//! scheme is fixed and portable, and is defined and pinned in [`locus_tokens::blocks`] (the
//! crate routers share with workers). It is re-exported here, where the keys are used.

mod policy;
mod store;

pub use locus_tokens::blocks::{BLOCK_HASH_SEED, BLOCK_TOKENS, block_hash, block_hashes};
pub use policy::{CacheEntry, CachePolicy, LruPolicy};
pub(crate) use store::PrefixHit;
pub use store::{CacheStats, KvListener, PrefixStore, block_bytes};
