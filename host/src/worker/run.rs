//! Running one request: a place in the queue, the response cache, then the engine, with
//! stop sequences applied and the run ended early when its client has gone.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::http::StatusCode;
use locus_engine::{EngineError, FinishReason, GenerateRequest};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::outcome::{Finish, Outcome, Piece};
use super::responses::{Cached, Key};
use super::state::Worker;
use super::stop::StopMatcher;
use crate::api::{ApiError, Job, Prompt};

/// A checked request holding its place in the queue.
pub struct Admitted {
    /// The request as read.
    pub job: Job,
    started: Instant,
    key: Option<Key>,
    work: Work,
    _permit: OwnedSemaphorePermit,
    /// The worker to pull the prompt's prefix KV from, as a router named it.
    source: Option<String>,
}

enum Work {
    Hit(Cached),
    Run { ids: Vec<u32>, req: GenerateRequest },
}

impl Admitted {
    /// Names the worker to pull the prompt's prefix KV from (checked by the caller).
    pub fn with_source(self, source: Option<String>) -> Self {
        Self { source, ..self }
    }

    /// Tokens in the prompt (known before anything runs).
    pub fn prompt_tokens(&self) -> usize {
        match &self.work {
            Work::Hit(c) => c.prompt_tokens,
            Work::Run { ids, .. } => ids.len(),
        }
    }
}

/// Sampled requests without a seed differ on every call, so they are never answered from
/// the cache.
fn cache_key(job: &Job) -> Option<Key> {
    if job.temperature > 0.0 && job.seed.is_none() {
        return None;
    }
    // Greedy decoding ignores the seed and top_p: equal greedy requests share an entry.
    let (top_p, seed) = if job.temperature == 0.0 { (1.0, None) } else { (job.top_p, job.seed) };
    let params = (job.max_new_tokens, job.temperature.to_bits(), top_p.to_bits(), seed);
    let stops = (&job.stop, job.include_stop, job.ignore_eos, &job.stop_token_ids);
    Some(match &job.prompt {
        Prompt::Text(t) => Key::of(&((0u8, t), params, stops)),
        Prompt::Ids(ids) => Key::of(&((1u8, ids), params, stops)),
    })
}

fn engine_error(job: &Job, e: EngineError) -> ApiError {
    match &e {
        EngineError::PromptTooLong { .. } | EngineError::PromptTooLarge { .. } => {
            ApiError::invalid(job.param("prompt"), e.to_string())
                .with_code("context_length_exceeded")
        }
        EngineError::ExceedsKvBudget { .. } | EngineError::ExceedsContext { .. } => {
            ApiError::invalid(job.param("max_new_tokens"), e.to_string())
                .with_code("context_length_exceeded")
        }
        EngineError::QueueTimeout { .. } => {
            ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), 1)
                .with_code("queue_timeout")
        }
        EngineError::EmptyPrompt => ApiError::invalid(job.param("prompt"), e.to_string()),
        EngineError::InvalidParam { field, .. } => {
            ApiError::invalid(job.param(field), e.to_string())
        }
        _ => ApiError::internal(e.to_string()),
    }
}

impl Worker {
    /// Takes a place in the queue (429 when it is full), answers from the response cache
    /// or tokenizes and checks the prompt, so that whatever would refuse the request
    /// refuses it now, before an answer starts.
    pub(crate) async fn admit(self: &Arc<Self>, job: Job) -> Result<Admitted, ApiError> {
        let started = Instant::now();
        if self.refusing() {
            // A router retries a 503 on another worker; this one is going away.
            return Err(ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                "worker is shutting down",
                1,
            )
            .with_code(crate::api::SHUTTING_DOWN));
        }
        let Ok(permit) = self.queue.clone().try_acquire_owned() else {
            return Err(ApiError::overloaded(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "worker queue is full ({} requests waiting or running)",
                    self.options.max_queue
                ),
                1,
            )
            .with_code("queue_full"));
        };
        let key = cache_key(&job);
        // Cache-policy calls run off the async threads: a slow policy (up to its deadline)
        // holds a blocking thread, not the connections this thread serves.
        let hit = match key {
            Some(k) => {
                let w = self.clone();
                tokio::task::spawn_blocking(move || w.caches.response(&k)).await.ok().flatten()
            }
            None => None,
        };
        if let Some(hit) = hit {
            self.metrics.response_hits.inc();
            return Ok(Admitted {
                job,
                started,
                key,
                work: Work::Hit(hit),
                _permit: permit,
                source: None,
            });
        }
        self.metrics.response_misses.inc();
        let req = GenerateRequest {
            prompt: match &job.prompt {
                Prompt::Text(t) => t.clone(),
                Prompt::Ids(_) => String::new(),
            },
            // u32::MAX is "the rest of the context" (chat's default), as usize::MAX is to
            // the engine.
            max_new_tokens: match job.max_new_tokens {
                u32::MAX => usize::MAX,
                n => n as usize,
            },
            temperature: job.temperature,
            top_p: job.top_p,
            seed: job.seed,
            truncate_left: false,
            ignore_eos: job.ignore_eos,
            stop_token_ids: job.stop_token_ids.clone(),
            priority: job.priority,
        };
        let engine = self.engine.clone();
        let ids = match &job.prompt {
            Prompt::Ids(ids) => engine.check_ids(ids, &req).map(|_| ids.clone()),
            // Tokenizing a long prompt takes milliseconds of CPU: off the async threads.
            Prompt::Text(_) => {
                let req = req.clone();
                tokio::task::spawn_blocking(move || engine.prepare(&req))
                    .await
                    .map_err(|e| ApiError::internal(format!("tokenizer failed: {e}")))?
            }
        };
        let ids = ids.map_err(|e| engine_error(&job, e))?;
        Ok(Admitted {
            job,
            started,
            key,
            work: Work::Run { ids, req },
            _permit: permit,
            source: None,
        })
    }

    /// Runs an admitted request. Text goes to `pieces` as it is produced (already cut at
    /// stop sequences); the run ends early when `pieces` is closed or `cancel` is set, at
    /// the next piece or before the prompt runs if it is still waiting for the model.
    /// The channel is unbounded so that a client that reads slowly never blocks the
    /// model (a generation is at most the context long).
    pub(crate) async fn execute(
        self: &Arc<Self>,
        a: Admitted,
        pieces: Option<mpsc::UnboundedSender<Piece>>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Outcome, ApiError> {
        let Admitted { job, started, key, work, _permit, source } = a;
        let (ids, req) = match work {
            Work::Hit(hit) => {
                self.metrics
                    .prefix_tokens
                    .with_label_values(&["cached"])
                    .inc_by(hit.prompt_tokens as u64);
                if let Some(tx) = pieces {
                    let _ =
                        tx.send(Piece { text: hit.text.clone(), tokens: hit.completion_tokens });
                }
                return Ok(Outcome {
                    text: hit.text,
                    prompt_tokens: hit.prompt_tokens,
                    completion_tokens: hit.completion_tokens,
                    cached_tokens: hit.prompt_tokens,
                    transferred_tokens: None,
                    kv_source: None,
                    cache_hit: true,
                    finish: hit.finish,
                    latency: started.elapsed().as_secs_f64(),
                    // The whole answer is there at once.
                    ttft: (hit.completion_tokens > 0).then(|| started.elapsed().as_secs_f64()),
                });
            }
            Work::Run { ids, req } => (ids, req),
        };
        // Before the engine: its scheduler thread never waits on the network.
        let pulled = match &source {
            Some(s) => self.pull(s, &ids).await,
            None => None,
        };
        // What this worker held before the pull, and what the pull brought beyond it.
        let (local, brought) = pulled
            .as_ref()
            .map_or((0, 0), |(p, local)| (*local, p.tokens().saturating_sub(*local)));
        let prefix = pulled.map(|(p, _)| p);
        let engine = self.engine.clone();
        let (stops, include) = (job.stop.clone(), job.include_stop);
        let ran = tokio::task::spawn_blocking(move || {
            let _permit = _permit;
            let mut matcher = StopMatcher::new(stops, include);
            let mut gone = false;
            let mut first_token = None;
            let send = |text: String, tokens: usize, gone: &mut bool| {
                let closed = pieces.as_ref().is_some_and(|tx| {
                    if text.is_empty() {
                        tx.is_closed()
                    } else {
                        tx.send(Piece { text, tokens }).is_err()
                    }
                });
                *gone |= closed;
            };
            let g = engine.generate_with_prefix(&ids, &req, prefix, |piece, tokens| {
                if tokens > 0 && first_token.is_none() {
                    first_token = Some(Instant::now());
                }
                let out = matcher.push(piece);
                send(out, tokens, &mut gone);
                gone |= cancel.load(Ordering::Relaxed);
                if gone || matcher.matched().is_some() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            let tail = matcher.finish();
            let tokens = g.as_ref().map_or(0, |g| g.completion_tokens);
            send(tail, tokens, &mut gone);
            g.map(|g| (g, matcher, gone, first_token, Instant::now()))
        })
        .await
        .map_err(|e| ApiError::internal(format!("generation failed: {e}")))?;
        let (g, matcher, gone, first_token, ended) = ran.map_err(|e| engine_error(&job, e))?;
        let eos = self.engine.model_info().config.eos_token_id;
        let finish = match (matcher.matched(), gone, g.finish_reason) {
            (Some(s), _, _) => Finish::Stop(s.to_string()),
            (None, true, _) => Finish::Cancelled,
            (None, false, FinishReason::Stop) => {
                Finish::StopToken(g.stop_token.or(eos).unwrap_or_default())
            }
            (None, false, _) => Finish::Length,
        };
        let computed = g.prompt_tokens - g.cached_tokens;
        self.pulls.measured(computed, g.prefill_ms);
        // Of the prefix reused, what this worker did not hold before the pull came from it.
        let transferred =
            source.as_ref().map(|_| g.cached_tokens.saturating_sub(local).min(brought));
        let cached = g.cached_tokens - transferred.unwrap_or(0);
        let prefix_tokens = &self.metrics.prefix_tokens;
        prefix_tokens.with_label_values(&["cached"]).inc_by(cached as u64);
        prefix_tokens.with_label_values(&["transferred"]).inc_by(transferred.unwrap_or(0) as u64);
        prefix_tokens.with_label_values(&["computed"]).inc_by(computed as u64);
        let text = matcher.text().to_string();
        if finish != Finish::Cancelled {
            let priority = job.priority.to_string();
            self.metrics.queue.with_label_values(&[&priority]).observe(g.queue_ms / 1e3);
            if let Some(first) = first_token {
                let ttft = first.duration_since(started).as_secs_f64();
                self.metrics.ttft.with_label_values(&[&priority]).observe(ttft);
                if g.completion_tokens > 1 {
                    let per_token = ended.duration_since(first).as_secs_f64();
                    self.metrics.tpot.observe(per_token / (g.completion_tokens - 1) as f64);
                }
            }
        }
        if finish == Finish::Cancelled {
            self.metrics.cancelled.inc();
        } else if let Some(key) = key {
            let value = Cached {
                text: text.clone(),
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                finish: finish.clone(),
            };
            // Awaited, so that the next request finds it.
            let w = self.clone();
            let _ = tokio::task::spawn_blocking(move || w.caches.keep_response(&key, value)).await;
        }
        Ok(Outcome {
            text,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            cached_tokens: cached,
            transferred_tokens: transferred,
            kv_source: source.filter(|_| transferred.is_some_and(|t| t > 0)),
            cache_hit: false,
            finish,
            latency: started.elapsed().as_secs_f64(),
            ttft: first_token.map(|t| t.duration_since(started).as_secs_f64()),
        })
    }
}
