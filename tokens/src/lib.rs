//! locus-tokens: GPT-2's tokenizer and the block-hash scheme that workers and routers share.
//! Its one job is that wire format: the token ids a prompt becomes and the names of its
//! blocks of tokens, so that a router predicts exactly the keys a worker's prefix store
//! uses. It imports no other locus crate, so a router can depend on it without the model.
//!
//! ```
//! use locus_tokens::{BLOCK_TOKENS, Tokenizer, block_hashes};
//! let ids = Tokenizer::new().encode(&"Hello world. ".repeat(8));
//! assert_eq!(block_hashes(&ids).len(), ids.len() / BLOCK_TOKENS);
//! ```
#![deny(missing_docs)]

pub mod blocks;
pub mod tokenizer;

pub use blocks::{BLOCK_HASH_SEED, BLOCK_TOKENS, block_hash, block_hashes};
pub use tokenizer::{EOS_TOKEN, MAX_RUN_BYTES, Tokenizer, Utf8Stream, VOCAB_SIZE};
