//! Answers as Server-Sent Events, in each API's streaming shape: SGLang's `/generate`
//! sends the whole text so far in every event, OpenAI's endpoints send chunks of new text;
//! all end with `data: [DONE]`. A client that goes away closes the event channel, which
//! stops the generation at its next piece (or before its prompt runs, if it is waiting).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::mpsc;

use super::answer::Answer;
use super::outcome::Piece;
use super::run::Admitted;
use super::state::Worker;
use crate::api::openai::{ChatChoice, ChatCompletion, ChatDelta, Completion, CompletionChoice};
use crate::api::sglang::GenerateResponse;
use crate::api::{ApiError, Endpoint};
use crate::clock::now_secs;

/// An intermediate `/generate` event: the text so far, and `meta_info` with the counts
/// known so far (SGLang's clients read `completion_tokens` from every event) and a null
/// finish reason. `cached_tokens` is only known at the end, so it is absent until then.
#[derive(Serialize)]
struct GenerateChunk<'a> {
    text: &'a str,
    meta_info: ChunkMeta<'a>,
}

#[derive(Serialize)]
struct ChunkMeta<'a> {
    id: &'a str,
    finish_reason: Option<()>,
    prompt_tokens: usize,
    completion_tokens: usize,
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
    prompt_tokens: usize,
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
    fn piece(&mut self, piece: &str, tokens: usize) -> Option<Event> {
        match self.endpoint {
            Endpoint::Generate => {
                self.text.push_str(piece);
                Some(event(&GenerateChunk {
                    text: &self.text,
                    meta_info: ChunkMeta {
                        id: &self.id,
                        finish_reason: None,
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: tokens,
                    },
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
        created: now_secs(),
        prompt_tokens: a.prompt_tokens(),
        text: String::new(),
        leading: true,
    };
    tokio::spawn(async move {
        if let Some(e) = chunks.start()
            && events.send(e).await.is_err()
        {
            return;
        }
        let (pieces, mut piece_rx) = mpsc::unbounded_channel::<Piece>();
        let cancel = Arc::new(AtomicBool::new(false));
        let (runner, flag) = (w.clone(), cancel.clone());
        let run = tokio::spawn(async move {
            let result = runner.execute(a, Some(pieces), flag).await;
            runner.metrics.record(endpoint, &result);
            result
        });
        loop {
            let piece = tokio::select! {
                p = piece_rx.recv() => p,
                // The client left while nothing was being sent (the request may still be
                // waiting for the model): tell the run at once.
                () = events.closed() => None,
            };
            let Some(piece) = piece else { break };
            if let Some(e) = chunks.piece(&piece.text, piece.tokens)
                && events.send(e).await.is_err()
            {
                break;
            }
        }
        if events.is_closed() {
            cancel.store(true, Ordering::Relaxed);
        }
        drop(piece_rx);
        let result = run.await.unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
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
