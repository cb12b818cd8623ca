//! What a caller asks of the engine and what it gets back: a [`GenerateRequest`], the
//! [`Generation`] that answers it and why it ended ([`FinishReason`]), [`ModelInfo`] on what
//! runs, and the checks that refuse a request before it runs.

use crate::error::{EngineError, Result};
use crate::gpt2::Config;
use crate::quant::WeightFormat;

/// One completion request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt text (GPT-2 BPE; `<|endoftext|>` is the special token).
    pub prompt: String,
    /// Most tokens to generate: with the prompt, at most `n_positions`
    /// ([`EngineError::ExceedsContext`] otherwise), except that `usize::MAX` asks for the rest
    /// of the context and, with `truncate_left`, the count is clamped to what fits (either
    /// way the generation then ends with [`FinishReason::Length`]). 0 only runs the prompt,
    /// which fills the prefix store.
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
    /// Scheduling priority, higher first: a waiting request of a higher priority is
    /// admitted to the batch first, and a prefilling one runs its prompt chunks first
    /// (equal priorities keep arrival order and take turns). 0 by default.
    pub priority: u8,
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
            priority: 0,
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
    /// How the projection weights are held.
    pub weights: WeightFormat,
    /// Parameter count (tied head counted once).
    pub parameters: usize,
    /// Bytes of K/V the prefix store holds per cached token.
    pub kv_bytes_per_token: u64,
}

/// Refuses sampling parameters out of range.
pub(crate) fn validate(req: &GenerateRequest) -> Result<()> {
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

/// Checks the prompt and `max_new` against the context of a model shaped `cfg`: returns the
/// tokens to run, how many were dropped from the left, and `max_new` clamped so every
/// position stays below `n_positions` (where clamping is asked for: see
/// [`GenerateRequest::max_new_tokens`]).
pub(crate) fn fit<'a>(
    cfg: &Config,
    ids: &'a [u32],
    max_new: usize,
    truncate_left: bool,
) -> Result<(&'a [u32], usize, usize)> {
    if ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
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
    if !truncate_left && max_new != usize::MAX && ids.len() + max_new > n_pos {
        return Err(EngineError::ExceedsContext { prompt: ids.len(), max_new, context: n_pos });
    }
    Ok((ids, truncated, max_new.min(n_pos - ids.len())))
}
