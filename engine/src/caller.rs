//! A caller's side of a generation in the batch: hears the scheduler's events, hands the
//! text to the caller as it comes, asks the caller whether to go on while nothing comes, and
//! assembles the [`Generation`] from what it heard.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{EngineError, Result};
use crate::request::{FinishReason, Generation};
use crate::scheduler::Event;

/// How often a waiting caller of [`crate::Engine::generate_until`] is asked whether to go on
/// when no text arrives (while queued or prefilling).
const PROBE: Duration = Duration::from_millis(20);

/// Follows a generation submitted at `submitted` to its end: each piece of text heard on
/// `rx` goes to `on_text(piece, tokens_so_far)`, which is also asked every [`PROBE`] while
/// nothing arrives; when it breaks, `cancel` tells the scheduler to drop the sequence and the
/// generation ends as [`FinishReason::Aborted`]. `prompt_tokens` and `truncated_tokens` are
/// the prompt's figures, as checked before submission.
pub(crate) fn follow(
    rx: mpsc::Receiver<Event>,
    cancel: &AtomicBool,
    submitted: Instant,
    prompt_tokens: usize,
    truncated_tokens: usize,
    mut on_text: impl FnMut(&str, usize) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut heard = Heard::default();
    let generation = |heard: Heard, end: FinishReason, stop_token: Option<u32>| {
        let total_ms = submitted.elapsed().as_secs_f64() * 1e3;
        heard.into_generation(prompt_tokens, truncated_tokens, end, stop_token, total_ms)
    };
    loop {
        match rx.recv_timeout(PROBE) {
            Ok(Event::Admitted { queue_ms }) => heard.queue_ms = Some(queue_ms),
            Ok(Event::Started { cached_tokens, prefill_ms }) => {
                heard.cached_tokens = cached_tokens;
                heard.prefill_ms = Some(prefill_ms);
            }
            Ok(Event::Text { piece, ids }) => {
                heard.token_ids.extend(ids);
                if piece.is_empty() {
                    continue;
                }
                heard.text.push_str(&piece);
                if on_text(&piece, heard.token_ids.len()).is_break() {
                    cancel.store(true, Ordering::Relaxed);
                    return Ok(generation(heard, FinishReason::Aborted, None));
                }
            }
            Ok(Event::Done { end, stop_token }) => {
                let g = generation(heard, end?, stop_token);
                // The target this event had while this loop was in engine.rs: log filters
                // keep matching it.
                tracing::debug!(
                    target: "locus_engine::engine",
                    prompt_tokens = g.prompt_tokens,
                    cached_tokens = g.cached_tokens,
                    completion_tokens = g.completion_tokens,
                    queue_ms = g.queue_ms,
                    prefill_ms = g.prefill_ms,
                    decode_ms = g.decode_ms,
                    "generated"
                );
                return Ok(g);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if on_text("", heard.token_ids.len()).is_break() {
                    cancel.store(true, Ordering::Relaxed);
                    return Ok(generation(heard, FinishReason::Aborted, None));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let why = "the scheduler dropped this generation (see the worker's log)";
                return Err(EngineError::Internal(why.into()));
            }
        }
    }
}

/// What a caller of the scheduler has heard of its generation so far.
#[derive(Default)]
struct Heard {
    text: String,
    token_ids: Vec<u32>,
    cached_tokens: usize,
    queue_ms: Option<f64>,
    prefill_ms: Option<f64>,
}

impl Heard {
    /// The generation as heard, ended by `end` `total_ms` after it was submitted. Time not
    /// spent queued or on the prompt was spent decoding; not admitted yet, all of it was
    /// queued; admitted but the prompt not done, the rest was prefill.
    fn into_generation(
        self,
        prompt_tokens: usize,
        truncated_tokens: usize,
        end: FinishReason,
        stop_token: Option<u32>,
        total_ms: f64,
    ) -> Generation {
        let queue_ms = self.queue_ms.unwrap_or(total_ms);
        let prefill_ms = self.prefill_ms.unwrap_or(total_ms - queue_ms);
        Generation {
            text: self.text,
            completion_tokens: self.token_ids.len(),
            token_ids: self.token_ids,
            prompt_tokens,
            cached_tokens: self.cached_tokens,
            truncated_tokens,
            finish_reason: end,
            stop_token,
            queue_ms,
            prefill_ms,
            decode_ms: (total_ms - queue_ms - prefill_ms).max(0.0),
        }
    }
}
