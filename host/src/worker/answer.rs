//! A finished outcome rendered in each API's shapes: SGLang's `meta_info`, OpenAI's
//! `usage` and finish reason, and the whole answers of the three generation endpoints.
//! Whole answers (`handlers`) and the last events of a stream (`stream`) both use it.

use serde_json::Value;

use super::outcome::{Finish, Outcome};
use super::state::Worker;
use crate::api::openai::{
    ChatChoice, ChatCompletion, ChatMessageOut, Completion, CompletionChoice, Usage,
};
use crate::api::sglang::{FinishReason, GenerateResponse, MetaInfo};
use crate::clock::now_secs;

/// A finished outcome rendered in each API's shape.
pub(super) struct Answer<'a> {
    /// The worker that ran it (its id and model name go into the answer).
    pub w: &'a Worker,
    /// The request's id.
    pub id: &'a str,
    /// What the run produced.
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
            transferred_tokens: o.transferred_tokens,
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
            .with_transferred(o.transferred_tokens)
    }

    /// SGLang's `/generate` answer.
    pub fn generate(&self) -> GenerateResponse {
        GenerateResponse { text: self.outcome.text.clone(), meta_info: self.meta_info() }
    }

    /// OpenAI's `/v1/completions` answer.
    pub fn completion(&self) -> Completion {
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

    /// OpenAI's `/v1/chat/completions` answer.
    pub fn chat(&self) -> ChatCompletion {
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
