//! locus-engine: GPT-2-family inference on CPU with candle, with a prefix KV store whose
//! admission and eviction are decided by an external [`CachePolicy`]. That is its one job;
//! it imports locus-tokens (the tokenizer and the block hashes it shares with routers, which
//! it re-exports so that its callers see one API) and no host code.
//!
//! ```no_run
//! use locus_engine::{Engine, EngineOptions, GenerateRequest, ModelSource};
//! let engine = Engine::load(&ModelSource::Synthetic, EngineOptions::default())?;
//! let out = engine.generate(&GenerateRequest { prompt: "Hello".into(), ..Default::default() })?;
//! println!("{} ({} of {} prompt tokens cached)", out.text, out.cached_tokens, out.prompt_tokens);
//! # Ok::<(), locus_engine::EngineError>(())
//! ```
#![deny(missing_docs)]

mod caller;
mod decode_attention;
mod engine;
mod error;
pub mod gpt2;
pub mod prefix;
pub mod quant;
mod request;
mod scheduler;
mod shared;
pub mod skinny;
pub mod source;
pub mod transfer;

/// GPT-2's tokenizer, from locus-tokens (kept at this path for the engine's callers).
pub use locus_tokens::tokenizer;

pub use engine::{Engine, EngineOptions};
pub use error::{EngineError, Result};
pub use prefix::{BLOCK_TOKENS, CacheEntry, CachePolicy, CacheStats, KvListener, LruPolicy};
pub use quant::WeightFormat;
pub use request::{FinishReason, GenerateRequest, Generation, ModelInfo};
pub use scheduler::{Limits, SchedulerStats};
pub use source::ModelSource;
pub use tokenizer::Tokenizer;
