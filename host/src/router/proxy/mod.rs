//! Sending a request on: the policy picks a worker, the body goes there unchanged (with
//! the request id), a refused connection or a 5xx answer is retried on the policy's next
//! choice among the rest, and the answer comes back (streams relayed as they arrive).
//!
//! This file is the attempt loop. Its parts import one way, each only those listed after
//! it: `relay` passes an answer back (a whole JSON answer itself, an event stream through
//! `stream`), `attempt` reports each attempt once, `counts` reads what an answer says
//! about its request, and `outcome` classifies what happened to an attempt, for all of
//! them.

mod attempt;
mod counts;
mod outcome;
mod relay;
mod stream;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::flow::{Identity, Ticket};
use super::gateway::Gateway;
use super::registry::Backend;
use super::tokens::PromptBlocks;
use crate::api::{ApiError, CLUSTER_TOKEN, Job, KV_SOURCE, PRIORITY, REQUEST_ID, rank};
use attempt::Attempt;
use locus_policy::{Ask, Completion, Outcome, Request, Workers};
use locus_tokens::BLOCK_TOKENS;
use outcome::Seen;

pub use relay::ROUTE_US;

/// Prompts longer than this are shown to the policy by their leading part only.
pub const ROUTING_PROMPT_BYTES: usize = 8192;

impl Gateway {
    /// What the policy is told about `candidates`: live in-flight counts, the room left
    /// under each one's dispatch limit (when the router queues) and each one's last load
    /// report; KV groups only when this router holds the cluster token (it could not pass a
    /// source on otherwise).
    fn view(&self, candidates: &[Arc<Backend>]) -> Workers {
        let moves_kv = self.options.cluster_token.is_some();
        let queueing = self.queueing();
        let mut w = Workers::with_capacity(candidates.len());
        for b in candidates {
            w.ids.push(b.id());
            let in_flight = b.in_flight();
            w.in_flight.push(in_flight);
            w.room.push(queueing.then(|| self.dispatch_limit(b).saturating_sub(in_flight)));
            let clamp = |n: u64| n.min(u64::from(u32::MAX)) as u32;
            // An unknown load is all zeros beside `load-known` false.
            let load = b.load();
            let (age, waiting, running, used, total, tps) = match &load {
                Some(r) => {
                    let l = &r.load;
                    let age = r.at.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                    let (used, total) = (clamp(l.kv_blocks_used), clamp(l.kv_blocks_total));
                    (Some(age), l.waiting, l.running, used, total, l.tokens_per_second as f32)
                }
                None => (None, 0, 0, 0, 0, 0.0),
            };
            let l = load.as_ref().map(|r| &r.load);
            let group = l.and_then(|l| l.kv_fingerprint.as_deref()).filter(|_| moves_kv);
            w.kv_group.push(group.map(|f| {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                f.hash(&mut h);
                h.finish()
            }));
            w.prefill_tokens_per_second
                .push(l.and_then(|l| l.prefill_tokens_per_second).map(|x| x as f32));
            w.kv_pull_bytes_per_second
                .push(l.and_then(|l| l.kv_pull_bytes_per_second).map(|x| x as f32));
            w.kv_block_bytes
                .push(l.and_then(|l| l.kv_block_bytes).map(|x| x.min(u64::from(u32::MAX)) as u32));
            w.load_known.push(age.is_some());
            w.load_age_ms.push(age.unwrap_or(0));
            w.waiting.push(waiting);
            w.running.push(running);
            w.kv_used_blocks.push(used);
            w.kv_total_blocks.push(total);
            w.tokens_per_second.push(tps);
        }
        w
    }

    /// Prompt tokens of `req` that no worker (or `worker`) holds, as the router predicts
    /// them from the KV events; `None` when the prompt was not counted whole.
    fn uncached(&self, req: &Request, worker: Option<u64>) -> Option<u32> {
        let total = req.prompt_tokens?;
        let kv = self.policy.kv();
        let held = match worker {
            Some(w) => kv.leading(w, &req.block_hashes),
            None => {
                let ids: Vec<u64> = self.registry.healthy().iter().map(|b| b.id()).collect();
                kv.leading_each(&ids, &req.block_hashes).into_iter().max().unwrap_or(0) as usize
            }
        };
        Some(total.saturating_sub((held * BLOCK_TOKENS).min(u32::MAX as usize) as u32))
    }

    /// Waits in the queue for a dispatch slot, telling the admission policy what the
    /// request is (its prompt counted now: the routing policy is given the same hashes).
    async fn wait_turn(
        self: &Arc<Self>,
        req: &mut Request,
        job: &Job,
        who: &Identity,
        bytes: usize,
    ) -> Result<Ticket, ApiError> {
        let max = self.options.route_tokens;
        (req.block_hashes, req.prompt_tokens) = self.tokens.prompt_blocks(&job.prompt, max);
        let uncached = self.uncached(req, None);
        let slots = self.slots();
        let waiting = self.queue.enter(
            req.id,
            who,
            req.prompt_tokens,
            uncached,
            job.max_new_tokens,
            bytes,
            slots,
        )?;
        waiting.wait().await
    }

    /// Routes `job` (read from `body`) and relays the chosen worker's answer, after its
    /// turn in the queue.
    pub(super) async fn forward(
        self: &Arc<Self>,
        job: &Job,
        request_id: &str,
        who: &Identity,
        session: Option<String>,
        body: Bytes,
    ) -> Response {
        let started = Instant::now();
        let endpoint = job.endpoint;
        let mut req = Request::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            job.routing_prompt(ROUTING_PROMPT_BYTES),
            job.max_new_tokens,
        );
        req.session = session;
        let max = self.options.route_tokens;
        let blocks = PromptBlocks { tokens: &self.tokens, prompt: &job.prompt, max };
        let ticket = if self.queueing() {
            match self.wait_turn(&mut req, job, who, body.len()).await {
                Ok(t) => Some(t),
                Err(e) => {
                    self.metrics
                        .requests
                        .with_label_values(&[endpoint.name(), e.status.as_str()])
                        .inc();
                    return e.into_response();
                }
            }
        } else {
            None
        };
        let id = req.id;
        let mut ask = match ticket {
            // Counted for the queue already.
            Some(_) => Ask::new(req),
            None => Ask::with_blocks(req, &blocks),
        };
        let mut candidates = self.registry.healthy();
        // From the queue, the policy sees every healthy worker (a full one may hold the
        // prompt's KV and be named as its source), but the request goes where there is
        // room: a full worker chosen while another has room is a fallback, and the policy
        // is asked again among those with room. Full everywhere (a race): any worker.
        let room: Option<Vec<_>> = ticket.as_ref().and_then(|_| {
            let room: Vec<_> = candidates
                .iter()
                .filter(|b| b.in_flight() < self.dispatch_limit(b))
                .cloned()
                .collect();
            (!room.is_empty() && room.len() < candidates.len()).then_some(room)
        });
        let has_room =
            |b: &Arc<Backend>| room.as_ref().is_none_or(|r| r.iter().any(|x| Arc::ptr_eq(x, b)));
        let ahead = ticket.as_ref().is_some_and(|t| t.ahead);
        let mut ticket = ticket;
        let mut last_error = None;
        // The first attempt's routing time includes tokenizing (after the queue, if
        // the prompt was not counted for it); retries add only theirs.
        let mut route_from = Instant::now();
        let mut route_us = 0u64;
        let mut routed = None;
        for attempt in 0..=self.options.max_retries {
            let ws = self.view(&candidates);
            let mut decided = self.policy.route(&mut ask, &ws);
            if let Some(d) = &decided
                && !has_room(&candidates[d.index])
                && candidates.iter().any(has_room)
            {
                self.metrics.full_choices.inc();
                candidates.retain(has_room);
                decided = self.policy.route(&mut ask, &self.view(&candidates));
            }
            let spent = route_from.elapsed();
            self.metrics.route.observe(spent.as_secs_f64());
            route_us += spent.as_micros() as u64;
            let Some(decision) = decided else { break };
            routed = Some(decision.routed());
            if decision.fault.is_some() {
                self.metrics.fallbacks.inc();
            }
            let source =
                decision.kv_source.map(|j| (candidates[j].url.clone(), candidates[j].id()));
            if let Some(why) = decision.kv_source_dropped {
                self.metrics.kv_sources.with_label_values(&[why.name()]).inc();
            } else if source.is_some() {
                self.metrics.kv_sources.with_label_values(&["named"]).inc();
            }
            let backend = candidates.remove(decision.index);
            // Retries go to the others with room while there are any.
            if candidates.iter().any(has_room) {
                candidates.retain(has_room);
            }
            if attempt == 0 && ticket.is_some() {
                // What a pull brings is not computed: charge what neither holds.
                let held = [Some(backend.id()), source.as_ref().map(|s| s.1)];
                let uncached = held
                    .into_iter()
                    .flatten()
                    .filter_map(|w| self.uncached(&ask.request, Some(w)))
                    .min();
                self.queue.admission().dispatched(id, uncached);
            }
            self.metrics.decisions.with_label_values(&[&backend.url]).inc();
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let guard = backend.begin();
            let mut done = Completion::new(ask.request.id, backend.id(), Outcome::Failed);
            done.attempt = attempt as u32;
            let mut pending = Attempt::new(self, done, started, route_us, decision.routed());
            let mut post = self
                .client
                .post(format!("{}{}", backend.url, endpoint.path()))
                .header(header::CONTENT_TYPE, "application/json")
                .header(REQUEST_ID, request_id)
                .header(PRIORITY, rank(who.priority, ahead).to_string());
            // The token marks the rank (and a source) as the cluster's: a worker with a
            // cluster token ignores both from anyone else.
            if let Some(token) = &self.options.cluster_token {
                if crate::http::may_carry_token(&backend.url, self.options.cluster_over_http) {
                    post = post.header(CLUSTER_TOKEN, token);
                    if let Some((source, _)) = &source {
                        post = post.header(KV_SOURCE, source);
                    }
                } else {
                    crate::http::warn_token_withheld(
                        "dispatching (ranks, KV sources)",
                        &backend.url,
                    );
                }
            }
            let sent = post.body(body.clone()).send().await;
            let seen = match &sent {
                Ok(r) => Seen::Answer(r.status()),
                Err(e) => Seen::SendError(e),
            };
            let verdict = seen.verdict();
            if let Some(mark) = &verdict.mark {
                backend.failed(mark.threshold(self.registry.fail_threshold), &mark.reason);
            }
            match sent {
                Ok(r) if !verdict.retry => {
                    return self.relay(endpoint, pending, guard, ticket.take(), r).await;
                }
                Ok(r) => {
                    last_error = Some(format!("{} answered {}", backend.url, r.status()));
                    pending.done.status = r.status().as_u16();
                }
                Err(e) => last_error = Some(format!("{}: {e}", backend.url)),
            }
            pending.done.outcome = verdict.outcome;
            drop(guard);
            pending.end(false);
            route_from = Instant::now();
        }
        self.metrics.requests.with_label_values(&[endpoint.name(), "503"]).inc();
        if let Some(r) = routed {
            self.policy.unserved(r);
        }
        self.queue.completed(id, None);
        let msg = match last_error {
            Some(e) => format!("no worker could serve the request (last error: {e})"),
            None => "no healthy worker".into(),
        };
        ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, msg, 1).into_response()
    }
}
