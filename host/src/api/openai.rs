//! OpenAI's API: `POST /v1/completions` and `POST /v1/chat/completions`, whole or
//! streamed as chunks, with `usage` (and `stream_options.include_usage`). vLLM's and
//! SGLang's extensions (`top_k`, `ignore_eos`, ...) are read as those servers read them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::{self, ChatMessage};
use super::error::ApiError;
use super::job::{
    Endpoint, Job, OneOrMany, Prompt, nullable, object, seed, stops, with_unsupported,
};
use super::sglang::MetaInfo;

/// `stream_options`.
#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(default)]
pub struct StreamOptions {
    /// End the stream with a chunk that carries `usage`.
    #[serde(deserialize_with = "nullable")]
    pub include_usage: bool,
}

/// A prompt of `/v1/completions`: text, token ids, or a one-element list of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CompletionPrompt {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// Several texts (a batch, refused unless it has one).
    Texts(Vec<String>),
    /// Several id lists (a batch, refused unless it has one).
    IdLists(Vec<Vec<u32>>),
}

with_unsupported! {
/// A `/v1/completions` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    /// Accepted and ignored: a worker serves one model.
    pub model: Option<String>,
    /// What to complete.
    pub prompt: Option<CompletionPrompt>,
    /// Most tokens to generate (default 16).
    pub max_tokens: Option<u32>,
    /// 0 (the default here) is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[serde(deserialize_with = "seed")]
    pub seed: Option<u64>,
    /// Stop sequences.
    pub stop: Option<OneOrMany<String>>,
    /// Answer as Server-Sent Events.
    #[serde(deserialize_with = "nullable")]
    pub stream: bool,
    /// Streaming options.
    #[serde(deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    /// Generate past end-of-text (vLLM's extension).
    #[serde(deserialize_with = "nullable")]
    pub ignore_eos: bool,
    /// Log probabilities: refused when given.
    pub logprobs: Option<Value>,
    /// Echo the prompt: refused when true.
    #[serde(deserialize_with = "nullable")]
    pub echo: bool,
    /// Text after the completion: refused when given.
    pub suffix: Option<String>,
}
}

impl CompletionRequest {
    /// Checks the request and turns it into a [`Job`].
    pub fn into_job(self) -> Result<Job, ApiError> {
        let unsupported = self.unsupported();
        unsupported.check("")?;
        let stop_token_ids = unsupported.stop_token_ids.clone().unwrap_or_default();
        if self.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unsupported("logprobs", "log probabilities are not implemented"));
        }
        if self.echo {
            return Err(ApiError::unsupported("echo", "echoing the prompt is not implemented"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported("suffix", "insertion (suffix) is not implemented"));
        }
        let batch = || {
            ApiError::unsupported(
                "prompt",
                "a list of prompts (a batch) is not supported; send one request per prompt",
            )
        };
        let prompt = match self.prompt {
            None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
            Some(CompletionPrompt::Text(t)) => Prompt::Text(t),
            Some(CompletionPrompt::Ids(ids)) => Prompt::Ids(ids),
            Some(CompletionPrompt::Texts(v)) => {
                Prompt::Text(OneOrMany::Many(v).single().ok_or_else(batch)?)
            }
            Some(CompletionPrompt::IdLists(v)) => {
                Prompt::Ids(OneOrMany::Many(v).single().ok_or_else(batch)?)
            }
        };
        let mut job = Job::with_prompt(Endpoint::Completions, prompt)?;
        job.set_sampling(
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.seed,
            unsupported.greedy(),
        );
        job.stop = stops(self.stop, "stop")?;
        job.ignore_eos = self.ignore_eos;
        job.stop_token_ids = stop_token_ids;
        job.stream = self.stream;
        job.include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(job)
    }
}

with_unsupported! {
/// A `/v1/chat/completions` request.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatCompletionRequest {
    /// Accepted and ignored: a worker serves one model.
    pub model: Option<String>,
    /// The conversation, rendered by [`chat::render`].
    pub messages: Option<Vec<ChatMessage>>,
    /// Most tokens to generate (default: the rest of the context).
    pub max_tokens: Option<u32>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// 0 (the default here) is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Sampling seed.
    #[serde(deserialize_with = "seed")]
    pub seed: Option<u64>,
    /// Stop sequences (added to the template's own).
    pub stop: Option<OneOrMany<String>>,
    /// Answer as Server-Sent Events.
    #[serde(deserialize_with = "nullable")]
    pub stream: bool,
    /// Streaming options.
    #[serde(deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    /// Generate past end-of-text (vLLM's extension).
    #[serde(deserialize_with = "nullable")]
    pub ignore_eos: bool,
    /// Log probabilities: refused when true.
    #[serde(deserialize_with = "nullable")]
    pub logprobs: bool,
    /// Tools: refused when given.
    pub tools: Option<Vec<Value>>,
    /// Output format: only `{"type": "text"}` is served.
    pub response_format: Option<Value>,
}
}

impl ChatCompletionRequest {
    /// Checks the request, renders the conversation, and turns it into a [`Job`].
    pub fn into_job(self) -> Result<Job, ApiError> {
        let unsupported = self.unsupported();
        unsupported.check("")?;
        let stop_token_ids = unsupported.stop_token_ids.clone().unwrap_or_default();
        if self.logprobs {
            return Err(ApiError::unsupported("logprobs", "log probabilities are not implemented"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::unsupported("tools", "tool calls are not implemented"));
        }
        if let Some(f) = &self.response_format
            && f.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(ApiError::unsupported(
                "response_format",
                "only {\"type\": \"text\"} is served",
            ));
        }
        let messages =
            self.messages.ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
        let prompt = chat::render(&messages)?;
        let mut job = Job::new(Endpoint::Chat, Prompt::Text(prompt));
        job.set_sampling(
            self.max_completion_tokens.or(self.max_tokens),
            self.temperature,
            self.top_p,
            self.seed,
            unsupported.greedy(),
        );
        job.stop = stops(self.stop, "stop")?;
        job.stop.extend(chat::STOPS.iter().map(|s| s.to_string()));
        job.ignore_eos = self.ignore_eos;
        job.stop_token_ids = stop_token_ids;
        job.stream = self.stream;
        job.include_usage = self.stream_options.is_some_and(|o| o.include_usage);
        Ok(job)
    }
}

/// Token counts of an answer.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Of the prompt, how much came from a cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from a cache.
    pub cached_tokens: usize,
    /// Prompt tokens whose KV another worker sent for this request (a locus extension,
    /// present only when a router named a source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_tokens: Option<usize>,
}

impl Usage {
    /// With `transferred` prompt tokens from another worker.
    pub fn with_transferred(mut self, transferred: Option<usize>) -> Self {
        if let Some(d) = &mut self.prompt_tokens_details {
            d.transferred_tokens = transferred;
        }
        self
    }

    /// Usage of `prompt` tokens in, `completion` out, `cached` of the prompt from a cache.
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: cached,
                transferred_tokens: None,
            }),
        }
    }
}

/// A `/v1/completions` answer, and each chunk of a streamed one (`object` is
/// `text_completion` for both, as OpenAI sends it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Completion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice (none in a usage-only chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts: on the whole answer, and on the last chunk when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// locus's extension: what the caches did (on the whole answer and the final chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_info: Option<MetaInfo>,
}

/// One choice of a completion.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CompletionChoice {
    /// Always 0.
    pub index: u32,
    /// The text (of this chunk, when streamed).
    pub text: String,
    /// Always null: log probabilities are not implemented.
    pub logprobs: Option<Value>,
    /// `stop` or `length`; null until the end.
    pub finish_reason: Option<String>,
}

/// A `/v1/chat/completions` answer or stream chunk (`chat.completion` or
/// `chat.completion.chunk`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion` or `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model.
    pub model: String,
    /// One choice (none in a usage-only chunk).
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// locus's extension: what the caches did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_info: Option<MetaInfo>,
}

/// One choice of a chat answer: `message` when whole, `delta` when streamed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The whole answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessageOut>,
    /// The next piece of a streamed answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatDelta>,
    /// Always null.
    pub logprobs: Option<Value>,
    /// `stop` or `length`; null until the end.
    pub finish_reason: Option<String>,
}

/// The assistant's message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChatMessageOut {
    /// `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A piece of a streamed chat answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ChatDelta {
    /// `assistant`, on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The one model.
    pub data: Vec<ModelCard>,
}

/// One model of [`ModelList`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModelCard {
    /// Its name.
    pub id: String,
    /// `model`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// `locus`.
    pub owned_by: String,
}
