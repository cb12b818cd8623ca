//! Routing policies: the `router` world.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::fallback;
use super::kv_feed::{KvFeed, Missed};
use crate::runtime::Fault;
use crate::runtime::sandbox::{Limits, State};
use crate::runtime::slot::Slot;
use crate::runtime::world::{Feed, World};

#[allow(missing_docs)]
mod v5 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router",
        additional_derives: [serde::Serialize],
    });
}

#[allow(missing_docs)]
mod v4 {
    wasmtime::component::bindgen!({ path: "../wit/0.4.0", world: "router" });
}

/// 0.2.0 and 0.3.0 share one router world (0.3.0 added only the admission world).
#[allow(missing_docs)]
mod v2 {
    wasmtime::component::bindgen!({ path: "../wit/0.3.0", world: "router" });
}

#[allow(missing_docs)]
mod v1 {
    wasmtime::component::bindgen!({ path: "../wit/0.1.0", world: "router" });
}

pub use v5::locus::policy::types::{Completion, Outcome, Request, RouteChoice, Workers};

/// Longest session key the router hands a policy, in bytes: a client chooses it, and it
/// reaches the policy's memory (and a shadow's queue), so the router refuses longer ones.
pub const SESSION_BYTES_MAX: usize = 256;

/// Builds [`Workers`] from `(id, in_flight)` pairs, with no load reported yet.
pub fn workers(iter: impl IntoIterator<Item = (u64, u32)>) -> Workers {
    let (ids, in_flight): (Vec<u64>, Vec<u32>) = iter.into_iter().unzip();
    let n = ids.len();
    Workers {
        ids,
        in_flight,
        room: vec![None; n],
        load_known: vec![false; n],
        load_age_ms: vec![0; n],
        waiting: vec![0; n],
        running: vec![0; n],
        kv_used_blocks: vec![0; n],
        kv_total_blocks: vec![0; n],
        tokens_per_second: vec![0.0; n],
        kv_group: vec![None; n],
        prefill_tokens_per_second: vec![None; n],
        kv_pull_bytes_per_second: vec![None; n],
        kv_block_bytes: vec![None; n],
    }
}

impl Workers {
    /// An empty list with room for `n` workers.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            in_flight: Vec::with_capacity(n),
            room: Vec::with_capacity(n),
            load_known: Vec::with_capacity(n),
            load_age_ms: Vec::with_capacity(n),
            waiting: Vec::with_capacity(n),
            running: Vec::with_capacity(n),
            kv_used_blocks: Vec::with_capacity(n),
            kv_total_blocks: Vec::with_capacity(n),
            tokens_per_second: Vec::with_capacity(n),
            kv_group: Vec::with_capacity(n),
            prefill_tokens_per_second: Vec::with_capacity(n),
            kv_pull_bytes_per_second: Vec::with_capacity(n),
            kv_block_bytes: Vec::with_capacity(n),
        }
    }

    /// Whether every list has one entry per worker.
    pub fn consistent(&self) -> bool {
        let n = self.ids.len();
        [
            self.in_flight.len(),
            self.room.len(),
            self.load_known.len(),
            self.load_age_ms.len(),
            self.waiting.len(),
            self.running.len(),
            self.kv_used_blocks.len(),
            self.kv_total_blocks.len(),
            self.tokens_per_second.len(),
            self.kv_group.len(),
            self.prefill_tokens_per_second.len(),
            self.kv_pull_bytes_per_second.len(),
            self.kv_block_bytes.len(),
        ]
        .iter()
        .all(|&l| l == n)
    }
}

impl Request {
    /// A request with only a prompt (no block hashes, token count or session).
    pub fn new(id: u64, prompt: impl Into<String>, max_new_tokens: u32) -> Self {
        Self {
            id,
            prompt: prompt.into(),
            max_new_tokens,
            block_hashes: Vec::new(),
            prompt_tokens: None,
            session: None,
        }
    }
}

impl Completion {
    /// A completion of `outcome` with nothing measured yet.
    pub fn new(request_id: u64, worker_id: u64, outcome: Outcome) -> Self {
        Self {
            request_id,
            worker_id,
            outcome,
            status: 0,
            attempt: 0,
            latency_us: 0,
            ttft_us: None,
            prompt_tokens: None,
            cached_tokens: None,
            response_cache_hit: None,
            generated_tokens: None,
        }
    }
}

/// A router component of any contract version.
pub(crate) enum Pre {
    V5(v5::RouterPre<State>),
    V4(v4::RouterPre<State>),
    V2(v2::RouterPre<State>),
    V1(v1::RouterPre<State>),
}

pub(crate) enum Bindings {
    V5(v5::Router),
    V4(v4::Router),
    V2(v2::Router),
    V1(v1::Router),
}

/// `to_vN_request` and `to_vN_completion` for an older contract whose request and
/// completion have the current shape (0.2.0 to 0.4.0): one body, each module's own types.
macro_rules! same_shape_request_and_completion {
    ($m:ident, $request:ident, $completion:ident) => {
        fn $request(r: &Request) -> $m::locus::policy::types::Request {
            $m::locus::policy::types::Request {
                id: r.id,
                prompt: r.prompt.clone(),
                max_new_tokens: r.max_new_tokens,
                block_hashes: r.block_hashes.clone(),
                prompt_tokens: r.prompt_tokens,
                session: r.session.clone(),
            }
        }

        fn $completion(c: &Completion) -> $m::locus::policy::types::Completion {
            use $m::locus::policy::types::Outcome as O;
            $m::locus::policy::types::Completion {
                request_id: c.request_id,
                worker_id: c.worker_id,
                outcome: match c.outcome {
                    Outcome::Ok => O::Ok,
                    Outcome::Rejected => O::Rejected,
                    Outcome::Overloaded => O::Overloaded,
                    Outcome::Failed => O::Failed,
                    Outcome::Unreachable => O::Unreachable,
                    Outcome::Timeout => O::Timeout,
                    Outcome::Broken => O::Broken,
                    Outcome::Cancelled => O::Cancelled,
                },
                status: c.status,
                attempt: c.attempt,
                latency_us: c.latency_us,
                ttft_us: c.ttft_us,
                prompt_tokens: c.prompt_tokens,
                cached_tokens: c.cached_tokens,
                response_cache_hit: c.response_cache_hit,
                generated_tokens: c.generated_tokens,
            }
        }
    };
}

same_shape_request_and_completion!(v4, to_v4_request, to_v4_completion);
same_shape_request_and_completion!(v2, to_v2_request, to_v2_completion);

fn to_v4_workers(w: &Workers) -> v4::locus::policy::types::Workers {
    v4::locus::policy::types::Workers {
        ids: w.ids.clone(),
        in_flight: w.in_flight.clone(),
        load_known: w.load_known.clone(),
        load_age_ms: w.load_age_ms.clone(),
        waiting: w.waiting.clone(),
        running: w.running.clone(),
        kv_used_blocks: w.kv_used_blocks.clone(),
        kv_total_blocks: w.kv_total_blocks.clone(),
        tokens_per_second: w.tokens_per_second.clone(),
        kv_group: w.kv_group.clone(),
        prefill_tokens_per_second: w.prefill_tokens_per_second.clone(),
        kv_pull_bytes_per_second: w.kv_pull_bytes_per_second.clone(),
        kv_block_bytes: w.kv_block_bytes.clone(),
    }
}

fn to_v2_workers(w: &Workers) -> v2::locus::policy::types::Workers {
    v2::locus::policy::types::Workers {
        ids: w.ids.clone(),
        in_flight: w.in_flight.clone(),
        load_known: w.load_known.clone(),
        load_age_ms: w.load_age_ms.clone(),
        waiting: w.waiting.clone(),
        running: w.running.clone(),
        kv_used_blocks: w.kv_used_blocks.clone(),
        kv_total_blocks: w.kv_total_blocks.clone(),
        tokens_per_second: w.tokens_per_second.clone(),
    }
}

fn to_v1_request(r: &Request) -> v1::locus::policy::types::Request {
    v1::locus::policy::types::Request {
        id: r.id,
        prompt: r.prompt.clone(),
        max_new_tokens: r.max_new_tokens,
    }
}

fn to_v1_workers(w: &Workers) -> v1::locus::policy::types::Workers {
    v1::locus::policy::types::Workers { ids: w.ids.clone(), in_flight: w.in_flight.clone() }
}

fn to_v1_completion(c: &Completion) -> v1::locus::policy::types::Completion {
    v1::locus::policy::types::Completion {
        request_id: c.request_id,
        worker_id: c.worker_id,
        ok: c.outcome == Outcome::Ok,
        latency_us: c.latency_us,
        // 0.1.0 has no "unknown": what it always got for a count it could not know.
        prompt_tokens: c.prompt_tokens.unwrap_or(0),
        cached_tokens: c.cached_tokens.unwrap_or(0),
    }
}

impl Bindings {
    fn route(
        &self,
        store: &mut Store<State>,
        req: &Request,
        workers: &Workers,
    ) -> wasmtime::Result<Result<RouteChoice, String>> {
        let worker =
            |r: Result<u32, String>| r.map(|worker| RouteChoice { worker, kv_source: None });
        match self {
            Self::V5(b) => b.call_route(store, req, workers),
            Self::V4(b) => b
                .call_route(store, &to_v4_request(req), &to_v4_workers(workers))
                .map(|r| r.map(|c| RouteChoice { worker: c.worker, kv_source: c.kv_source })),
            Self::V2(b) => {
                b.call_route(store, &to_v2_request(req), &to_v2_workers(workers)).map(worker)
            }
            Self::V1(b) => {
                b.call_route(store, &to_v1_request(req), &to_v1_workers(workers)).map(worker)
            }
        }
    }

    fn observe(
        &self,
        store: &mut Store<State>,
        done: &Completion,
        answered: bool,
    ) -> wasmtime::Result<()> {
        match self {
            Self::V5(b) => b.call_observe(store, *done),
            Self::V4(b) => b.call_observe(store, to_v4_completion(done)),
            Self::V2(b) => b.call_observe(store, to_v2_completion(done)),
            // 0.1.0 promised one completion per request, once a worker answered it.
            Self::V1(b) if answered => b.call_observe(store, to_v1_completion(done)),
            Self::V1(_) => Ok(()),
        }
    }

    fn kv_events(
        &self,
        store: &mut Store<State>,
        worker: u64,
        cleared: bool,
        removed: &[u64],
        stored: &[u64],
    ) -> wasmtime::Result<()> {
        match self {
            Self::V5(b) => b.call_kv_events(store, worker, cleared, removed, stored),
            Self::V4(b) => b.call_kv_events(store, worker, cleared, removed, stored),
            Self::V2(b) => b.call_kv_events(store, worker, cleared, removed, stored),
            // 0.1.0 has no KV events.
            Self::V1(_) => Ok(()),
        }
    }
}

pub(crate) struct RouterWorld;

impl World for RouterWorld {
    const NAME: &'static str = "router";
    const STATEFUL: bool = false;
    type Pre = Pre;
    type Bindings = Bindings;

    fn pre(ip: InstancePre<State>) -> wasmtime::Result<Self::Pre> {
        // Newest first; if the component is none of them, the newest one's complaint is
        // the one to read.
        match v5::RouterPre::new(ip.clone()) {
            Ok(p) => Ok(Pre::V5(p)),
            Err(e5) => v4::RouterPre::new(ip.clone())
                .map(Pre::V4)
                .or_else(|_| v2::RouterPre::new(ip.clone()).map(Pre::V2))
                .or_else(|_| v1::RouterPre::new(ip).map(Pre::V1))
                .map_err(|_| e5),
        }
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<State>) -> wasmtime::Result<Self::Bindings> {
        Ok(match pre {
            Pre::V5(p) => Bindings::V5(p.instantiate(store)?),
            Pre::V4(p) => Bindings::V4(p.instantiate(store)?),
            Pre::V2(p) => Bindings::V2(p.instantiate(store)?),
            Pre::V1(p) => Bindings::V1(p.instantiate(store)?),
        })
    }

    fn configure(
        b: &Self::Bindings,
        store: &mut Store<State>,
        settings: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match b {
            Bindings::V5(b) => b.call_configure(store, &settings.to_vec()),
            Bindings::V4(b) => b.call_configure(store, &settings.to_vec()),
            Bindings::V2(b) => b.call_configure(store, &settings.to_vec()),
            Bindings::V1(b) => b.call_configure(store, &settings.to_vec()),
        }
    }

    fn smoke(b: &Self::Bindings, store: &mut Store<State>) -> wasmtime::Result<Result<(), Fault>> {
        let mut workers = workers((1..=4).map(|id| (id, id as u32)));
        workers.load_known[1] = true;
        workers.waiting[1] = 2;
        workers.kv_total_blocks[1] = 1024;
        workers.room = vec![Some(0), Some(2), Some(1), Some(0)];
        let prompt = "locus smoke call: the quick brown fox jumps over the lazy dog";
        let mut req = Request::new(0, prompt, 16);
        req.block_hashes = vec![0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
        req.prompt_tokens = Some(40);
        b.kv_events(&mut *store, 2, true, &[], &req.block_hashes)?;
        workers.kv_group = vec![Some(7); 4];
        workers.prefill_tokens_per_second[1] = Some(700.0);
        workers.kv_block_bytes = vec![Some(589_824); 4];
        let index = match b.route(&mut *store, &req, &workers)? {
            Ok(c) => match check_choice(c, &workers) {
                Ok(c) => c.0,
                Err(f) => return Ok(Err(f)),
            },
            Err(msg) => return Ok(Err(Fault::Error(msg))),
        };
        let mut done = Completion::new(0, workers.ids[index], Outcome::Ok);
        done.status = 200;
        done.latency_us = 1000;
        done.ttft_us = Some(400);
        done.prompt_tokens = Some(40);
        done.cached_tokens = Some(0);
        done.response_cache_hit = Some(false);
        done.generated_tokens = Some(16);
        b.observe(&mut *store, &done, true)?;
        b.kv_events(store, 2, true, &[], &[])?;
        Ok(Ok(()))
    }

    fn version(pre: &Self::Pre) -> &'static str {
        match pre {
            Pre::V5(_) => "0.5.0",
            Pre::V4(_) => "0.4.0",
            Pre::V2(_) => "0.2.0",
            Pre::V1(_) => "0.1.0",
        }
    }
}

fn check_index(index: u32, workers: &Workers) -> Result<usize, Fault> {
    let len = workers.ids.len();
    if (index as usize) < len { Ok(index as usize) } else { Err(Fault::OutOfRange { index, len }) }
}

/// Why a KV source a policy named is not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDropped {
    /// The source is the chosen worker itself.
    Same,
    /// The source or the target is in no KV group (the router cannot move KV between
    /// them), or they are in different ones.
    Incompatible,
}

impl SourceDropped {
    /// A metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Same => "same_worker",
            Self::Incompatible => "incompatible",
        }
    }
}

/// The chosen worker's index and the KV source to pass on: an index out of range (worker or
/// source) is a fault; a source that cannot serve the worker is dropped, with the reason.
pub(crate) fn check_choice(
    c: RouteChoice,
    workers: &Workers,
) -> Result<(usize, Result<Option<usize>, SourceDropped>), Fault> {
    let index = check_index(c.worker, workers)?;
    let Some(source) = c.kv_source else { return Ok((index, Ok(None))) };
    let source = check_index(source, workers)?;
    let group = |i: usize| workers.kv_group.get(i).copied().flatten();
    let source = if source == index {
        Err(SourceDropped::Same)
    } else if group(index).is_none() || group(index) != group(source) {
        Err(SourceDropped::Incompatible)
    } else {
        Ok(Some(source))
    };
    Ok((index, source))
}

/// What the policy chose: the worker's index, and the KV source to pass on (or why the one
/// it named was dropped).
pub(crate) type Chosen = (usize, Result<Option<usize>, SourceDropped>);

/// Brings each instance up to date with the workers' KV events before its next call.
pub(crate) struct KvEvents(pub(crate) Arc<KvFeed>);

impl KvEvents {
    fn tell_everything(
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        sets: Vec<(u64, Vec<u64>)>,
    ) -> wasmtime::Result<()> {
        for (worker, blocks) in sets {
            State::arm(store, limits);
            b.kv_events(&mut *store, worker, true, &[], &blocks)?;
        }
        Ok(())
    }
}

impl Feed<RouterWorld> for KvEvents {
    fn replay(
        &self,
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
    ) -> wasmtime::Result<u64> {
        if let Bindings::V1(_) = b {
            return Ok(self.0.head());
        }
        let (sets, head) = self.0.everything();
        Self::tell_everything(b, store, limits, sets)?;
        Ok(head)
    }

    fn catch_up(
        &self,
        b: &Bindings,
        store: &mut Store<State>,
        limits: &Limits,
        cursor: u64,
    ) -> wasmtime::Result<u64> {
        if let Bindings::V1(_) = b {
            return Ok(cursor);
        }
        match self.0.since(cursor) {
            None => Ok(cursor),
            Some(Missed::Batches(batches)) => {
                let mut at = cursor;
                for batch in batches {
                    State::arm(store, limits);
                    b.kv_events(
                        &mut *store,
                        batch.worker,
                        batch.cleared,
                        &batch.removed,
                        &batch.stored,
                    )?;
                    at = batch.seq;
                }
                Ok(at)
            }
            Some(Missed::Everything(sets, head)) => {
                // Every worker ever heard of comes with `cleared` and its whole set
                // (empty for one that holds nothing now), so no stale block survives.
                Self::tell_everything(b, store, limits, sets)?;
                Ok(head)
            }
        }
    }
}

/// Asks `slot`'s policy to choose; the native fallback decides when it faults (and names no
/// source).
pub(crate) fn decide(
    slot: &Slot<RouterWorld>,
    req: &Request,
    workers: &Workers,
) -> (Chosen, Option<Fault>) {
    let native = || fallback::rendezvous(&req.prompt, workers.ids.iter().copied());
    slot.call(
        |b, store| {
            Ok(b.route(store, req, workers)?
                .map_err(Fault::Error)
                .and_then(|c| check_choice(c, workers)))
        },
        || (native().expect("the worker list is not empty"), Ok(None)),
    )
}

/// Tells `slot`'s policy how an attempt ended; returns the fault, if any.
pub(crate) fn observe_in(
    slot: &Slot<RouterWorld>,
    done: &Completion,
    answered: bool,
) -> Option<Fault> {
    slot.call(|b, store| b.observe(store, done, answered).map(Ok), || ()).1
}
