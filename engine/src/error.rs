//! What can go wrong in loading and generation, and which of it is the request's fault.

use thiserror::Error;

/// Errors of loading and generation. [`EngineError::is_client_error`] separates the ones caused
/// by a request (HTTP 4xx) from the engine's own (5xx).
#[derive(Debug, Error)]
pub enum EngineError {
    /// The prompt does not fit the context (and left truncation was not asked for).
    #[error("prompt is {tokens} tokens; this model accepts at most {max}")]
    PromptTooLong {
        /// Tokens in the prompt.
        tokens: usize,
        /// Most prompt tokens accepted with the request's `max_new_tokens`.
        max: usize,
    },
    /// The prompt text is too long to fit the context whatever it tokenizes to (refused
    /// before tokenizing it).
    #[error("prompt is {bytes} bytes, more than any {max}-token prompt can be")]
    PromptTooLarge {
        /// Bytes of prompt text.
        bytes: usize,
        /// Most prompt tokens accepted with the request's `max_new_tokens`.
        max: usize,
    },
    /// The prompt and the tokens asked for do not fit the context together (as OpenAI and
    /// vLLM refuse it; `max_new_tokens` of `usize::MAX` asks for the rest of the context).
    #[error(
        "this model's maximum context length is {context} tokens; the request asks for \
         {} ({prompt} in the prompt, {max_new} to generate): ask for at most {} new tokens",
        prompt + max_new,
        context.saturating_sub(*prompt)
    )]
    ExceedsContext {
        /// Tokens in the prompt.
        prompt: usize,
        /// Tokens asked for.
        max_new: usize,
        /// The model's context.
        context: usize,
    },
    /// The prompt has no tokens.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// A request or option field is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidParam {
        /// Field name as the API spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The request needs more KV memory than the whole running budget.
    #[error(
        "prompt + max_new_tokens need {tokens} tokens of KV memory; this worker holds at most {max} for running sequences"
    )]
    ExceedsKvBudget {
        /// Positions the request would reserve.
        tokens: usize,
        /// Most positions the budget holds.
        max: usize,
    },
    /// The request waited longer than the queue deadline for room in the batch.
    #[error("waited {waited_ms} ms for room in the running batch (queue deadline)")]
    QueueTimeout {
        /// How long it waited.
        waited_ms: u64,
    },
    /// Computing this sequence failed (the others of its batch went on).
    #[error("generation failed: {0}")]
    StepFailed(String),
    /// The model could not be found or read; the message names the fix.
    #[error("model unavailable: {0}")]
    ModelUnavailable(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else internal.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the request was at fault (map to HTTP 400/413/422), not the engine.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::PromptTooLong { .. }
                | Self::PromptTooLarge { .. }
                | Self::ExceedsContext { .. }
                | Self::EmptyPrompt
                | Self::InvalidParam { .. }
                | Self::ExceedsKvBudget { .. }
        )
    }
}

/// Result of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
