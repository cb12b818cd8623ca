//! What the policy tests share: imports, how a policy is loaded and asked, the probe
//! guest's helpers.

#![allow(unused_imports)]

pub(crate) use std::collections::HashMap;
pub(crate) use std::sync::Arc;
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
pub(crate) use std::time::{Duration, Instant};

pub(crate) use locus_policy::guests;
pub(crate) use locus_policy::{
    Actor, Ask, BlockFill, Blocks, CachePolicy, Decision, Entry, EntryKind, Fault, FaultPolicy,
    LoadOptions, LoadStep, PolicySource, Request, RouterPolicy, Workers, rendezvous,
};
pub(crate) use rand::rngs::StdRng;
pub(crate) use rand::{Rng, SeedableRng};

pub(crate) fn settings(kv: &[(&str, &str)]) -> LoadOptions {
    LoadOptions::with_settings(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

pub(crate) fn file(path: &str) -> PolicySource {
    PolicySource::File(path.into())
}

pub(crate) fn router(source: PolicySource, kv: &[(&str, &str)]) -> RouterPolicy {
    RouterPolicy::load(&source, &settings(kv), FaultPolicy::default()).expect("policy loads")
}

pub(crate) fn workers(ids: &[u64]) -> Workers {
    locus_policy::workers(ids.iter().map(|&id| (id, 0)))
}

pub(crate) fn ids(w: &Workers) -> impl Iterator<Item = u64> + '_ {
    w.ids.iter().copied()
}

/// Routes `r` as the router does, its block hashes given.
pub(crate) fn route(p: &RouterPolicy, r: &Request, ws: &Workers) -> Option<Decision> {
    p.route(&mut Ask::new(r.clone()), ws)
}

/// Counts the times the facade asks for a request's block hashes.
#[derive(Default)]
pub(crate) struct CountedBlocks(pub(crate) AtomicU64);

impl Blocks for CountedBlocks {
    fn fill(&self, _req: &mut Request) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn deferred(&self) -> Option<BlockFill> {
        None
    }
}

/// Whether routing with `p` has the router tokenize the prompt.
pub(crate) fn tokenizes(p: &RouterPolicy) -> bool {
    let blocks = CountedBlocks::default();
    p.route(&mut Ask::with_blocks(req("x"), &blocks), &workers(&[1, 2])).unwrap();
    blocks.0.load(Ordering::Relaxed) == 1
}

pub(crate) fn req(prompt: &str) -> Request {
    Request::new(1, prompt, 16)
}

/// Routes `prompt`, asserting the policy itself decided, and returns the worker id.
pub(crate) fn route_id(p: &RouterPolicy, prompt: &str, ws: &Workers) -> u64 {
    let d = route(p, &req(prompt), ws).expect("a worker exists");
    assert_eq!(d.fault, None, "policy faulted on {prompt:?}");
    ws.ids[d.index]
}

pub(crate) fn probe() -> RouterPolicy {
    router(file(guests::PROBE_PATH), &[])
}

pub(crate) fn probe_says(p: &RouterPolicy, session: &str, ws: &Workers) -> String {
    let mut r = req("probe");
    r.session = Some(session.into());
    match route(p, &r, ws).expect("workers").fault {
        Some(Fault::Error(msg)) => msg,
        other => panic!("the probe answered {other:?}"),
    }
}

pub(crate) fn route_blocks(p: &RouterPolicy, blocks: &[u64], ws: &Workers) -> usize {
    let mut r = req("blocks");
    r.block_hashes = blocks.to_vec();
    let d = route(p, &r, ws).expect("workers");
    assert_eq!(d.fault, None);
    d.index
}

/// Why loading `source` with `kv` fails.
pub(crate) fn load_err(source: PolicySource, kv: &[(&str, &str)]) -> locus_policy::LoadError {
    RouterPolicy::load(&source, &settings(kv), FaultPolicy::default())
        .err()
        .expect("the module must be rejected")
}
