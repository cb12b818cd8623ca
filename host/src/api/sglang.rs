//! SGLang's native API: `POST /generate` with `sampling_params`, answered with `text` and
//! `meta_info`, whole or as Server-Sent Events. Fields follow SGLang's
//! `GenerateReqInput` and `SamplingParams`, so that SGLang's clients and the routers
//! built for it (sglang-router, vllm-router) can send what they send.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::job::{
    Endpoint, Job, OneOrMany, Prompt, nullable, object, seed, stops, with_unsupported,
};

/// A `/generate` request. Fields SGLang takes and locus does not know are ignored; the
/// ones that would change the answer are refused (see [`GenerateRequest::into_job`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GenerateRequest {
    /// The prompt (a list is SGLang's batch form, which locus refuses).
    pub text: Option<OneOrMany<String>>,
    /// The prompt as token ids, instead of `text`.
    pub input_ids: Option<OneOrMany<Vec<u32>>>,
    /// The prompt under OpenAI's name, accepted for the proof of concept's clients.
    pub prompt: Option<String>,
    /// Sampling choices (an object: SGLang's list form is for a batch).
    #[serde(deserialize_with = "object")]
    pub sampling_params: Option<SamplingParams>,
    /// Answer as Server-Sent Events.
    #[serde(deserialize_with = "nullable")]
    pub stream: bool,
    /// The client's request id.
    pub rid: Option<OneOrMany<String>>,
    /// Log probabilities: refused when true.
    pub return_logprob: Option<OneOrMany<bool>>,
    /// Multimodal inputs: refused when given.
    pub image_data: Option<Value>,
    /// Multimodal inputs: refused when given.
    pub audio_data: Option<Value>,
    /// Multimodal inputs: refused when given.
    pub video_data: Option<Value>,
    /// Embeddings instead of a prompt: refused when given.
    pub input_embeds: Option<Value>,
    /// LoRA adapters: refused when given.
    pub lora_path: Option<Value>,
    /// Custom logit processors: refused when given.
    pub custom_logit_processor: Option<Value>,
}

with_unsupported! {
/// SGLang's `sampling_params`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Most tokens to generate (default 128, as SGLang's).
    pub max_new_tokens: Option<u32>,
    /// 0 (the default here) is greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Sampling seed (SGLang's newer name is `sampling_seed`; both are read).
    #[serde(deserialize_with = "seed")]
    pub seed: Option<u64>,
    /// Sampling seed.
    #[serde(deserialize_with = "seed")]
    pub sampling_seed: Option<u64>,
    /// Stop sequences.
    pub stop: Option<OneOrMany<String>>,
    /// Keep the matched stop sequence in the output.
    #[serde(deserialize_with = "nullable")]
    pub no_stop_trim: bool,
    /// Generate past end-of-text.
    #[serde(deserialize_with = "nullable")]
    pub ignore_eos: bool,
}
}

impl GenerateRequest {
    /// Checks the request and turns it into a [`Job`].
    pub fn into_job(self) -> Result<Job, ApiError> {
        if self.return_logprob.iter().any(|r| match r {
            OneOrMany::One(b) => *b,
            OneOrMany::Many(v) => v.iter().any(|b| *b),
        }) {
            return Err(ApiError::unsupported(
                "return_logprob",
                "log probabilities are not implemented",
            ));
        }
        for (field, v) in [
            ("image_data", &self.image_data),
            ("audio_data", &self.audio_data),
            ("video_data", &self.video_data),
            ("input_embeds", &self.input_embeds),
            ("lora_path", &self.lora_path),
            ("custom_logit_processor", &self.custom_logit_processor),
        ] {
            if v.is_some() {
                return Err(ApiError::unsupported(field, format!("{field} is not supported")));
            }
        }
        let batch = |f: &str| {
            ApiError::unsupported(
                f,
                format!("`{f}` as a list (a batch) is not supported; send one request per prompt"),
            )
        };
        let prompt = match (self.text, self.input_ids, self.prompt) {
            (Some(OneOrMany::One(t)), None, _) => Prompt::Text(t),
            (None, Some(OneOrMany::One(ids)), _) => Prompt::Ids(ids),
            (Some(OneOrMany::Many(_)), None, _) => return Err(batch("text")),
            (None, Some(OneOrMany::Many(_)), _) => return Err(batch("input_ids")),
            (None, None, Some(p)) => Prompt::Text(p),
            (Some(_), Some(_), _) => {
                return Err(ApiError::invalid(
                    "text",
                    "give either `text` or `input_ids`, not both",
                ));
            }
            (None, None, None) => {
                return Err(ApiError::invalid("text", "`text` (or `input_ids`) is required"));
            }
        };
        let mut job = Job::with_prompt(Endpoint::Generate, prompt)?;
        let sp = self.sampling_params.unwrap_or_default();
        let unsupported = sp.unsupported();
        unsupported.check("sampling_params.")?;
        job.set_sampling(
            sp.max_new_tokens,
            sp.temperature,
            sp.top_p,
            sp.sampling_seed.or(sp.seed),
            unsupported.greedy(),
        );
        job.stop = stops(sp.stop, "sampling_params.stop")?;
        job.include_stop = sp.no_stop_trim;
        job.ignore_eos = sp.ignore_eos;
        job.stop_token_ids = unsupported.stop_token_ids.clone().unwrap_or_default();
        job.stream = self.stream;
        job.rid = match self.rid {
            None => None,
            Some(OneOrMany::One(r)) => Some(r),
            Some(OneOrMany::Many(_)) => return Err(batch("rid")),
        };
        Ok(job)
    }
}

/// A `/generate` answer (and each event of a streamed one, whose `text` is the whole text
/// so far, as SGLang streams it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GenerateResponse {
    /// Generated text.
    pub text: String,
    /// How it was produced.
    pub meta_info: MetaInfo,
}

/// `meta_info` of a `/generate` answer; OpenAI answers carry it too, as a locus extension,
/// so that any client can see what the caches did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetaInfo {
    /// The request id.
    pub id: String,
    /// Why generation ended; `null` until it has.
    pub finish_reason: Option<FinishReason>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens served from a cache (all of them on a response-cache hit).
    pub cached_tokens: usize,
    /// Prompt tokens whose KV another worker sent for this request (present only when a
    /// router named a source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_tokens: Option<usize>,
    /// Whether the whole answer came from the response cache.
    pub cache_hit: bool,
    /// The worker that answered.
    pub worker_id: String,
    /// Seconds from arrival to answer, at the worker.
    pub e2e_latency: f64,
    /// Seconds from arrival to the first token, at the worker (a locus extension, absent
    /// when no token was generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft: Option<f64>,
}

/// SGLang's finish reason: `{"type": "length", "length": 16}` or
/// `{"type": "stop", "matched": "\n"}` (`matched` is the EOS token id when end-of-text
/// ended it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FinishReason {
    /// `length`, `stop` or `abort`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tokens generated, for `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// The stop sequence or token id, for `stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<Value>,
}
