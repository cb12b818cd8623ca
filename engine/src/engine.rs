//! The engine a worker serves from: model + tokenizer + prefix KV store, safe to share across
//! request threads.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::LogitsProcessor;
use locus_tokens::Tokenizer;
use parking_lot::{Mutex, MutexGuard};

use crate::gpt2::{Config, Gpt2, KvCache};
use crate::prefix::{
    BLOCK_TOKENS, CacheEntry, CachePolicy, CacheStats, KvListener, LruPolicy, PrefixStore,
};
use crate::scheduler::{self, Counters, Event, Handle, Limits, SchedulerStats, Submission};
use crate::source::{self, ModelSource, Weights};
use crate::{EngineError, Result};

/// Options of [`Engine::load`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Hard budget of the prefix KV store in bytes; 0 disables prefix reuse.
    pub prefix_cache_bytes: u64,
    /// How the batch shares the machine: batch size, prefill chunk, running KV budget,
    /// queue deadline.
    pub limits: Limits,
}

impl Default for EngineOptions {
    /// Prefix store 256 MiB: about 7,000 tokens of distilgpt2 K/V (36 KiB per token).
    fn default() -> Self {
        Self { prefix_cache_bytes: 256 << 20, limits: Limits::default() }
    }
}

/// One completion request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt text (GPT-2 BPE; `<|endoftext|>` is the special token).
    pub prompt: String,
    /// Most tokens to generate. Clamped so that prompt + completion fit `n_positions`
    /// (the generation then ends with [`FinishReason::Length`]). 0 only runs the prompt, which
    /// fills the prefix store.
    pub max_new_tokens: usize,
    /// 0 (anything below 1e-5) is greedy (argmax); otherwise softmax temperature, finite and
    /// at most 100.
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1]; 1 disables it. Ignored when greedy.
    pub top_p: f64,
    /// Sampling seed; `None` draws one. Same seed, prompt and parameters give the same output.
    pub seed: Option<u64>,
    /// Drop the oldest prompt tokens when the prompt does not fit, instead of failing with
    /// [`EngineError::PromptTooLong`].
    pub truncate_left: bool,
    /// Go on past end-of-text (benchmarks use it to get exactly `max_new_tokens`).
    pub ignore_eos: bool,
    /// Tokens that end the generation like end-of-text (not part of the output).
    pub stop_token_ids: Vec<u32>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            truncate_left: false,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced end-of-text.
    Stop,
    /// `max_new_tokens` (or the context) was reached.
    Length,
    /// The caller's `on_text` asked to stop (a stop sequence matched, the client left).
    Aborted,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated text (end-of-text excluded).
    pub text: String,
    /// Generated token ids (end-of-text excluded).
    pub token_ids: Vec<u32>,
    /// Prompt tokens run (after any left truncation).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens whose K/V came from the prefix store instead of being computed.
    pub cached_tokens: usize,
    /// Prompt tokens dropped by `truncate_left`.
    pub truncated_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The token that ended it, with [`FinishReason::Stop`]: end-of-text or one of the
    /// request's `stop_token_ids` (not part of `token_ids`).
    pub stop_token: Option<u32>,
    /// Milliseconds waiting for admission to the batch.
    pub queue_ms: f64,
    /// Milliseconds from admission to the first token's logits (prefix lookup + prefill,
    /// interleaved with the batch's decode steps).
    pub prefill_ms: f64,
    /// Milliseconds of the decode steps after that.
    pub decode_ms: f64,
}

/// What runs, for logs and `/health`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The short name clients use for it (`distilgpt2`, `synthetic-distilgpt2`).
    pub name: String,
    /// Where the weights came from, in words.
    pub source: String,
    /// The architecture.
    pub config: Config,
    /// Parameter count (tied head counted once).
    pub parameters: usize,
    /// Bytes of K/V the prefix store holds per cached token.
    pub kv_bytes_per_token: u64,
}

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
    pub(crate) fn store(&self) -> MutexGuard<'_, PrefixStore> {
        self.store.lock()
    }

    /// A cache for `ids` with room for `positions` tokens, starting from the longest prefix
    /// the store holds (at most all but the last token, whose logits must be computed), and
    /// that prefix's length. `use_cache` false skips the store.
    pub(crate) fn cache_for(
        &self,
        ids: &[u32],
        positions: usize,
        use_cache: bool,
    ) -> candle_core::Result<(KvCache, usize)> {
        let hit = use_cache.then(|| self.store().lookup(ids, ids.len() - 1));
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

/// Model, tokenizer, prefix store and the scheduler that batches generations. `Send + Sync`:
/// any number of threads may generate at once; one loop owns the model and runs their
/// sequences together (see [`Limits`]).
pub struct Engine {
    shared: Arc<Shared>,
    scheduler: Handle,
    seeds: AtomicU64,
}

/// How often a waiting caller of [`Engine::generate_until`] is asked whether to go on when no
/// text arrives (while queued or prefilling).
const PROBE: Duration = Duration::from_millis(20);

impl Engine {
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
        if limits.max_batch == 0 || limits.prefill_chunk == 0 {
            return Err(EngineError::InvalidParam {
                field: "limits",
                reason: "max_batch and prefill_chunk must be at least 1".into(),
            });
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = Gpt2::load(config, vb)?;
        let info = ModelInfo {
            name,
            source: description,
            config: config.clone(),
            parameters: model.num_parameters(),
            kv_bytes_per_token: crate::prefix::block_bytes(config.n_layer, config.n_embd)
                / BLOCK_TOKENS as u64,
        };
        let full_context = info.kv_bytes_per_token * config.n_positions as u64;
        if limits.kv_bytes < full_context {
            tracing::warn!(
                kv_bytes = limits.kv_bytes,
                full_context_bytes = full_context,
                "the running KV budget holds less than one full context: longer requests are refused"
            );
        }
        let shared = Arc::new(Shared {
            model,
            tokenizer: Tokenizer::new(),
            info,
            store: Mutex::new(PrefixStore::new(
                options.prefix_cache_bytes,
                Arc::new(LruPolicy::new()),
            )),
        });
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
            "{} [{} layers, {} wide, {} heads, {} vocab, {} positions, {:.1}M parameters]",
            info.source,
            c.n_layer,
            c.n_embd,
            c.n_head,
            c.vocab_size,
            c.n_positions,
            info.parameters as f64 / 1e6
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
        validate(req)?;
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

    /// Everything that refuses a request before it runs: its parameters, [`Self::fit`], and
    /// the running KV budget. Returns what `fit` returns.
    fn checked<'a>(
        &self,
        ids: &'a [u32],
        req: &GenerateRequest,
    ) -> Result<(&'a [u32], usize, usize)> {
        validate(req)?;
        let (ids, truncated, max_new) = self.fit(ids, req.max_new_tokens, req.truncate_left)?;
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
    /// [`FinishReason::Aborted`] and frees its place in the batch at the next step. While no
    /// text arrives (queued, prefilling) it is called with an empty piece every 20 ms, so that
    /// a request whose client left is dropped before it costs more.
    ///
    /// Runs in the calling thread's time only as a waiter: the scheduler batches it with
    /// every other generation in flight.
    pub fn generate_until(
        &self,
        prompt_ids: &[u32],
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str, usize) -> ControlFlow<()>,
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
            events,
            cancel: cancel.clone(),
        };
        let submitted = Instant::now();
        self.scheduler
            .tx
            .lock()
            .send((sub, submitted))
            .map_err(|_| EngineError::Internal("the scheduler loop has stopped".into()))?;

        let mut heard = Heard::default();
        let generation = |heard: Heard, end: FinishReason, stop_token: Option<u32>| {
            let total_ms = submitted.elapsed().as_secs_f64() * 1e3;
            heard.into_generation(ids.len(), truncated, end, stop_token, total_ms)
        };
        loop {
            match rx.recv_timeout(PROBE) {
                Ok(Event::Admitted { queue_ms }) => heard.queue_ms = Some(queue_ms),
                Ok(Event::Started { cached_tokens, prefill_ms }) => {
                    heard.cached_tokens = cached_tokens;
                    heard.prefill_ms = Some(prefill_ms);
                }
                Ok(Event::Text { piece, ids }) => {
                    heard.token_ids.extend(ids);
                    if piece.is_empty() {
                        continue;
                    }
                    heard.text.push_str(&piece);
                    if on_text(&piece, heard.token_ids.len()).is_break() {
                        cancel.store(true, Ordering::Relaxed);
                        return Ok(generation(heard, FinishReason::Aborted, None));
                    }
                }
                Ok(Event::Done { end, stop_token }) => {
                    let g = generation(heard, end?, stop_token);
                    tracing::debug!(
                        prompt_tokens = g.prompt_tokens,
                        cached_tokens = g.cached_tokens,
                        completion_tokens = g.completion_tokens,
                        queue_ms = g.queue_ms,
                        prefill_ms = g.prefill_ms,
                        decode_ms = g.decode_ms,
                        "generated"
                    );
                    return Ok(g);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if on_text("", heard.token_ids.len()).is_break() {
                        cancel.store(true, Ordering::Relaxed);
                        return Ok(generation(heard, FinishReason::Aborted, None));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let why = "the scheduler dropped this generation (see the worker's log)";
                    return Err(EngineError::Internal(why.into()));
                }
            }
        }
    }

    /// Last-position logits of `prompt_ids` and how many prompt tokens came from the prefix
    /// store (`use_cache` false bypasses the store entirely: no lookup, no insertion). Runs
    /// on the calling thread, beside the scheduler rather than in its batch: for tests and
    /// measurements.
    pub fn last_logits(&self, prompt_ids: &[u32], use_cache: bool) -> Result<(Vec<f32>, usize)> {
        let (ids, _, _) = self.fit(prompt_ids, 0, false)?;
        let ((_, logits), cached) = self.prefill(ids, use_cache, ids.len())?;
        Ok((logits.to_vec1::<f32>()?, cached))
    }

    /// Checks the prompt against the context: returns the tokens to run, how many were dropped
    /// from the left, and `max_new` clamped so every position stays below `n_positions`.
    fn fit<'a>(
        &self,
        ids: &'a [u32],
        max_new: usize,
        truncate_left: bool,
    ) -> Result<(&'a [u32], usize, usize)> {
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let cfg = &self.shared.info.config;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(EngineError::InvalidParam {
                field: "prompt",
                reason: format!(
                    "token id {bad} is outside the model's vocabulary of {}",
                    cfg.vocab_size
                ),
            });
        }
        let n_pos = cfg.n_positions;
        // Room for at least one new token when any is asked for.
        let max_prompt = n_pos - usize::from(max_new > 0);
        let (ids, truncated) = if ids.len() > max_prompt {
            if !truncate_left {
                return Err(EngineError::PromptTooLong { tokens: ids.len(), max: max_prompt });
            }
            let drop = ids.len() - max_prompt;
            (&ids[drop..], drop)
        } else {
            (ids, 0)
        };
        Ok((ids, truncated, max_new.min(n_pos - ids.len())))
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
        let (mut cache, cached) = self.shared.cache_for(ids, positions, use_cache)?;
        let logits = self.shared.model.forward(&ids[cached..], &mut cache)?;
        if use_cache {
            self.shared.keep_prefix(ids, &cache, cached)?;
        }
        Ok(((cache, logits), cached))
    }
}

/// What a caller of the scheduler has heard of its generation so far.
#[derive(Default)]
struct Heard {
    text: String,
    token_ids: Vec<u32>,
    cached_tokens: usize,
    queue_ms: Option<f64>,
    prefill_ms: Option<f64>,
}

impl Heard {
    /// The generation as heard, ended by `end` `total_ms` after it was submitted. Time not
    /// spent queued or on the prompt was spent decoding; not admitted yet, all of it was
    /// queued; admitted but the prompt not done, the rest was prefill.
    fn into_generation(
        self,
        prompt_tokens: usize,
        truncated_tokens: usize,
        end: FinishReason,
        stop_token: Option<u32>,
        total_ms: f64,
    ) -> Generation {
        let queue_ms = self.queue_ms.unwrap_or(total_ms);
        let prefill_ms = self.prefill_ms.unwrap_or(total_ms - queue_ms);
        Generation {
            text: self.text,
            completion_tokens: self.token_ids.len(),
            token_ids: self.token_ids,
            prompt_tokens,
            cached_tokens: self.cached_tokens,
            truncated_tokens,
            finish_reason: end,
            stop_token,
            queue_ms,
            prefill_ms,
            decode_ms: (total_ms - queue_ms - prefill_ms).max(0.0),
        }
    }
}

fn validate(req: &GenerateRequest) -> Result<()> {
    if !req.temperature.is_finite() || !(0.0..=100.0).contains(&req.temperature) {
        return Err(EngineError::InvalidParam {
            field: "temperature",
            reason: "must be in [0, 100]".into(),
        });
    }
    if !(req.top_p > 0.0 && req.top_p <= 1.0) {
        return Err(EngineError::InvalidParam {
            field: "top_p",
            reason: "must be in (0, 1]".into(),
        });
    }
    Ok(())
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Engine>();
}
