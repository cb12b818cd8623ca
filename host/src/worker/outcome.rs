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
    pub text: String,
    pub tokens: usize,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub cache_hit: bool,
    pub finish: Finish,
    /// Seconds since the request arrived.
    pub latency: f64,
    /// Seconds from arrival to the first token; `None` when none was generated.
    pub ttft: Option<f64>,
}
