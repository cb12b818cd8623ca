//! Answers as Server-Sent Events, in each API's streaming shape: SGLang's `/generate`
//! sends the whole text so far in every event, OpenAI's endpoints send chunks of new text;
//! all end with `data: [DONE]`. A client that goes away closes the event channel, which
//! stops the generation at its next piece.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::mpsc;

use super::Worker;
use super::handlers::{Answer, now};
use super::run::Admitted;
use crate::api::Endpoint;
use crate::api::openai::{ChatChoice, ChatCompletion, ChatDelta, Completion, CompletionChoice};
use crate::api::sglang::GenerateResponse;

/// An intermediate `/generate` event: the text so far, and `meta_info` with only the id
/// and a null finish reason (the counts are not known until the end).
#[derive(Serialize)]
struct GenerateChunk<'a> {
    text: &'a str,
    meta_info: ChunkMeta<'a>,
}

#[derive(Serialize)]
struct ChunkMeta<'a> {
    id: &'a str,
    finish_reason: Option<()>,
}

fn event(v: &impl Serialize) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

/// Renders the pieces of one answer as events.
struct Chunks {
    endpoint: Endpoint,
    id: String,
    model: String,
    created: u64,
    text: String,
    leading: bool,
}

impl Chunks {
    fn completion(&self, choices: Vec<CompletionChoice>) -> Completion {
        Completion {
            id: format!("cmpl-{}", self.id),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: None,
            meta_info: None,
        }
    }

    fn chat(&self, choices: Vec<ChatChoice>) -> ChatCompletion {
        ChatCompletion {
            id: format!("chatcmpl-{}", self.id),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: None,
            meta_info: None,
        }
    }

    fn delta(&self, delta: ChatDelta, finish_reason: Option<String>) -> ChatCompletion {
        self.chat(vec![ChatChoice {
            index: 0,
            message: None,
            delta: Some(delta),
            logprobs: None,
            finish_reason,
        }])
    }

    /// The event opening the answer, if the API has one (chat announces the role).
    fn start(&self) -> Option<Event> {
        (self.endpoint == Endpoint::Chat).then(|| {
            let d = ChatDelta { role: Some("assistant".into()), content: Some(String::new()) };
            event(&self.delta(d, None))
        })
    }

    /// The event for a new piece of text, if it carries any.
    fn piece(&mut self, piece: &str) -> Option<Event> {
        match self.endpoint {
            Endpoint::Generate => {
                self.text.push_str(piece);
                Some(event(&GenerateChunk {
                    text: &self.text,
                    meta_info: ChunkMeta { id: &self.id, finish_reason: None },
                }))
            }
            Endpoint::Completions => Some(event(&self.completion(vec![CompletionChoice {
                index: 0,
                text: piece.to_string(),
                logprobs: None,
                finish_reason: None,
            }]))),
            Endpoint::Chat => {
                // The template ends with "Assistant:"; the answer's first space is not content.
                let piece = if self.leading { piece.trim_start() } else { piece };
                if piece.is_empty() {
                    return None;
                }
                self.leading = false;
                let d = ChatDelta { role: None, content: Some(piece.to_string()) };
                Some(event(&self.delta(d, None)))
            }
        }
    }

    /// The closing events: the finish reason (with `meta_info`), then `usage` if asked.
    fn finish(&self, a: &Answer, include_usage: bool) -> Vec<Event> {
        let meta = Some(a.meta_info());
        let usage = Some(a.usage());
        match self.endpoint {
            Endpoint::Generate => {
                vec![event(&GenerateResponse {
                    text: a.outcome.text.clone(),
                    meta_info: a.meta_info(),
                })]
            }
            Endpoint::Completions => {
                let last = CompletionChoice {
                    index: 0,
                    text: String::new(),
                    logprobs: None,
                    finish_reason: Some(a.finish_reason()),
                };
                let mut out =
                    vec![event(&Completion { meta_info: meta, ..self.completion(vec![last]) })];
                if include_usage {
                    out.push(event(&Completion { usage, ..self.completion(Vec::new()) }));
                }
                out
            }
            Endpoint::Chat => {
                let last = self.delta(ChatDelta::default(), Some(a.finish_reason()));
                let mut out = vec![event(&ChatCompletion { meta_info: meta, ..last })];
                if include_usage {
                    out.push(event(&ChatCompletion { usage, ..self.chat(Vec::new()) }));
                }
                out
            }
        }
    }
}

/// Starts running `a` and answers with its event stream.
pub(super) fn respond(w: Arc<Worker>, a: Admitted, id: String) -> Response {
    let (events, rx) = mpsc::channel::<Event>(64);
    let endpoint = a.job.endpoint;
    let include_usage = a.job.include_usage;
    let mut chunks = Chunks {
        endpoint,
        id,
        model: w.model_name(),
        created: now(),
        text: String::new(),
        leading: true,
    };
    tokio::spawn(async move {
        if let Some(e) = chunks.start()
            && events.send(e).await.is_err()
        {
            return;
        }
        let (pieces, mut piece_rx) = mpsc::channel::<String>(64);
        let runner = w.clone();
        let run = tokio::spawn(async move {
            runner.execute(a, Some(pieces), Arc::new(AtomicBool::new(false))).await
        });
        while let Some(piece) = piece_rx.recv().await {
            if let Some(e) = chunks.piece(&piece)
                && events.send(e).await.is_err()
            {
                // The client is gone: closing the piece channel stops the generation.
                break;
            }
        }
        drop(piece_rx);
        let result =
            run.await.unwrap_or_else(|e| Err(crate::api::ApiError::internal(e.to_string())));
        w.metrics.record(endpoint, &result);
        let last = match &result {
            Ok(o) => chunks.finish(&Answer { w: &w, id: &chunks.id, outcome: o }, include_usage),
            Err(e) => vec![event(&e.body())],
        };
        for e in last {
            let _ = events.send(e).await;
        }
        let _ = events.send(Event::default().data("[DONE]")).await;
    });
    Sse::new(receiver_stream(rx)).into_response()
}

fn receiver_stream(rx: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}
