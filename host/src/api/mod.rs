//! The wire types of both servers, shared by worker, router and bench: SGLang's
//! `/generate`, OpenAI's `/v1/completions` and `/v1/chat/completions`, the one error
//! shape, how a body is read, the admin answers clients read back, and what workers tell
//! routers (load and KV events). It may import locus-policy's report types and nothing of
//! the servers (router/, worker/, http.rs): both servers import it. One rule for fields: unknown ones are accepted and
//! ignored, as the field's servers do; one that would change the answer and that locus
//! cannot honour is refused with 400 naming it.

pub mod admin;
pub mod chat;
mod error;
mod job;
pub mod openai;
mod parse;
pub mod sglang;
pub mod signals;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use job::{Endpoint, Job, MAX_STOP_BYTES, MAX_STOPS, OneOrMany, Prompt};
pub use parse::parse_json;

/// The header carrying a request's id from client to router to worker and back.
pub const REQUEST_ID: &str = "x-request-id";

/// The header a router sets on every request it dispatches: the request's rank in the
/// worker's scheduler, from what its admission decided ([`rank`]), so that the worker keeps
/// the router's order (admission to the batch and prompt chunks go highest first). Never
/// copied from a client's request.
pub const PRIORITY: &str = "x-locus-priority";

/// The error code of a worker's 503 while it drains: routers take it out of rotation at once.
pub const SHUTTING_DOWN: &str = "shutting_down";

/// Request header with the cluster token: on a worker's `/kv/export`, and on a generation
/// request whose [`KV_SOURCE`] the worker should honour.
pub const CLUSTER_TOKEN: &str = "x-locus-cluster-token";

/// Request header naming the worker (base URL) to pull the prompt's prefix KV from; set by
/// a router, honoured by a worker only with the cluster token. Never copied from a client.
pub const KV_SOURCE: &str = "x-locus-kv-source";

/// Response header naming the source whose blocks the answer used.
pub const KV_SOURCE_USED: &str = "x-locus-kv-source-used";

/// The highest priority band.
pub const TOP_BAND: u8 = (locus_policy::BANDS - 1) as u8;

/// The highest rank: the top band, sent ahead.
pub const TOP_RANK: u8 = rank(TOP_BAND, true);

/// A dispatched request's rank in its worker: twice its band (0 to [`TOP_BAND`]), plus 1
/// when the admission policy sent it ahead of its band's others. Bands never mix: a request
/// sent ahead still goes after every request of a higher band.
pub const fn rank(band: u8, ahead: bool) -> u8 {
    let band = if band > TOP_BAND { TOP_BAND } else { band };
    band * 2 + ahead as u8
}

/// The rank a request's headers give ([`PRIORITY`]); 0 without it.
pub fn read_priority(headers: &axum::http::HeaderMap) -> Result<u8, ApiError> {
    let Some(v) = headers.get(PRIORITY) else { return Ok(0) };
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= TOP_RANK)
        .ok_or_else(|| ApiError::invalid(PRIORITY, format!("`{PRIORITY}` must be 0 to {TOP_RANK}")))
}

/// Reads a body of `endpoint` into a [`Job`].
pub fn read_job(endpoint: Endpoint, body: &[u8]) -> Result<Job, ApiError> {
    match endpoint {
        Endpoint::Generate => parse_json::<sglang::GenerateRequest>(body)?.into_job(),
        Endpoint::Completions => parse_json::<openai::CompletionRequest>(body)?.into_job(),
        Endpoint::Chat => parse_json::<openai::ChatCompletionRequest>(body)?.into_job(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(endpoint: Endpoint, body: &str) -> ApiError {
        read_job(endpoint, body.as_bytes()).expect_err(body)
    }

    #[test]
    fn what_sglang_and_its_routers_send_is_accepted() {
        // sglang-router adds `model`; vllm-router adds `return_logprob: false`.
        let body = r#"{"text": "Hi", "model": "m", "rid": "r1", "return_logprob": false,
            "logprob_start_len": -1, "bootstrap_room": null,
            "sampling_params": {"max_new_tokens": 0, "temperature": 0.5, "top_k": -1,
                "min_p": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                "skip_special_tokens": true, "stop": ["\n"], "sampling_seed": 7}}"#;
        let job = read_job(Endpoint::Generate, body.as_bytes()).unwrap();
        assert_eq!(job.prompt, Prompt::Text("Hi".into()));
        assert_eq!((job.max_new_tokens, job.temperature, job.seed), (0, 0.5, Some(7)));
        assert_eq!((job.stop, job.rid.as_deref()), (vec!["\n".to_string()], Some("r1")));
        let ids = read_job(Endpoint::Generate, br#"{"input_ids": [1, 2, 3], "stream": true}"#);
        let ids = ids.unwrap();
        assert_eq!(ids.param("prompt"), "input_ids");
        assert_eq!((ids.prompt, ids.stream), (Prompt::Ids(vec![1, 2, 3]), true));
    }

    #[test]
    fn answer_changing_fields_are_refused_by_name() {
        let cases = [
            (Endpoint::Generate, r#"{"text": "a", "return_logprob": true}"#, "return_logprob"),
            (Endpoint::Generate, r#"{"text": ["a", "b"]}"#, "text"),
            (Endpoint::Generate, r#"{"text": ["a"]}"#, "text"),
            (
                Endpoint::Generate,
                r#"{"text": "a", "sampling_params": {"n": 2}}"#,
                "sampling_params.n",
            ),
            (Endpoint::Generate, r#"{"text": "a", "image_data": "x.png"}"#, "image_data"),
            (Endpoint::Generate, r#"{"sampling_params": {}}"#, "text"),
            (Endpoint::Generate, r#"{"text": ""}"#, "text"),
            (Endpoint::Completions, r#"{"prompt": "a", "n": 3}"#, "n"),
            (Endpoint::Completions, r#"{"prompt": "a", "n": "2"}"#, "n"),
            (
                Endpoint::Generate,
                r#"{"text": "a", "sampling_params": {"top_k": "x"}}"#,
                "sampling_params.top_k",
            ),
            (Endpoint::Completions, r#"{"prompt": "a", "logprobs": 2}"#, "logprobs"),
            (Endpoint::Completions, r#"{"prompt": "a", "echo": true}"#, "echo"),
            (Endpoint::Completions, r#"{"prompt": "a", "best_of": 2}"#, "best_of"),
            (Endpoint::Completions, r#"{"prompt": "a", "suffix": "z"}"#, "suffix"),
            (Endpoint::Completions, r#"{"prompt": "a", "top_k": 40}"#, "top_k"),
            (Endpoint::Completions, r#"{"prompt": "a", "stop": [""x""]}"#, ""),
            (Endpoint::Completions, r#"{"max_tokens": 3}"#, "prompt"),
            (Endpoint::Completions, r#"{"prompt": ["a", "b"]}"#, "prompt"),
            (Endpoint::Completions, r#"{"prompt": "a", "max_tokens": -1}"#, "max_tokens"),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user", "content": "a"}], "logprobs": true}"#,
                "logprobs",
            ),
            (
                Endpoint::Chat,
                r#"{"messages": [{"role": "user", "content": "a"}], "tools": [{}]}"#,
                "tools",
            ),
            (Endpoint::Chat, r#"{"messages": []}"#, "messages"),
            (Endpoint::Chat, r#"{"model": "x"}"#, "messages"),
        ];
        for (endpoint, body, param) in cases {
            let e = err(endpoint, body);
            assert_eq!(e.status.as_u16(), 400, "{body}");
            if param.is_empty() {
                continue;
            }
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        // Neutral values of the same fields change nothing and pass.
        let ok = r#"{"prompt": "a", "n": 1, "best_of": 1, "echo": false, "logprobs": null,
            "suffix": null, "top_k": 1, "presence_penalty": 0, "user": "u",
            "stream_options": {"include_usage": true}, "stream": true}"#;
        let job = read_job(Endpoint::Completions, ok.as_bytes()).unwrap();
        assert!(job.include_usage && job.stream);
        // `null` flags are their defaults; seeds may be negative (vLLM takes int64).
        let nulls = r#"{"prompt": "a", "stream": null, "echo": null, "seed": -1}"#;
        let job = read_job(Endpoint::Completions, nulls.as_bytes()).unwrap();
        assert_eq!((job.stream, job.seed, job.max_new_tokens), (false, Some(u64::MAX), 16));
        let generate = read_job(Endpoint::Generate, br#"{"text": "a"}"#).unwrap();
        assert_eq!(generate.max_new_tokens, 128, "SGLang's default");
        let chat = r#"{"model": "m", "messages": [{"role": "user", "content": "Hi"}],
            "max_completion_tokens": 5, "response_format": {"type": "text"}}"#;
        let job = read_job(Endpoint::Chat, chat.as_bytes()).unwrap();
        assert_eq!(job.prompt, Prompt::Text("User: Hi\n\nAssistant:".into()));
        assert_eq!(job.max_new_tokens, 5);
        assert_eq!(job.stop, chat::STOPS);
    }
}
