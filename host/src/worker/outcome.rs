//! What a run hands back: the pieces of text it streams, the outcome it ends with and why
//! it ended. The response cache, the metrics and the answers all read these, so they live
//! apart from the code that runs requests.

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// `max_new_tokens` or the context was reached.
    Length,
    /// The model produced end-of-text or one of the request's stop token ids.
    StopToken(u32),
    /// A stop sequence matched.
    Stop(String),
    /// The client went away; nobody reads this answer.
    Cancelled,
}

/// A piece of generated text and the tokens generated so far.
#[derive(Debug, Clone)]
pub struct Piece {
    /// New text, already cut at stop sequences.
    pub text: String,
    /// Tokens generated so far.
    pub tokens: usize,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The whole generated text, cut at the stop sequence if one matched.
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens that came from a cache instead of being computed (not counting the
    /// transferred ones).
    pub cached_tokens: usize,
    /// Prompt tokens whose KV was pulled from another worker for this request; `None` when
    /// it named no source.
    pub transferred_tokens: Option<usize>,
    /// The worker the transferred tokens came from.
    pub kv_source: Option<String>,
    /// Answered from the response cache.
    pub cache_hit: bool,
    /// Why it ended.
    pub finish: Finish,
    /// Seconds since the request arrived.
    pub latency: f64,
    /// Seconds from arrival to the first token; `None` when none was generated.
    pub ttft: Option<f64>,
}
