//! Prefix-aware routing: each request goes to the worker where it costs least, counting the
//! prompt tokens the worker would have to compute (those past the longest run of the
//! prompt's leading KV blocks it already holds) against the work already waiting there.
//!
//! This is the cost NVIDIA Dynamo's KV router minimises (uncached prefill blocks plus the
//! worker's decode load, learned from KV events the engines publish) and the shape of
//! llm-d's scorer mix (prefix match, queue depth, KV utilisation); SGLang's gateway keeps an
//! approximate tree of its own routing decisions instead of events. This policy does both:
//!
//! - **Index.** Every block hash the workers report in `kv-events` maps to the set of workers
//!   holding it (a 128-bit mask of worker slots), so a prompt's match on every worker is one
//!   walk down its block hashes that stops at the first block no candidate holds. A worker
//!   that has never sent an event (the router's `--no-kv-events`, or a worker that is not
//!   locus) is indexed approximately instead: the blocks of the requests this policy sent
//!   it, forgotten oldest first past `approx-blocks`.
//! - **Cost** of worker `i`, in 16-token blocks:
//!   `prefill-weight × uncached_blocks(i) + load-weight × pending(i) + kv-weight × kv_use(i)`,
//!   where `pending` is the worker's reported queue (requests not started, from every
//!   router) but never below this router's live in-flight count to it, and `kv_use` is its
//!   reserved share of the running KV budget (0 to 1) when reported. The reported running
//!   batch is left out of `pending` on purpose: a report is up to one poll old, and the
//!   worker that just served a prefix is the one whose stale report still shows it running,
//!   so counting it would push each prefix away from its own blocks; sequences decoding
//!   beside a new prompt slow it far less than a queue ahead of it, and they show in `kv_use`.
//! - **Pulls** (contract 0.4.0). A worker may also be chosen with a KV source: the worker
//!   of its KV group holding the longest run of the prompt's blocks, from which it pulls
//!   the blocks it lacks instead of computing them. The pulled blocks then cost what the
//!   transfer takes (`pull-overhead-ms` plus their bytes over the link speed the target
//!   measured on its own pulls, `link-mb-s` until it has) in blocks the target computes in
//!   that time (at the prefill speed it measured; a target that has not measured one is
//!   never sent a source, since it would not pull), times `prefill-weight`. So when the
//!   worker holding a prefix is full (or, without `room` or under `pull-from any`, loaded
//!   past what its blocks save), the request goes where there is room and takes the prefix
//!   with it, instead of recomputing it; fewer than `min-pull-blocks` blocks are never
//!   pulled.
//! - **Room** (contract 0.5.0). When the router queues, it says how many more requests each
//!   worker may take now (`room`). The request goes only to a worker with room (if any has
//!   some), and by default (`pull-from` `full`) a holder lends its prefix only once it has
//!   none left: while the holder can take the request itself, the request goes there or is
//!   computed elsewhere, so a pull never stands in for a place the holder has free. Pulls
//!   between workers that all have room were what cost most (measured: a pulled prompt
//!   evicts another tenant's prefix at the target, and the pending counts behind dispatch
//!   limits differ by only one or two requests, which a cost alone cannot tell from
//!   saturation). `pull-from` `any` lends from any holder the cost favours, as 0.4.0 did;
//!   without `room` (the router does not queue) that is what happens.
//! - **Ties** go to the lower `pending`, then at random.
//! - **Sessions.** A request with a session key goes back to its session's last worker while
//!   that worker's cost is within `session-slack` blocks of the cheapest, so a conversation
//!   stays together even when a turn's prefix alone would not say where it was.
//!
//! Settings: `prefill-weight` (1.0), `load-weight` (4.0), `kv-weight` (16.0),
//! `session-slack` (32.0), `approx-blocks` (50000), `sessions` (100000 remembered), `seed`;
//! for pulls: `pulls` (`on`; `off` never names a source), `pull-from` (`full` or `any`),
//! `min-pull-blocks` (4), `pull-overhead-ms` (5), `link-mb-s` (400).
//! Memory: about 40 bytes per indexed block (100k blocks ≈ 4 MB, inside the default 64 MiB
//! sandbox). At most 128 distinct workers are indexed; further ones are costed by load only.
//!
//! KV events reach every pooled instance (the host catches each up before its call), so the
//! index is exact in every instance; sessions and approximate entries are per instance, so
//! load this policy with `locus.instances=1` when those matter.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use locus_policy_kit::{Mix64, Seeding};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

wit_bindgen::generate!({ world: "router", path: "../../wit" });

/// Tokens per KV block (the host's block size).
pub const BLOCK_TOKENS: u32 = 16;
/// Worker slots the index tracks.
pub const MAX_SLOTS: usize = 128;

/// Block hashes are already uniform; `Mix64` needs no random seed, which the sandbox lacks.
type Map<K, V> = HashMap<K, V, BuildHasherDefault<Mix64>>;

/// Settings.
#[derive(Debug, Clone, Copy)]
pub struct Weights {
    /// Cost of one uncached block.
    pub prefill: f64,
    /// Cost of one request pending on the worker.
    pub load: f64,
    /// Cost of a full running KV budget.
    pub kv: f64,
    /// How much dearer than the cheapest a session's worker may be and keep it.
    pub session_slack: f64,
    /// What pulling a prefix costs.
    pub pull: Pull,
}

impl Default for Weights {
    fn default() -> Self {
        Self { prefill: 1.0, load: 4.0, kv: 16.0, session_slack: 32.0, pull: Pull::default() }
    }
}

/// Settings of KV pulls.
#[derive(Debug, Clone, Copy)]
pub struct Pull {
    /// Whether to name KV sources at all.
    pub on: bool,
    /// Whether a source must have no room left (when the router says which have room).
    pub from_full_only: bool,
    /// Fewest blocks worth a pull.
    pub min_blocks: u32,
    /// Fixed cost of one pull (a connection, a handshake), in seconds.
    pub overhead_s: f64,
    /// Link speed assumed before the target measured one, bytes per second.
    pub link_bytes_s: f64,
}

impl Default for Pull {
    fn default() -> Self {
        Self {
            on: true,
            from_full_only: true,
            min_blocks: 4,
            overhead_s: 0.005,
            link_bytes_s: 400e6,
        }
    }
}

/// Requests ahead of a new one at worker `i`: its queue when reported, or what this router
/// has in flight there, whichever is more.
fn pending(w: &Workers, i: usize) -> u32 {
    let queued = if w.load_known[i] { w.waiting[i] } else { 0 };
    queued.max(w.in_flight[i])
}

/// Which workers the request may go to: those with room when the router says so and any
/// has some, else all.
fn eligible(w: &Workers) -> Vec<bool> {
    let has_room = |i: usize| w.room.get(i).copied().flatten().is_none_or(|r| r > 0);
    let room: Vec<bool> = (0..w.ids.len()).map(has_room).collect();
    if room.iter().any(|&r| r) { room } else { vec![true; w.ids.len()] }
}

/// Whether the router says worker `i` has room (false when it does not say).
fn has_room_known(w: &Workers, i: usize) -> bool {
    w.room.get(i).copied().flatten().is_some_and(|r| r > 0)
}

/// What a session is remembered by.
fn session_key(session: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    session.hash(&mut h);
    h.finish()
}

/// The policy's state: the block index, sessions, settings.
pub struct State {
    /// Weights of the cost.
    pub weights: Weights,
    slots: Map<u64, usize>,
    index: Map<u64, u128>,
    /// Slots that have sent KV events: indexed exactly.
    exact: u128,
    approx: VecDeque<(u64, usize)>,
    approx_cap: usize,
    /// By the session key's hash (a client sets the key's length; the router caps it, but
    /// 100,000 remembered keys of any length must fit the guest's memory): a collision
    /// only shares a placement hint.
    sessions: Map<u64, u64>,
    session_order: VecDeque<u64>,
    session_cap: usize,
    rng: SmallRng,
}

impl State {
    /// An empty index with these settings.
    ///
    /// The approximate index and the sessions are sized for their caps up front: a map that
    /// grows, or rehashes away the tombstones that forgetting leaves, moves every entry in
    /// one call, and at a few hundred thousand entries that one call overran its deadline.
    pub fn new(weights: Weights, approx_cap: usize, session_cap: usize, rng: SmallRng) -> Self {
        fn sized<K, V>(n: usize) -> Map<K, V> {
            Map::with_capacity_and_hasher(n, Default::default())
        }
        Self {
            weights,
            slots: Map::default(),
            index: sized(approx_cap.saturating_mul(2)),
            exact: 0,
            approx: VecDeque::with_capacity(approx_cap),
            approx_cap,
            sessions: sized(session_cap),
            session_order: VecDeque::with_capacity(session_cap),
            session_cap,
            rng,
        }
    }

    /// Blocks indexed (over all workers).
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    fn slot(&mut self, worker: u64) -> Option<usize> {
        if let Some(s) = self.slots.get(&worker) {
            return Some(*s);
        }
        let s = self.slots.len();
        if s < MAX_SLOTS {
            self.slots.insert(worker, s);
            return Some(s);
        }
        // All taken: reuse one that marks no block (a worker gone, or an id it no longer
        // goes by), so that workers coming and going never use the slots up for good.
        let mut used = self.index.values().fold(0u128, |m, b| m | b);
        used |= self.approx.iter().fold(0u128, |m, (_, s)| m | 1 << s);
        let (&old, &free) = self.slots.iter().find(|&(_, &s)| used & (1 << s) == 0)?;
        self.slots.remove(&old);
        self.exact &= !(1 << free);
        self.slots.insert(worker, free);
        Some(free)
    }

    fn clear_bit(&mut self, block: u64, bit: u128) {
        if let Some(m) = self.index.get_mut(&block) {
            *m &= !bit;
            if *m == 0 {
                self.index.remove(&block);
            }
        }
    }

    /// Applies one worker's KV events.
    pub fn kv_events(&mut self, worker: u64, cleared: bool, removed: &[u64], stored: &[u64]) {
        let Some(s) = self.slot(worker) else { return };
        let bit = 1u128 << s;
        if self.exact & bit == 0 {
            // Its approximate entries give way to what it reports.
            self.exact |= bit;
            self.approx.retain(|(_, slot)| *slot != s);
            self.index.retain(|_, m| {
                *m &= !bit;
                *m != 0
            });
        }
        if cleared {
            self.index.retain(|_, m| {
                *m &= !bit;
                *m != 0
            });
        }
        for h in removed {
            self.clear_bit(*h, bit);
        }
        for h in stored {
            *self.index.entry(*h).or_insert(0) |= bit;
        }
    }

    /// For each worker, the leading blocks of `blocks` it holds.
    pub fn matched(&self, blocks: &[u64], slots: &[Option<usize>]) -> Vec<u32> {
        let mut matched = vec![0u32; slots.len()];
        let mut alive: u128 = slots.iter().flatten().fold(0, |m, s| m | 1 << s);
        let mut depth = 0u32;
        for h in blocks {
            if alive == 0 {
                break;
            }
            let holders = self.index.get(h).copied().unwrap_or(0) & alive;
            if holders != alive {
                for (i, s) in slots.iter().enumerate() {
                    if let Some(s) = s
                        && alive & !holders & (1 << s) != 0
                    {
                        matched[i] = depth;
                    }
                }
            }
            alive = holders;
            depth += 1;
        }
        for (i, s) in slots.iter().enumerate() {
            if let Some(s) = s
                && alive & (1 << s) != 0
            {
                matched[i] = depth;
            }
        }
        matched
    }

    /// The best source for worker `i`: of the others in its KV group, the one holding the
    /// most of the prompt's leading blocks beyond what `i` holds (ties: the least pending),
    /// with the blocks it would bring; `None` when none brings `min-pull-blocks`.
    /// `usable` is the prompt's blocks before its last token: a worker never pulls the
    /// block that holds the last token (it computes that token to get the first logits).
    fn source_for(
        &self,
        i: usize,
        w: &Workers,
        matched: &[u32],
        usable: u32,
    ) -> Option<(usize, u32)> {
        let group = w.kv_group.get(i).copied().flatten()?;
        let lent = |j: usize| matched[j].min(usable).saturating_sub(matched[i]);
        (0..w.ids.len())
            .filter(|&j| j != i && w.kv_group.get(j).copied().flatten() == Some(group))
            .filter(|&j| !self.weights.pull.from_full_only || !has_room_known(w, j))
            .filter(|&j| lent(j) >= self.weights.pull.min_blocks)
            .min_by_key(|&j| (std::cmp::Reverse(lent(j)), pending(w, j)))
            .map(|j| (j, lent(j)))
    }

    /// What pulling `blocks` costs worker `i`, in blocks it would compute in that time.
    fn pull_cost(&self, i: usize, w: &Workers, blocks: u32) -> Option<f64> {
        let p = self.weights.pull;
        // Each block travels with 16 bytes of framing (length, index, checksum).
        let block_bytes = f64::from(w.kv_block_bytes.get(i).copied().flatten()?) + 16.0;
        let link = w.kv_pull_bytes_per_second.get(i).copied().flatten();
        let link = link.map(f64::from).filter(|x| *x > 0.0).unwrap_or(p.link_bytes_s);
        // A worker that has not measured its prefill speed has no deadline for a pull and
        // computes instead (unless its operator fixed one): credit no pull there.
        let speed = w.prefill_tokens_per_second.get(i).copied().flatten();
        let speed = speed.map(f64::from).filter(|x| *x > 0.0)?;
        let seconds = p.overhead_s + f64::from(blocks) * block_bytes / link;
        Some(seconds * speed / f64::from(BLOCK_TOKENS))
    }

    /// The chosen worker's index in `w`, and the KV source it should pull from, if any.
    pub fn route(&mut self, req: &Request, w: &Workers) -> Option<RouteChoice> {
        let n = w.ids.len();
        if n == 0 {
            return None;
        }
        let slots: Vec<Option<usize>> = w.ids.iter().map(|id| self.slot(*id)).collect();
        let matched = self.matched(&req.block_hashes, &slots);
        let routed = req.block_hashes.len() as u32 * BLOCK_TOKENS;
        let prompt = req.prompt_tokens.unwrap_or(routed).max(routed);
        let wt = self.weights;
        let pending = |i: usize| pending(w, i);
        let cost = |i: usize| {
            let uncached = f64::from(prompt - matched[i] * BLOCK_TOKENS) / f64::from(BLOCK_TOKENS);
            let kv = if w.load_known[i] && w.kv_total_blocks[i] > 0 {
                f64::from(w.kv_used_blocks[i]) / f64::from(w.kv_total_blocks[i])
            } else {
                0.0
            };
            wt.prefill * uncached + wt.load * f64::from(pending(i)) + wt.kv * kv.min(1.0)
        };
        let mut costs: Vec<f64> = (0..n).map(cost).collect();
        // With a source, worker i computes fewer blocks and pays the transfer instead.
        let mut sources: Vec<Option<usize>> = vec![None; n];
        if wt.pull.on {
            for i in 0..n {
                let usable = prompt.saturating_sub(1) / BLOCK_TOKENS;
                let Some((j, pulled)) = self.source_for(i, w, &matched, usable) else { continue };
                let Some(transfer) = self.pull_cost(i, w, pulled) else { continue };
                let with = costs[i] + wt.prefill * (transfer - f64::from(pulled));
                if with < costs[i] {
                    (costs[i], sources[i]) = (with, Some(j));
                }
            }
        }
        let eligible = eligible(w);
        let (mut best, mut ties) = (eligible.iter().position(|&e| e).unwrap_or(0), 0u32);
        for i in (best + 1..n).filter(|&i| eligible[i]) {
            let (c, b) = (costs[i], costs[best]);
            if c < b || (c == b && pending(i) < pending(best)) {
                (best, ties) = (i, 0);
            } else if c == b && pending(i) == pending(best) {
                ties += 1;
                if self.rng.random_range(0..=ties) == 0 {
                    best = i;
                }
            }
        }
        if let Some(session) = &req.session {
            let key = session_key(session);
            if let Some(j) =
                self.sessions.get(&key).and_then(|id| w.ids.iter().position(|x| x == id))
                && eligible[j]
                && costs[j] <= costs[best] + wt.session_slack
            {
                best = j;
            }
            self.remember_session(key, w.ids[best]);
        }
        self.note_approx(slots[best], &req.block_hashes);
        Some(RouteChoice { worker: best as u32, kv_source: sources[best].map(|j| j as u32) })
    }

    fn remember_session(&mut self, key: u64, worker: u64) {
        if self.sessions.insert(key, worker).is_none() {
            self.session_order.push_back(key);
            while self.session_order.len() > self.session_cap {
                if let Some(old) = self.session_order.pop_front() {
                    self.sessions.remove(&old);
                }
            }
        }
    }

    /// A worker that sends no events is assumed to hold what was sent to it.
    fn note_approx(&mut self, slot: Option<usize>, blocks: &[u64]) {
        let Some(s) = slot else { return };
        let bit = 1u128 << s;
        if self.exact & bit != 0 || self.approx_cap == 0 {
            return;
        }
        for h in blocks {
            let m = self.index.entry(*h).or_insert(0);
            if *m & bit == 0 {
                *m |= bit;
                self.approx.push_back((*h, s));
            }
        }
        while self.approx.len() > self.approx_cap {
            if let Some((h, s)) = self.approx.pop_front()
                && self.exact & (1 << s) == 0
            {
                self.clear_bit(h, 1 << s);
            }
        }
    }
}

thread_local! {
    static STATE: RefCell<State> =
        RefCell::new(State::new(Weights::default(), 50_000, 100_000, SmallRng::seed_from_u64(0)));
}

fn number(k: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| format!("{k} must be a number >= 0, got `{v}`"))
}

fn positive(k: &str, v: &str) -> Result<f64, String> {
    number(k, v)?;
    v.parse::<f64>()
        .ok()
        .filter(|x| *x > 0.0)
        .ok_or_else(|| format!("{k} must be above 0, got `{v}`"))
}

fn count(k: &str, v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("{k} must be a non-negative integer, got `{v}`"))
}

struct PrefixAware;

impl Guest for PrefixAware {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut wt = Weights::default();
        let (mut approx, mut sessions) = (50_000, 100_000);
        let mut seeding = Seeding::default();
        for (k, v) in &settings {
            match k.as_str() {
                "prefill-weight" => wt.prefill = number(k, v)?,
                "load-weight" => wt.load = number(k, v)?,
                "kv-weight" => wt.kv = number(k, v)?,
                "session-slack" => wt.session_slack = number(k, v)?,
                "pulls" => {
                    wt.pull.on = match v.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("pulls must be `on` or `off`, got `{v}`")),
                    }
                }
                "pull-from" => {
                    wt.pull.from_full_only = match v.as_str() {
                        "full" => true,
                        "any" => false,
                        _ => return Err(format!("pull-from must be `full` or `any`, got `{v}`")),
                    }
                }
                "min-pull-blocks" => {
                    wt.pull.min_blocks = u32::try_from(count(k, v)?.max(1)).unwrap_or(u32::MAX)
                }
                "pull-overhead-ms" => wt.pull.overhead_s = number(k, v)? / 1e3,
                "link-mb-s" => wt.pull.link_bytes_s = positive(k, v)? * 1e6,
                "approx-blocks" => approx = count(k, v)?,
                "sessions" => sessions = count(k, v)?,
                k if seeding.take(k, v)? || k.starts_with("locus.") => {}
                _ => {
                    return Err(format!(
                        "unknown setting `{k}` (prefix-aware knows: prefill-weight, load-weight, \
                         kv-weight, session-slack, approx-blocks, sessions, seed, pulls, \
                         pull-from, min-pull-blocks, pull-overhead-ms, link-mb-s)"
                    ));
                }
            }
        }
        STATE.set(State::new(wt, approx, sessions, seeding.rng()));
        Ok(())
    }

    fn route(req: Request, workers: Workers) -> Result<RouteChoice, String> {
        STATE
            .with_borrow_mut(|s| s.route(&req, &workers))
            .ok_or_else(|| "no worker to choose from".to_string())
    }

    fn observe(_done: Completion) {}

    fn kv_events(worker: u64, cleared: bool, removed: Vec<u64>, stored: Vec<u64>) {
        STATE.with_borrow_mut(|s| s.kv_events(worker, cleared, &removed, &stored));
    }
}

export!(PrefixAware);

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(Weights::default(), 1000, 10, SmallRng::seed_from_u64(1))
    }

    fn workers(n: usize) -> Workers {
        Workers {
            ids: (0..n as u64).map(|i| 100 + i).collect(),
            in_flight: vec![0; n],
            room: vec![None; n],
            load_known: vec![true; n],
            load_age_ms: vec![0; n],
            waiting: vec![0; n],
            running: vec![0; n],
            kv_used_blocks: vec![0; n],
            kv_total_blocks: vec![1000; n],
            tokens_per_second: vec![0.0; n],
            kv_group: vec![None; n],
            prefill_tokens_per_second: vec![None; n],
            kv_pull_bytes_per_second: vec![None; n],
            kv_block_bytes: vec![None; n],
        }
    }

    /// The chosen worker's index alone.
    fn to(c: Option<RouteChoice>) -> Option<u32> {
        c.map(|c| c.worker)
    }

    fn req(blocks: std::ops::Range<u64>, session: Option<&str>) -> Request {
        Request {
            id: 0,
            prompt: String::new(),
            max_new_tokens: 8,
            block_hashes: blocks.collect(),
            prompt_tokens: None,
            session: session.map(str::to_string),
        }
    }

    #[test]
    fn slots_of_workers_that_hold_nothing_are_reused_once_all_are_taken() {
        let mut s = state();
        for w in 0..MAX_SLOTS as u64 {
            s.kv_events(1000 + w, false, &[], &[w]);
        }
        // Full, and every slot marks a block: a newcomer gets none.
        s.kv_events(5000, false, &[], &[9999]);
        assert_eq!(s.slots.get(&5000), None);
        // One worker forgets its block: its slot goes to the newcomer.
        s.kv_events(1007, true, &[], &[]);
        s.kv_events(5000, false, &[], &[9999]);
        assert_eq!(s.slots.get(&5000), Some(&7));
        assert_eq!(s.slots.get(&1007), None);
        assert_eq!(s.matched(&[9999], &[Some(7)]), [1]);
        assert_eq!(s.matched(&[3], &[Some(3)]), [1], "the others keep theirs");
    }

    #[test]
    fn the_match_is_the_longest_run_of_leading_blocks() {
        let mut s = state();
        s.kv_events(100, false, &[], &[1, 2, 3]);
        s.kv_events(101, false, &[], &[1, 2, 3, 4, 5]);
        s.kv_events(102, false, &[], &[2, 3, 4]);
        let slots: Vec<_> = [100, 101, 102, 103].iter().map(|id| s.slot(*id)).collect();
        assert_eq!(s.matched(&[1, 2, 3, 4, 5, 6], &slots), [3, 5, 0, 0]);
        s.kv_events(101, false, &[3], &[]);
        assert_eq!(s.matched(&[1, 2, 3, 4], &slots), [3, 2, 0, 0]);
        s.kv_events(100, true, &[], &[9]);
        assert_eq!(s.matched(&[1, 2, 3], &slots), [0, 2, 0, 0]);
        assert_eq!(s.indexed(), 6, "blocks 1, 2, 4, 5 of 101, 2-4 of 102, 9 of 100");
    }

    #[test]
    fn the_cached_worker_wins_until_its_queue_costs_more_than_the_prefill() {
        let mut s = state();
        let mut w = workers(3);
        s.kv_events(101, false, &[], &(0..32).collect::<Vec<_>>());
        let r = req(0..33, None);
        assert_eq!(to(s.route(&r, &w)), Some(1));
        // 32 cached blocks are worth 32 / load-weight 4 = 8 pending requests.
        w.waiting[1] = 7;
        assert_eq!(to(s.route(&r, &w)), Some(1));
        w.waiting[1] = 9;
        assert_ne!(to(s.route(&r, &w)), Some(1));
        // The live in-flight count counts when the report is older.
        w.waiting[1] = 0;
        w.in_flight[1] = 9;
        assert_ne!(to(s.route(&r, &w)), Some(1));
    }

    #[test]
    fn misses_spread_by_load_and_ties_at_random() {
        let mut s = state();
        let mut w = workers(4);
        w.waiting = vec![2, 1, 3, 1];
        let mut counts = [0u32; 4];
        for i in 0..4000u64 {
            counts[to(s.route(&req(i * 100..i * 100 + 4, None), &w)).unwrap() as usize] += 1;
        }
        assert_eq!((counts[0], counts[2]), (0, 0));
        assert!((1700..2300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn without_events_it_remembers_where_it_sent_prefixes() {
        let mut s = state();
        let w = workers(3);
        let first = to(s.route(&req(0..8, None), &w)).unwrap();
        for _ in 0..10 {
            assert_eq!(to(s.route(&req(0..9, None), &w)), Some(first));
        }
        // Once the worker reports events, its guesses are replaced by what it holds.
        s.kv_events(w.ids[first as usize], true, &[], &[]);
        let slots: Vec<_> = w.ids.iter().map(|id| s.slot(*id)).collect();
        assert_eq!(s.matched(&(0..9).collect::<Vec<_>>(), &slots), [0, 0, 0]);
    }

    #[test]
    fn approximate_entries_are_bounded() {
        let mut s = State::new(Weights::default(), 100, 10, SmallRng::seed_from_u64(1));
        let w = workers(2);
        for i in 0..100u64 {
            s.route(&req(i * 10..i * 10 + 10, None), &w);
        }
        assert!(s.indexed() <= 100, "{}", s.indexed());
    }

    #[test]
    fn a_session_stays_on_its_worker_within_the_slack() {
        let mut s = state();
        let mut w = workers(3);
        let home = to(s.route(&req(0..4, Some("conv")), &w)).unwrap() as usize;
        // A new turn with a prefix nobody holds, and the home worker busier: it stays.
        w.waiting[home] = 5;
        assert_eq!(to(s.route(&req(50..60, Some("conv")), &w)), Some(home as u32));
        // Much busier than the slack allows: it moves, and the session follows.
        w.waiting[home] = 50;
        let moved = to(s.route(&req(70..80, Some("conv")), &w)).unwrap();
        assert_ne!(moved as usize, home);
        w.waiting[home] = 0;
        assert_eq!(to(s.route(&req(90..95, Some("conv")), &w)), Some(moved));
    }

    /// Three workers of one KV group; worker 1 holds the prompt's 32 blocks and is busy.
    fn pull_setup() -> (State, Workers, Request) {
        let mut s = state();
        let mut w = workers(3);
        w.kv_group = vec![Some(7); 3];
        w.kv_block_bytes = vec![Some(589_824); 3];
        w.prefill_tokens_per_second = vec![Some(700.0); 3];
        s.kv_events(101, false, &[], &(0..32).collect::<Vec<_>>());
        // All report events: none is assumed to hold what it was sent.
        s.kv_events(100, true, &[], &[]);
        s.kv_events(102, true, &[], &[]);
        w.waiting[1] = 9;
        (s, w, req(0..33, None))
    }

    #[test]
    fn a_busy_holder_lends_its_prefix_to_a_worker_with_room() {
        let (mut s, mut w, r) = pull_setup();
        // 32 blocks at 400 MB/s take 52 ms, 2.3 blocks' prefill at 700 tokens/s: far cheaper
        // than 32 blocks computed, and than 9 requests pending on the holder.
        let c = s.route(&r, &w).unwrap();
        assert_ne!(c.worker, 1);
        assert_eq!(c.kv_source, Some(1));
        // Idle, the holder serves it itself: no pull.
        w.waiting[1] = 0;
        let c = s.route(&r, &w).unwrap();
        assert_eq!((c.worker, c.kv_source), (1, None));
    }

    #[test]
    fn no_source_outside_the_group_when_off_or_when_the_link_is_too_slow() {
        let (mut s, mut w, r) = pull_setup();
        w.kv_group[1] = Some(8);
        assert_eq!(s.route(&r, &w).unwrap().kv_source, None, "another group");
        w.kv_group[1] = None;
        assert_eq!(s.route(&r, &w).unwrap().kv_source, None, "no group");
        let (mut s, w, r) = pull_setup();
        s.weights.pull.on = false;
        assert_eq!(s.route(&r, &w).unwrap().kv_source, None, "pulls off");
        // Measured at 1 MB/s, 32 blocks take 19 s: computing them is cheaper.
        let (mut s, mut w, r) = pull_setup();
        w.kv_pull_bytes_per_second = vec![Some(1e6); 3];
        assert_eq!(s.route(&r, &w).unwrap().kv_source, None, "slow link");
        // Fewer blocks than min-pull-blocks are not worth a pull.
        let (mut s, w, _) = pull_setup();
        s.weights.pull.min_blocks = 40;
        assert_eq!(s.route(&req(0..33, None), &w).unwrap().kv_source, None, "too few");
        // A target that has not measured its prefill speed would not pull: none is named.
        let (mut s, mut w, r) = pull_setup();
        w.prefill_tokens_per_second = vec![None; 3];
        assert_eq!(s.route(&r, &w).unwrap().kv_source, None, "prefill speed unmeasured");
    }

    #[test]
    fn with_room_known_a_holder_lends_only_once_it_is_full() {
        let (mut s, mut w, r) = pull_setup();
        // With room and 2 pending: under `pull-from full` the holder is not a source, and
        // its 32 blocks outweigh its queue: it serves the request itself.
        w.waiting[1] = 2;
        w.room = vec![Some(2), Some(1), Some(2)];
        let c = s.route(&r, &w).unwrap();
        assert_eq!((c.worker, c.kv_source), (1, None));
        // `any` lends from it as 0.4.0 did.
        s.weights.pull.from_full_only = false;
        let c = s.route(&r, &w).unwrap();
        assert_ne!(c.worker, 1);
        assert_eq!(c.kv_source, Some(1));
        s.weights.pull.from_full_only = true;
        // Full, it lends to a worker with room, even an idle holder's cost being lowest.
        w.waiting[1] = 0;
        w.room[1] = Some(0);
        let c = s.route(&r, &w).unwrap();
        assert_ne!(c.worker, 1);
        assert_eq!(c.kv_source, Some(1));
        // Only workers with room are chosen while any has some.
        w.room[0] = Some(0);
        assert_eq!(to(s.route(&r, &w)), Some(2));
        // Full everywhere (a race): the cheapest, as without room.
        w.room[2] = Some(0);
        assert_eq!(to(s.route(&r, &w)), Some(1));
    }

    #[test]
    fn a_session_does_not_return_to_a_full_worker() {
        let mut s = state();
        let mut w = workers(2);
        w.room = vec![Some(1), Some(1)];
        let home = to(s.route(&req(0..4, Some("conv")), &w)).unwrap() as usize;
        w.room[home] = Some(0);
        let moved = to(s.route(&req(0..4, Some("conv")), &w)).unwrap() as usize;
        assert_ne!(moved, home);
    }
}
