//! The engine a worker serves from: model + tokenizer + prefix KV store, safe to share across
//! request threads.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::LogitsProcessor;
use locus_tokens::{BLOCK_TOKENS, Tokenizer};
use parking_lot::Mutex;

use crate::caller;
use crate::error::{EngineError, Result};
use crate::gpt2::{Config, Gpt2, KvCache};
use crate::prefix::{
    CacheEntry, CachePolicy, CacheStats, KvListener, LruPolicy, PrefixStore, block_bytes,
};
use crate::quant::WeightFormat;
use crate::request::{self, GenerateRequest, Generation, ModelInfo};
use crate::scheduler::{self, Counters, Handle, Limits, SchedulerStats, Submission};
use crate::shared::Shared;
use crate::source::{self, ModelSource, Weights};
use crate::transfer::wire::KvBlock;
use crate::transfer::{ImportedPrefix, KvFingerprint};

/// Options of [`Engine::load`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Hard budget of the prefix KV store in bytes; 0 disables prefix reuse.
    pub prefix_cache_bytes: u64,
    /// How the batch shares the machine: batch size, prefill chunk, running KV budget,
    /// queue deadline.
    pub limits: Limits,
    /// How the projection weights are held (f32 by default; see [`WeightFormat`]).
    pub weights: WeightFormat,
}

impl Default for EngineOptions {
    /// Prefix store 256 MiB: about 7,000 tokens of distilgpt2 K/V (36 KiB per token).
    fn default() -> Self {
        Self {
            prefix_cache_bytes: 256 << 20,
            limits: Limits::default(),
            weights: WeightFormat::default(),
        }
    }
}

/// Model, tokenizer, prefix store and the scheduler that batches generations. `Send + Sync`:
/// any number of threads may generate at once; one loop owns the model and runs their
/// sequences together (see [`Limits`]).
pub struct Engine {
    shared: Arc<Shared>,
    scheduler: Handle,
    seeds: AtomicU64,
    fingerprint: KvFingerprint,
}

impl Engine {
    /// The model and stores its scheduler loop shares, for step-by-step scheduler tests.
    #[cfg(test)]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Resolves `source` (see [`ModelSource`]) and loads it on the CPU in f32.
    pub fn load(source: &ModelSource, options: EngineOptions) -> Result<Self> {
        let started = Instant::now();
        let device = Device::Cpu;
        let (weights, description) = source::resolve(source, &device)?;
        let (config, tensors) = match weights {
            Weights::Tensors { config, tensors } => (config, tensors),
            Weights::Files { config, safetensors } => {
                (config, candle_core::safetensors::load(&safetensors, &device)?)
            }
        };
        let engine = Self::build(&config, tensors, description, source.served_name(), options)?;
        tracing::info!(
            model = %engine.shared.info.source,
            layers = engine.shared.info.config.n_layer,
            width = engine.shared.info.config.n_embd,
            parameters = engine.shared.info.parameters,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(engine)
    }

    /// Builds an engine from named tensors (Hugging Face names, with or without `transformer.`).
    pub fn from_tensors(
        config: &Config,
        tensors: HashMap<String, Tensor>,
        description: String,
        options: EngineOptions,
    ) -> Result<Self> {
        Self::build(config, tensors, description, "gpt2".into(), options)
    }

    fn build(
        config: &Config,
        tensors: HashMap<String, Tensor>,
        description: String,
        name: String,
        options: EngineOptions,
    ) -> Result<Self> {
        config.validate().map_err(EngineError::ModelUnavailable)?;
        let limits = options.limits;
        if limits.max_batch == 0 || limits.prefill_chunk == 0 || limits.yield_chunk == 0 {
            return Err(EngineError::InvalidParam {
                field: "limits",
                reason: "max_batch, prefill_chunk and yield_chunk must be at least 1".into(),
            });
        }
        let fingerprint = KvFingerprint::of(config, &tensors, options.weights)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = Gpt2::load(config, options.weights, vb)?;
        let info = ModelInfo {
            name,
            source: description,
            config: config.clone(),
            weights: options.weights,
            parameters: model.num_parameters(),
            kv_bytes_per_token: block_bytes(config.n_layer, config.n_embd) / BLOCK_TOKENS as u64,
        };
        let full_context = info.kv_bytes_per_token * config.n_positions as u64;
        if limits.kv_bytes < full_context {
            tracing::warn!(
                kv_bytes = limits.kv_bytes,
                full_context_bytes = full_context,
                "the running KV budget holds less than one full context: longer requests are refused"
            );
        }
        let store = PrefixStore::new(options.prefix_cache_bytes, Arc::new(LruPolicy::new()));
        let shared = Arc::new(Shared::new(model, info, store));
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let (loop_shared, loop_counters, loop_limits) =
            (shared.clone(), counters.clone(), limits.clone());
        std::thread::Builder::new()
            .name("locus-scheduler".into())
            .spawn(move || scheduler::run(loop_shared, rx, loop_limits, loop_counters))?;
        Ok(Self {
            shared,
            scheduler: Handle { tx: Mutex::new(tx), counters, limits },
            seeds: AtomicU64::new(RandomState::new().hash_one(0u8)),
            fingerprint,
        })
    }

    /// The model itself, for measurements that drive its forward passes directly (a
    /// forward pass run beside the scheduler shares the cores with it).
    pub fn model(&self) -> &Gpt2 {
        &self.shared.model
    }

    /// The scheduler's settings.
    pub fn limits(&self) -> &Limits {
        &self.scheduler.limits
    }

    /// Waiting and running requests, KV reserved, tokens generated, cancellations.
    pub fn scheduler_stats(&self) -> SchedulerStats {
        self.scheduler.counters.snapshot(&self.scheduler.limits)
    }

    /// Which model runs and its architecture.
    pub fn model_info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// One line saying which model runs.
    pub fn describe(&self) -> String {
        let info = &self.shared.info;
        let c = &info.config;
        format!(
            "{} [{} layers, {} wide, {} heads, {} vocab, {} positions, {:.1}M parameters, {} weights]",
            info.source,
            c.n_layer,
            c.n_embd,
            c.n_head,
            c.vocab_size,
            c.n_positions,
            info.parameters as f64 / 1e6,
            info.weights
        )
    }

    /// The GPT-2 tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// Replaces the prefix store's policy; resident blocks stay. Hand the new policy
    /// [`Self::cache_entries`] first if it should know them.
    pub fn set_cache_policy(&self, policy: Arc<dyn CachePolicy>) {
        self.shared.store().set_policy(policy);
    }

    /// Prefix store occupancy and counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.store().stats()
    }

    /// Resident prefix blocks, least recently used first.
    pub fn cache_entries(&self) -> Vec<CacheEntry> {
        self.shared.store().entries()
    }

    /// Empties the prefix store (the policy is told of each block, the KV listener once).
    pub fn flush_cache(&self) {
        self.shared.store().flush();
    }

    /// Installs (or with `None` removes) the listener told of every prefix block stored and
    /// dropped; see [`KvListener`]. Replaces any listener installed before.
    pub fn set_kv_listener(&self, listener: Option<Arc<dyn KvListener>>) {
        self.shared.store().set_listener(listener);
    }

    /// Runs `f` with the hashes of the resident prefix blocks (parents before children)
    /// while holding the store's lock: no block is stored or dropped, and so no listener call
    /// is made, until `f` returns. A caller that starts listening inside `f` thus gets a
    /// snapshot and the events after it with nothing missed or counted twice. Keep `f` short:
    /// generations wait on the same lock.
    pub fn with_resident_blocks<R>(&self, f: impl FnOnce(&[u64]) -> R) -> R {
        let store = self.shared.store();
        f(&store.keys())
    }

    /// Generates a completion of `req.prompt`.
    pub fn generate(&self, req: &GenerateRequest) -> Result<Generation> {
        self.generate_stream(req, |_| {})
    }

    /// Like [`Self::generate`], calling `on_text` with each new piece of text as soon as it is
    /// whole (a piece never splits a UTF-8 character, so one call can cover several tokens).
    pub fn generate_stream(
        &self,
        req: &GenerateRequest,
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let ids = self.prepare(req)?;
        self.generate_from_ids(&ids, req, on_text)
    }

    /// Like [`Self::generate_stream`] from token ids; `req.prompt` is ignored.
    pub fn generate_from_ids(
        &self,
        prompt_ids: &[u32],
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.generate_until(prompt_ids, req, |piece, _| {
            if !piece.is_empty() {
                on_text(piece);
            }
            ControlFlow::Continue(())
        })
    }

    /// Tokenizes `req.prompt` and checks everything [`Self::generate_from_ids`] would check
    /// (parameters, vocabulary, fit in the context) without running the model, so that a
    /// server can refuse a request before it queues it or starts answering.
    pub fn prepare(&self, req: &GenerateRequest) -> Result<Vec<u32>> {
        request::validate(req)?;
        let tokenizer = &self.shared.tokenizer;
        let max = self.shared.info.config.n_positions - usize::from(req.max_new_tokens > 0);
        let limit = max * tokenizer.max_token_bytes();
        let ids = if req.prompt.len() <= limit {
            tokenizer.encode(&req.prompt)
        } else if req.truncate_left {
            // Only the tail can survive truncation: no need to tokenize the rest.
            let mut cut = req.prompt.len() - limit;
            while !req.prompt.is_char_boundary(cut) {
                cut += 1;
            }
            tokenizer.encode(&req.prompt[cut..])
        } else {
            return Err(EngineError::PromptTooLarge { bytes: req.prompt.len(), max });
        };
        self.check_ids(&ids, req)?;
        Ok(ids)
    }

    /// [`Self::prepare`] for a request given as token ids.
    pub fn check_ids(&self, ids: &[u32], req: &GenerateRequest) -> Result<()> {
        self.checked(ids, req).map(|_| ())
    }

    /// Everything that refuses a request before it runs: its parameters, [`request::fit`], and
    /// the running KV budget. Returns what `fit` returns.
    fn checked<'a>(
        &self,
        ids: &'a [u32],
        req: &GenerateRequest,
    ) -> Result<(&'a [u32], usize, usize)> {
        request::validate(req)?;
        let cfg = &self.shared.info.config;
        let (ids, truncated, max_new) =
            request::fit(cfg, ids, req.max_new_tokens, req.truncate_left)?;
        let positions = ids.len() + max_new;
        let per_token = self.shared.info.kv_bytes_per_token.max(1);
        let max = (self.scheduler.limits.kv_bytes / per_token) as usize;
        if positions > max {
            return Err(EngineError::ExceedsKvBudget { tokens: positions, max });
        }
        Ok((ids, truncated, max_new))
    }

    /// Like [`Self::generate_from_ids`], but `on_text(piece, tokens_so_far)` decides after
    /// each piece whether to go on: `Break` ends the generation at once with
    /// [`FinishReason::Aborted`](crate::FinishReason::Aborted) and frees its place in the
    /// batch at the next step. While no text arrives (queued, prefilling) it is called with an
    /// empty piece every 20 ms, so that a request whose client left is dropped before it costs
    /// more.
    ///
    /// Runs in the calling thread's time only as a waiter: the scheduler batches it with
    /// every other generation in flight.
    pub fn generate_until(
        &self,
        prompt_ids: &[u32],
        req: &GenerateRequest,
        on_text: impl FnMut(&str, usize) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.generate_with_prefix(prompt_ids, req, None, on_text)
    }

    /// [`Self::generate_until`] starting from `prefix`, blocks imported for this prompt
    /// ([`Self::import_prefix`]) when the store holds no longer prefix by then.
    pub fn generate_with_prefix(
        &self,
        prompt_ids: &[u32],
        req: &GenerateRequest,
        prefix: Option<ImportedPrefix>,
        on_text: impl FnMut(&str, usize) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let (ids, truncated, max_new) = self.checked(prompt_ids, req)?;
        // As vLLM: below 1e-5 the logits divided by it overflow; that is greedy anyway.
        let greedy = req.temperature < 1e-5;
        let seed = req
            .seed
            .unwrap_or_else(|| self.seeds.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
        let sampler = LogitsProcessor::new(
            seed,
            (!greedy).then_some(req.temperature),
            (!greedy && req.top_p < 1.0).then_some(req.top_p),
        );
        let (events, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let sub = Submission {
            ids: ids.to_vec(),
            max_new,
            sampler,
            ignore_eos: req.ignore_eos,
            stop_token_ids: req.stop_token_ids.clone(),
            priority: req.priority,
            events,
            cancel: cancel.clone(),
            pinned: prefix.map(|p| p.hit),
        };
        let submitted = Instant::now();
        self.scheduler
            .tx
            .lock()
            .send((sub, submitted))
            .map_err(|_| EngineError::Internal("the scheduler loop has stopped".into()))?;

        caller::follow(rx, &cancel, submitted, ids.len(), truncated, on_text)
    }

    /// This worker's KV identity: blocks move only between workers whose fingerprints are
    /// equal.
    pub fn kv_fingerprint(&self) -> KvFingerprint {
        self.fingerprint
    }

    /// Blocks of the longest resident chain from the start of `ids` (not counted as a hit).
    pub fn cached_prefix_blocks(&self, ids: &[u32]) -> usize {
        self.shared.store().resident_chain(ids, usize::MAX).len()
    }

    /// What another worker asked for with its prompt's `ids`: the keys and K/V of the
    /// longest chain of resident blocks from their start whose stored tokens equal them
    /// (never any token id). Holding the result holds the blocks' bytes (the transfer's
    /// lease), whatever the store evicts meanwhile.
    pub fn export_prefix(&self, ids: &[u32]) -> Vec<(u64, KvBlock)> {
        self.shared.store().export(ids)
    }

    /// Offers `blocks`, verified K and V of the first blocks of `ids` computed by another
    /// worker ([`wire::Decoder`](crate::transfer::wire::Decoder)), to the prefix store through
    /// the cache policy's `admit` (the listener hears of the blocks kept, as of computed
    /// ones), and returns them pinned for the request: pass them to
    /// [`Self::generate_with_prefix`], which uses them even if the store has evicted them
    /// by then (a generation uses at most the blocks before its prompt's last token).
    /// Blocks beyond the full blocks of `ids` are ignored.
    pub fn import_prefix(&self, ids: &[u32], blocks: Vec<KvBlock>) -> Result<ImportedPrefix> {
        let usable = ids.len() / BLOCK_TOKENS;
        let blocks = &blocks[..blocks.len().min(usable)];
        let shape = self.fingerprint.block_shape();
        for b in blocks {
            let ok = b.len() == self.fingerprint.n_layer as usize
                && b.iter().all(|(k, v)| k.dims() == shape && v.dims() == shape);
            if !ok {
                return Err(EngineError::InvalidParam {
                    field: "blocks",
                    reason: format!(
                        "each must be {} layers of {shape:?}",
                        self.fingerprint.n_layer
                    ),
                });
            }
        }
        self.shared.store().import(ids, blocks)?;
        Ok(ImportedPrefix::from_blocks(blocks, BLOCK_TOKENS))
    }

    /// Last-position logits of `prompt_ids` and how many prompt tokens came from the prefix
    /// store (`use_cache` false bypasses the store entirely: no lookup, no insertion). Runs
    /// on the calling thread, beside the scheduler rather than in its batch: for tests and
    /// measurements.
    pub fn last_logits(&self, prompt_ids: &[u32], use_cache: bool) -> Result<(Vec<f32>, usize)> {
        let (ids, _, _) = request::fit(&self.shared.info.config, prompt_ids, 0, false)?;
        let ((_, logits), cached) = self.prefill(ids, use_cache, ids.len())?;
        Ok((logits.to_vec1::<f32>()?, cached))
    }

    /// Runs the prompt, reusing its longest cached prefix (at most all but its last token: the
    /// last position must be computed for its logits), then offers its new full blocks to the
    /// store. The cache gets room for `positions` tokens (prompt + completion) up front.
    /// Returns the cache, the last logits and the number of reused tokens.
    fn prefill(
        &self,
        ids: &[u32],
        use_cache: bool,
        positions: usize,
    ) -> Result<((KvCache, Tensor), usize)> {
        let (mut cache, cached) = self.shared.cache_for(ids, positions, use_cache, None)?;
        let logits = self.shared.model.forward(&ids[cached..], &mut cache)?;
        if use_cache {
            self.shared.keep_prefix(ids, &cache, cached)?;
        }
        Ok(((cache, logits), cached))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Engine>();
}
