//! Test-only router policy for contract 0.4.0 that shows what crossed the boundary (kept on
//! 0.4.0: every test through it shows that components of that version still work).
//!
//! It keeps every worker's block set from `kv-events` and the last `completion`, and
//! routes by the request's session key:
//! - `pin:N`: worker N (modulo the number of workers);
//! - `source:N:M`: worker N with worker M as its KV source (indices as given);
//! - `kv`: an error whose message lists, per worker, `kv-group`, prefill tokens per second,
//!   pull bytes per second and block bytes (`{:?}` of each list, joined by ` | `);
//! - `argmax:FIELD`: the worker with the largest entry of a `workers` list (`in-flight`,
//!   `waiting`, `running`, `kv-used`, `kv-total`, `tokens-per-second`, `load-age`,
//!   `unknown` (1 where `load-known` is false));
//! - `observed`: an error whose message is the last completion (`{:?}`), so a test reads
//!   exactly what the policy was told;
//! - `blocks:ID`: an error whose message is the number of blocks it knows worker ID holds;
//! - `trap`: a panic (the host then replaces the instance);
//! - anything else (or none): the worker holding the longest run of the prompt's leading
//!   blocks; ties go to the lowest index.
//!
//! Ordered collections: `HashMap`'s random seed would import `wasi:random/insecure-seed`.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

wit_bindgen::generate!({ world: "router", path: "../../../../wit/0.4.0" });

#[derive(Default)]
struct Seen {
    blocks: BTreeMap<u64, BTreeSet<u64>>,
    last: Option<Completion>,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

fn argmax<T: PartialOrd + Copy>(xs: &[T]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

struct Probe;

impl Guest for Probe {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        match settings.iter().find(|(k, _)| !k.starts_with("locus.")) {
            Some((k, _)) => Err(format!("unknown setting `{k}`")),
            None => Ok(()),
        }
    }

    fn route(req: Request, w: Workers) -> Result<RouteChoice, String> {
        let session = req.session.clone().unwrap_or_default();
        if let Some(pair) = session.strip_prefix("source:") {
            let (n, m) = pair.split_once(':').ok_or("source:N:M")?;
            let parse = |x: &str| x.parse::<u32>().map_err(|e| e.to_string());
            return Ok(RouteChoice { worker: parse(n)?, kv_source: Some(parse(m)?) });
        }
        if session == "kv" {
            return Err(format!(
                "{:?} | {:?} | {:?} | {:?}",
                w.kv_group,
                w.prefill_tokens_per_second,
                w.kv_pull_bytes_per_second,
                w.kv_block_bytes
            ));
        }
        choose(req, w).map(|worker| RouteChoice { worker, kv_source: None })
    }

    fn observe(done: Completion) {
        SEEN.with(|s| s.borrow_mut().last = Some(done));
    }

    fn kv_events(worker: u64, cleared: bool, removed: Vec<u64>, stored: Vec<u64>) {
        SEEN.with(|s| {
            let mut s = s.borrow_mut();
            let set = s.blocks.entry(worker).or_default();
            if cleared {
                set.clear();
            }
            for h in removed {
                set.remove(&h);
            }
            set.extend(stored);
        });
    }
}

/// The worker index, by the session key.
fn choose(req: Request, w: Workers) -> Result<u32, String> {
    let n = w.ids.len() as u32;
    let session = req.session.unwrap_or_default();
    if let Some(i) = session.strip_prefix("pin:") {
        return Ok(i.parse::<u32>().map_err(|e| e.to_string())? % n.max(1));
    }
    if let Some(field) = session.strip_prefix("argmax:") {
        let unknown: Vec<u32> = w.load_known.iter().map(|k| u32::from(!k)).collect();
        return Ok(match field {
            "in-flight" => argmax(&w.in_flight),
            "waiting" => argmax(&w.waiting),
            "running" => argmax(&w.running),
            "kv-used" => argmax(&w.kv_used_blocks),
            "kv-total" => argmax(&w.kv_total_blocks),
            "tokens-per-second" => argmax(&w.tokens_per_second),
            "load-age" => argmax(&w.load_age_ms),
            "unknown" => argmax(&unknown),
            other => return Err(format!("unknown field `{other}`")),
        });
    }
    if session == "trap" {
        panic!("asked to trap");
    }
    if session == "observed" {
        return Err(SEEN.with(|s| format!("{:?}", s.borrow().last)));
    }
    if let Some(id) = session.strip_prefix("blocks:") {
        let id: u64 = id.parse().map_err(|_| format!("bad worker id `{id}`"))?;
        return Err(SEEN.with(|s| s.borrow().blocks.get(&id).map_or(0, BTreeSet::len).to_string()));
    }
    SEEN.with(|s| {
        let s = s.borrow();
        let mut best = (0usize, 0u32);
        for (i, id) in w.ids.iter().enumerate() {
            let held = s.blocks.get(id);
            let run = req
                .block_hashes
                .iter()
                .take_while(|h| held.is_some_and(|set| set.contains(h)))
                .count();
            if run > best.0 {
                best = (run, i as u32);
            }
        }
        Ok(best.1)
    })
}

export!(Probe);
