//! The generation endpoints: read the body into a [`Job`], admit it, and answer whole in
//! the endpoint's own shape (or hand it to [`super::stream`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::run::{Finish, Outcome};
use super::{Worker, stream};
use crate::api::openai::{
    ChatChoice, ChatCompletion, ChatMessageOut, Completion, CompletionChoice, Usage,
};
use crate::api::sglang::{FinishReason, GenerateResponse, MetaInfo};
use crate::api::{ApiError, Endpoint, read_job};
use crate::clock::now_secs;
use crate::http::{RequestId, tagged};

pub(super) async fn generate(w: State<Arc<Worker>>, id: RequestId, body: Bytes) -> Response {
    answer(w.0, Endpoint::Generate, id, body).await
}

pub(super) async fn completions(w: State<Arc<Worker>>, id: RequestId, body: Bytes) -> Response {
    answer(w.0, Endpoint::Completions, id, body).await
}

pub(super) async fn chat(w: State<Arc<Worker>>, id: RequestId, body: Bytes) -> Response {
    answer(w.0, Endpoint::Chat, id, body).await
}

/// Sets its flag when dropped: a handler future dropped before it finished means that its
/// client has gone, and the generation it started should stop.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn answer(w: Arc<Worker>, endpoint: Endpoint, rid: RequestId, body: Bytes) -> Response {
    let resp = respond(w, endpoint, &rid, body).await;
    tagged(resp, &rid)
}

async fn respond(w: Arc<Worker>, endpoint: Endpoint, rid: &RequestId, body: Bytes) -> Response {
    let admitted = match read_job(endpoint, &body) {
        Ok(job) => w.admit(job).await,
        Err(e) => Err(e),
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(e) => {
            w.metrics.record(endpoint, &Err(e.clone()));
            return e.into_response();
        }
    };
    let id = admitted.job.rid.clone().unwrap_or_else(|| rid.0.clone());
    if admitted.job.stream {
        return stream::respond(w, admitted, id);
    }
    let job = admitted.job.clone();
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    // A task of its own: if the client leaves, this handler is dropped, and the run
    // (told by `cancel`) still ends, frees the model and is counted.
    let (runner, flag) = (w.clone(), cancel.0.clone());
    let run = tokio::spawn(async move {
        let result = runner.execute(admitted, None, flag).await;
        runner.metrics.record(endpoint, &result);
        result
    });
    let result = run.await.unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    match result {
        Ok(o) => {
            let answer = Answer { w: &w, id: &id, outcome: &o };
            match job.endpoint {
                Endpoint::Generate => Json(answer.generate()).into_response(),
                Endpoint::Completions => Json(answer.completion()).into_response(),
                Endpoint::Chat => Json(answer.chat()).into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

/// A finished outcome rendered in each API's shape.
pub(super) struct Answer<'a> {
    pub w: &'a Worker,
    pub id: &'a str,
    pub outcome: &'a Outcome,
}

impl Answer<'_> {
    /// OpenAI's finish reason.
    pub fn finish_reason(&self) -> String {
        match self.outcome.finish {
            Finish::Length => "length",
            Finish::StopToken(_) | Finish::Stop(_) => "stop",
            Finish::Cancelled => "abort",
        }
        .into()
    }

    /// SGLang's `meta_info`.
    pub fn meta_info(&self) -> MetaInfo {
        let o = self.outcome;
        let finish = match &o.finish {
            Finish::Length => FinishReason {
                kind: "length".into(),
                length: Some(o.completion_tokens),
                matched: None,
            },
            Finish::StopToken(id) => {
                FinishReason { kind: "stop".into(), length: None, matched: Some(Value::from(*id)) }
            }
            Finish::Stop(s) => {
                FinishReason { kind: "stop".into(), length: None, matched: Some(s.clone().into()) }
            }
            Finish::Cancelled => FinishReason { kind: "abort".into(), length: None, matched: None },
        };
        MetaInfo {
            id: self.id.to_string(),
            finish_reason: Some(finish),
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
            cached_tokens: o.cached_tokens,
            cache_hit: o.cache_hit,
            worker_id: self.w.options.worker_id.clone(),
            e2e_latency: o.latency,
            ttft: o.ttft,
        }
    }

    /// OpenAI's `usage`.
    pub fn usage(&self) -> Usage {
        let o = self.outcome;
        Usage::new(o.prompt_tokens, o.completion_tokens, o.cached_tokens)
    }

    fn generate(&self) -> GenerateResponse {
        GenerateResponse { text: self.outcome.text.clone(), meta_info: self.meta_info() }
    }

    fn completion(&self) -> Completion {
        Completion {
            id: format!("cmpl-{}", self.id),
            object: "text_completion".into(),
            created: now_secs(),
            model: self.w.model_name(),
            choices: vec![CompletionChoice {
                index: 0,
                text: self.outcome.text.clone(),
                logprobs: None,
                finish_reason: Some(self.finish_reason()),
            }],
            usage: Some(self.usage()),
            meta_info: Some(self.meta_info()),
        }
    }

    fn chat(&self) -> ChatCompletion {
        ChatCompletion {
            id: format!("chatcmpl-{}", self.id),
            object: "chat.completion".into(),
            created: now_secs(),
            model: self.w.model_name(),
            choices: vec![ChatChoice {
                index: 0,
                message: Some(ChatMessageOut {
                    role: "assistant".into(),
                    content: self.outcome.text.trim_start().to_string(),
                }),
                delta: None,
                logprobs: None,
                finish_reason: Some(self.finish_reason()),
            }],
            usage: Some(self.usage()),
            meta_info: Some(self.meta_info()),
        }
    }
}
