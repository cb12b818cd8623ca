//! The policy runtime against real components built from `guest-router/`, `guest-cache/`
//! and the test-only guests in `tests/guests/`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use locus_policy::guests;
use locus_policy::{
    Actor, Ask, BlockFill, Blocks, CachePolicy, Decision, Entry, EntryKind, Fault, FaultPolicy,
    LoadOptions, LoadStep, PolicySource, Request, RouterPolicy, Workers, rendezvous,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn settings(kv: &[(&str, &str)]) -> LoadOptions {
    LoadOptions::with_settings(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn file(path: &str) -> PolicySource {
    PolicySource::File(path.into())
}

fn router(source: PolicySource, kv: &[(&str, &str)]) -> RouterPolicy {
    RouterPolicy::load(&source, &settings(kv), FaultPolicy::default()).expect("policy loads")
}

fn workers(ids: &[u64]) -> Workers {
    locus_policy::workers(ids.iter().map(|&id| (id, 0)))
}

fn ids(w: &Workers) -> impl Iterator<Item = u64> + '_ {
    w.ids.iter().copied()
}

/// Routes `r` as the router does, its block hashes given.
fn route(p: &RouterPolicy, r: &Request, ws: &Workers) -> Option<Decision> {
    p.route(&mut Ask::new(r.clone()), ws)
}

/// Counts the times the facade asks for a request's block hashes.
#[derive(Default)]
struct CountedBlocks(AtomicU64);

impl Blocks for CountedBlocks {
    fn fill(&self, _req: &mut Request) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn deferred(&self) -> Option<BlockFill> {
        None
    }
}

/// Whether routing with `p` has the router tokenize the prompt.
fn tokenizes(p: &RouterPolicy) -> bool {
    let blocks = CountedBlocks::default();
    p.route(&mut Ask::with_blocks(req("x"), &blocks), &workers(&[1, 2])).unwrap();
    blocks.0.load(Ordering::Relaxed) == 1
}

fn req(prompt: &str) -> Request {
    Request::new(1, prompt, 16)
}

/// Routes `prompt`, asserting the policy itself decided, and returns the worker id.
fn route_id(p: &RouterPolicy, prompt: &str, ws: &Workers) -> u64 {
    let d = route(&p, &req(prompt), ws).expect("a worker exists");
    assert_eq!(d.fault, None, "policy faulted on {prompt:?}");
    ws.ids[d.index]
}

#[test]
fn hash_sends_the_same_20_characters_to_the_same_worker() {
    let p = router(PolicySource::Builtin("hash"), &[]);
    let ws = workers(&[11, 22, 33, 44]);
    let mut seen = HashMap::new();
    for g in 0..50 {
        let head = format!("system prompt #{g:04} ");
        assert_eq!(head.chars().count(), 20);
        for tail in ["", "what is rust?", "tell me a joke", "x".repeat(500).as_str()] {
            let id = route_id(&p, &format!("{head}{tail}"), &ws);
            assert_eq!(*seen.entry(g).or_insert(id), id, "group {g} split across workers");
        }
    }
    // 50 groups over 4 workers: every worker gets some.
    let mut used: Vec<u64> = seen.values().copied().collect();
    used.sort();
    used.dedup();
    assert_eq!(used, vec![11, 22, 33, 44]);
}

#[test]
fn hash_removing_a_worker_moves_only_its_keys_and_adding_it_back_restores() {
    let p = router(PolicySource::Builtin("hash"), &[]);
    let four = workers(&[101, 202, 303, 404]);
    let three = workers(&[101, 202, 404]);
    let keys: Vec<String> = (0..2000).map(|k| format!("key number {k:06} / tail")).collect();
    let before: Vec<u64> = keys.iter().map(|k| route_id(&p, k, &four)).collect();
    let after: Vec<u64> = keys.iter().map(|k| route_id(&p, k, &three)).collect();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if *b == 303 {
            assert_ne!(*a, 303);
            moved += 1;
        } else {
            assert_eq!(a, b, "a key moved that the removed worker did not own");
        }
    }
    // Rendezvous spreads keys evenly: the removed worker owned about a quarter.
    assert!((400..600).contains(&moved), "worker 303 owned {moved} of 2000 keys");
    let restored: Vec<u64> = keys.iter().map(|k| route_id(&p, k, &four)).collect();
    assert_eq!(restored, before);
}

#[test]
fn hash_guest_and_native_fallback_agree() {
    let p = router(PolicySource::Builtin("hash"), &[]);
    let ws = workers(&[7, 8, 9, 10, 11, 12, 13]);
    for k in 0..500 {
        let prompt = format!("prompt {k} with a tail that does not matter");
        let native = rendezvous(&prompt, ids(&ws)).unwrap();
        assert_eq!(route(&p, &req(&prompt), &ws).unwrap().index, native);
    }
}

#[test]
fn hash_prefix_chars_setting_is_honoured_and_validated() {
    let p = router(PolicySource::Builtin("hash"), &[("prefix-chars", "4")]);
    let ws = workers(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let ids: Vec<u64> = (0..40).map(|k| route_id(&p, &format!("abcd{k}"), &ws)).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));

    for bad in [("prefix-chars", "0"), ("prefix-chars", "many"), ("prefx-chars", "4")] {
        let e = RouterPolicy::load(
            &PolicySource::Builtin("hash"),
            &settings(&[bad]),
            FaultPolicy::default(),
        )
        .err()
        .expect("bad setting rejected");
        assert_eq!(e.step, LoadStep::Configure, "{e}");
        assert!(e.reason.contains(bad.0), "{e}");
    }
}

#[test]
fn random_is_reproducible_with_a_seed() {
    let ws = workers(&[1, 2, 3, 4, 5]);
    let draw = |seed: &str| {
        let p = router(PolicySource::Builtin("random"), &[("seed", seed)]);
        (0..1000).map(|_| route_id(&p, "same prompt", &ws)).collect::<Vec<_>>()
    };
    assert_eq!(draw("7"), draw("7"));
    assert_ne!(draw("7"), draw("8"));
}

#[test]
fn random_is_uniform_over_the_workers() {
    let p = router(PolicySource::Builtin("random"), &[("seed", "42")]);
    let ws = workers(&[1, 2, 4, 5]);
    let mut counts: HashMap<u64, u32> = HashMap::new();
    const N: u32 = 10_000;
    for _ in 0..N {
        *counts.entry(route_id(&p, "p", &ws)).or_default() += 1;
    }
    // Pearson's chi-square over the 4 workers (3 degrees of freedom): a uniform
    // source exceeds 16.27 with probability 0.001.
    let expected = f64::from(N) / 4.0;
    let chi2: f64 =
        [1, 2, 4, 5].iter().map(|id| (f64::from(counts[id]) - expected).powi(2) / expected).sum();
    assert!(chi2 < 16.27, "chi-square {chi2:.2} for counts {counts:?}");
}

/// The reference the `lru` guest must match: resident (key, size), least recent first.
#[derive(Default)]
struct ModelLru {
    order: Vec<(u64, u64)>,
    capacity: u64,
}

impl ModelLru {
    fn admit(&mut self, key: u64, size: u64) -> bool {
        if size > self.capacity {
            return false;
        }
        self.order.retain(|(k, _)| *k != key);
        self.order.push((key, size));
        true
    }
    fn hit(&mut self, key: u64) {
        if let Some(i) = self.order.iter().position(|(k, _)| *k == key) {
            let e = self.order.remove(i);
            self.order.push(e);
        }
    }
    fn evict(&mut self, needed: u64) -> Vec<u64> {
        let mut freed = 0;
        let mut keys = vec![];
        while freed < needed && !self.order.is_empty() {
            let (k, s) = self.order.remove(0);
            freed += s;
            keys.push(k);
        }
        keys
    }
    fn removed(&mut self, key: u64) {
        self.order.retain(|(k, _)| *k != key);
    }
    fn bytes(&self) -> u64 {
        self.order.iter().map(|(_, s)| s).sum()
    }
}

#[test]
fn lru_matches_a_reference_model_on_random_operations() {
    for seed in 0..4u64 {
        let capacity = 10_000;
        let cap = capacity.to_string();
        let p = CachePolicy::load(
            &PolicySource::Builtin("lru"),
            &settings(&[("capacity-bytes", &cap)]),
            FaultPolicy::default(),
        )
        .unwrap();
        let mut model = ModelLru { capacity, ..Default::default() };
        let mut rng = StdRng::seed_from_u64(seed);
        for step in 0..3000 {
            let key = rng.random_range(0..64u64);
            match rng.random_range(0..10) {
                0..=4 => {
                    let size =
                        rng.random_range(1..1500u64) * if rng.random_ratio(1, 50) { 10 } else { 1 };
                    let kind = if key % 2 == 0 { EntryKind::Prefix } else { EntryKind::Response };
                    let got = p.admit(Entry { key, kind, size });
                    assert_eq!(got, model.admit(key, size), "seed {seed} step {step}: admit");
                }
                5..=7 => {
                    p.hit(key);
                    model.hit(key);
                }
                8 => {
                    let needed = rng.random_range(0..4000u64);
                    assert_eq!(
                        p.evict(needed),
                        model.evict(needed),
                        "seed {seed} step {step}: evict"
                    );
                }
                _ => {
                    p.removed(key);
                    model.removed(key);
                }
            }
        }
        // Byte accounting: asking for exactly the modelled total frees everything, in
        // recency order, and asking for one byte less leaves the most recent entry.
        let total = model.bytes();
        let order: Vec<u64> = model.order.iter().map(|(k, _)| *k).collect();
        let last_size = model.order.last().map_or(0, |(_, s)| *s);
        if total > last_size {
            assert_eq!(p.evict(total - last_size), order[..order.len() - 1].to_vec());
            assert_eq!(p.evict(u64::MAX), order[order.len() - 1..].to_vec());
        }
        assert_eq!(p.info().faults, 0);
    }
}

fn load_err(source: PolicySource, kv: &[(&str, &str)]) -> locus_policy::LoadError {
    RouterPolicy::load(&source, &settings(kv), FaultPolicy::default())
        .err()
        .expect("the module must be rejected")
}

#[test]
fn faulty_modules_are_rejected_at_load_with_the_step_and_reason() {
    let faulty = || file(guests::FAULTY_PATH);
    let cases: Vec<(locus_policy::LoadError, LoadStep, &str)> = vec![
        (
            load_err(faulty(), &[("fault", "trap"), ("trigger", "always")]),
            LoadStep::Smoke,
            "trapped",
        ),
        (
            load_err(faulty(), &[("fault", "loop"), ("trigger", "always")]),
            LoadStep::Smoke,
            "timed out",
        ),
        (
            load_err(faulty(), &[("fault", "alloc"), ("trigger", "always")]),
            LoadStep::Smoke,
            "memory limit",
        ),
        (
            load_err(faulty(), &[("fault", "bad-index"), ("trigger", "always")]),
            LoadStep::Smoke,
            "index",
        ),
        (
            load_err(faulty(), &[("fault", "error"), ("trigger", "always")]),
            LoadStep::Smoke,
            "failed on purpose",
        ),
        (load_err(faulty(), &[("fault", "configure")]), LoadStep::Configure, "refused on purpose"),
        (load_err(file(guests::WRONG_WORLD_PATH), &[]), LoadStep::Typecheck, "router world"),
        (load_err(PolicySource::Builtin("lru"), &[]), LoadStep::Typecheck, "router world"),
        (
            load_err(
                PolicySource::Bytes { name: "junk".into(), bytes: b"GIF89a not wasm".to_vec() },
                &[],
            ),
            LoadStep::Compile,
            "not a WebAssembly component",
        ),
        (
            load_err(
                PolicySource::Bytes { name: "core".into(), bytes: b"\0asm\x01\0\0\0".to_vec() },
                &[],
            ),
            LoadStep::Compile,
            "core wasm module",
        ),
        (load_err(file("/nonexistent/policy.wasm"), &[]), LoadStep::Read, "cannot read"),
    ];
    for (err, step, needle) in cases {
        assert_eq!(err.step, step, "{err}");
        assert!(err.to_string().contains(needle), "expected {needle:?} in: {err}");
    }
}

#[test]
fn a_rejected_swap_leaves_the_old_policy_serving() {
    let p = router(PolicySource::Builtin("hash"), &[]);
    let before = p.info();
    let ws = workers(&[1, 2, 3]);
    let want = route_id(&p, "hello there, general", &ws);
    let e = p
        .swap(
            &file(guests::FAULTY_PATH),
            &settings(&[("fault", "loop"), ("trigger", "always")]),
            &Actor::default(),
        )
        .unwrap_err();
    assert_eq!(e.step, LoadStep::Smoke);
    assert_eq!(p.info(), before);
    assert_eq!(route_id(&p, "hello there, general", &ws), want);
}

/// Each run-time fault is contained: the native fallback decides, the fault is counted,
/// and the next call is served by a fresh instance of the policy.
fn contained(fault: &str, check: impl Fn(&Fault)) {
    let p = router(file(guests::FAULTY_PATH), &[("fault", fault), ("index", "2")]);
    let ws = workers(&[1, 2, 3, 4]);
    let prompt = "FAULT: please misbehave";
    let started = Instant::now();
    let d = route(&p, &req(prompt), &ws).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{fault}: the sandbox did not stop the call"
    );
    let f = d.fault.expect("the fault is reported");
    check(&f);
    let native = rendezvous(prompt, ids(&ws)).unwrap();
    assert_eq!(d.index, native, "{fault}: the native fallback decided");
    assert_eq!(p.info().faults, 1);
    for _ in 0..3 {
        let d = route(&p, &req("a normal prompt"), &ws).unwrap();
        assert_eq!((d.index, d.fault), (2, None), "{fault}: the policy serves again");
    }
}

#[test]
fn run_time_trap_is_contained() {
    contained("trap", |f| assert!(matches!(f, Fault::Trap(_)), "{f}"));
}

#[test]
fn run_time_infinite_loop_is_contained() {
    contained("loop", |f| assert_eq!(*f, Fault::Timeout(Duration::from_millis(10))));
}

#[test]
fn run_time_unbounded_allocation_is_contained() {
    contained("alloc", |f| assert_eq!(*f, Fault::Memory(64 << 20)));
}

#[test]
fn run_time_out_of_range_index_is_contained() {
    contained("bad-index", |f| assert_eq!(*f, Fault::OutOfRange { index: 11, len: 4 }));
}

#[test]
fn run_time_error_result_is_contained() {
    contained("error", |f| assert_eq!(*f, Fault::Error("route failed on purpose".into())));
}

#[test]
fn repeated_faults_roll_back_to_the_previous_version_then_a_good_swap_works() {
    let faults = FaultPolicy { max_faults: 3, window: Duration::from_secs(60) };
    let p = RouterPolicy::load(&PolicySource::Builtin("hash"), &LoadOptions::default(), faults)
        .unwrap();
    p.swap(
        &file(guests::FAULTY_PATH),
        &settings(&[("fault", "trap"), ("index", "1")]),
        &Actor::default(),
    )
    .unwrap();
    assert_eq!(p.info().name, guests::FAULTY_PATH);
    let ws = workers(&[1, 2, 3]);
    for i in 1..=3 {
        let d = route(&p, &req("FAULT now"), &ws).unwrap();
        assert!(d.fault.is_some());
        if i < 3 {
            assert_eq!(p.info().name, guests::FAULTY_PATH, "rolled back too early");
        }
    }
    assert_eq!(p.info().name, "hash", "three faults in the window roll back");
    assert_eq!(p.rollbacks(), 1);
    assert_eq!(p.total_faults(), 3);
    assert_eq!(route(&p, &req("FAULT now"), &ws).unwrap().fault, None);

    let info = p
        .swap(&PolicySource::Builtin("random"), &settings(&[("seed", "1")]), &Actor::default())
        .unwrap();
    assert_eq!(info.name, "random");
    assert_eq!(route(&p, &req("x"), &ws).unwrap().fault, None);
    // With nothing before it, a rollback lands on the native fallback.
    assert_eq!(p.rollback(&Actor::default()).name, "hash");
    assert_eq!(p.rollback(&Actor::default()).name, "native");
    let d = route(&p, &req("abc"), &ws).unwrap();
    assert_eq!(d.index, rendezvous("abc", ids(&ws)).unwrap());
}

/// Faults inside a Tokio runtime, where the router calls policies: the sandbox must not
/// reach for a runtime of its own (a panic would take the worker thread down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_inside_a_tokio_runtime_do_not_panic_the_host() {
    let never = FaultPolicy { max_faults: u32::MAX, window: Duration::from_secs(1) };
    let opts = settings(&[("fault", "trap")]);
    let p = Arc::new(RouterPolicy::load(&file(guests::FAULTY_PATH), &opts, never).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                let ws = workers(&[1, 2]);
                (0..20).filter(|_| route(&p, &req("FAULT"), &ws).unwrap().fault.is_some()).count()
            })
        })
        .collect();
    let mut faults = 0;
    for h in handles {
        faults += h.await.expect("no task panicked");
    }
    assert_eq!(faults, 80);
}

#[test]
fn cache_fault_bypasses_and_the_fresh_instance_learns_the_residents() {
    let p = Arc::new(
        CachePolicy::load(
            &file(guests::FAULTY_CACHE_PATH),
            &LoadOptions::default(),
            FaultPolicy::default(),
        )
        .unwrap(),
    );
    for key in 1..=3 {
        let e = Entry { key, kind: EntryKind::Prefix, size: 10 };
        assert!(p.admit(e));
    }
    assert!(
        !p.admit(Entry { key: 0xDEAD, kind: EntryKind::Response, size: 1 }),
        "fallback admits nothing"
    );
    assert_eq!(p.info().faults, 1);
    // The trapped instance is gone; the new one was told about keys 1..=3, oldest first.
    assert_eq!(p.evict(15), vec![1, 2]);
    assert_eq!(p.residents().iter().map(|e| e.key).collect::<Vec<_>>(), vec![3]);
    // A swap hands the residents to the new policy too.
    p.swap(&PolicySource::Builtin("lru"), &LoadOptions::default()).unwrap();
    assert!(p.admit(Entry { key: 4, kind: EntryKind::Prefix, size: 10 }));
    assert_eq!(p.evict(u64::MAX), vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_100_times_under_8_routing_tasks_fails_no_call() {
    // Policy i always answers worker i, so every answer names the policy that gave it.
    let opts = |i: usize| settings(&[("index", &i.to_string())]);
    let faulty = file(guests::FAULTY_PATH);
    let p = Arc::new(RouterPolicy::load(&faulty, &opts(0), FaultPolicy::default()).unwrap());
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = Arc::new(workers(&(0..128).collect::<Vec<_>>()));

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (p, committed, stop, ws) = (p.clone(), committed.clone(), stop.clone(), ws.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let floor = committed.load(Ordering::Acquire);
                    let d = route(&p, &req("steady traffic"), &ws).expect("workers exist");
                    assert_eq!(d.fault, None, "a call failed during a swap");
                    assert!(
                        d.index as u64 >= floor,
                        "answer {} from a policy older than swap {floor}",
                        d.index
                    );
                    calls += 1;
                    if calls.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                calls
            })
        })
        .collect();

    for i in 1..=100 {
        let pp = p.clone();
        let f = faulty.clone();
        tokio::task::spawn_blocking(move || pp.swap(&f, &opts(i), &Actor::default()).unwrap())
            .await
            .unwrap();
        committed.store(i as u64, Ordering::Release);
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("no routing task panicked");
    }
    assert!(total > 0);
    assert_eq!(p.total_faults(), 0);
    assert_eq!(route_id(&p, "after", &ws), 100);
}

// ---- contract 0.2.0 ----

fn probe() -> RouterPolicy {
    router(file(guests::PROBE_PATH), &[])
}

fn probe_says(p: &RouterPolicy, session: &str, ws: &Workers) -> String {
    let mut r = req("probe");
    r.session = Some(session.into());
    match route(&p, &r, ws).expect("workers").fault {
        Some(Fault::Error(msg)) => msg,
        other => panic!("the probe answered {other:?}"),
    }
}

fn route_blocks(p: &RouterPolicy, blocks: &[u64], ws: &Workers) -> usize {
    let mut r = req("blocks");
    r.block_hashes = blocks.to_vec();
    let d = route(&p, &r, ws).expect("workers");
    assert_eq!(d.fault, None);
    d.index
}

#[test]
fn components_of_both_contract_versions_load_and_say_which() {
    let old = router(PolicySource::Builtin("hash"), &[]);
    assert_eq!(old.info().version, "0.1.0");
    assert!(!tokenizes(&old), "a 0.1.0 policy makes the router tokenize nothing");
    let new = probe();
    assert_eq!(new.info().version, "0.2.0");
    assert!(tokenizes(&new));
    let report = locus_policy::inspect(&file(guests::PROBE_PATH), &LoadOptions::default());
    assert!(report.usable(), "{report}");
    assert!(report.to_string().contains("locus:policy/router@0.2.0"), "{report}");
    let report = locus_policy::inspect(&PolicySource::Builtin("random"), &LoadOptions::default());
    assert!(report.to_string().contains("locus:policy/router@0.1.0"), "{report}");
    let report = locus_policy::inspect(&PolicySource::Builtin("lru"), &LoadOptions::default());
    assert!(report.to_string().contains("locus:policy/cache@0.2.0"), "{report}");
    // A 0.1.0 policy still routes, observes and gets no KV events.
    old.kv().apply(11, false, vec![], vec![1, 2]);
    let ws = workers(&[11, 22, 33]);
    let d = route(&old, &req("still works"), &ws).unwrap();
    assert_eq!(d.fault, None);
    old.observe(
        &locus_policy::Completion::new(1, 11, locus_policy::Outcome::Broken),
        true,
        Default::default(),
    );
    assert_eq!(old.total_faults(), 0);
}

#[test]
fn every_load_list_crosses_the_boundary_intact() {
    let p = probe();
    let mut ws = workers(&[11, 22, 33, 44]);
    ws.load_known = vec![true, true, false, true];
    ws.in_flight = vec![0, 5, 1, 2];
    ws.waiting = vec![3, 0, 0, 1];
    ws.running = vec![0, 0, 9, 1];
    ws.kv_used_blocks = vec![1, 2, 3, 70];
    ws.kv_total_blocks = vec![100, 100, 100, 99];
    ws.tokens_per_second = vec![1.5, 0.0, 0.25, 99.5];
    ws.load_age_ms = vec![10, 900, 0, 5];
    for (field, want) in [
        ("in-flight", 1),
        ("waiting", 0),
        ("running", 2),
        ("kv-used", 3),
        ("kv-total", 0),
        ("tokens-per-second", 3),
        ("load-age", 1),
        ("unknown", 2),
    ] {
        let mut r = req("load");
        r.session = Some(format!("argmax:{field}"));
        let d = route(&p, &r, &ws).unwrap();
        assert_eq!((d.index, d.fault), (want, None), "argmax {field}");
    }
    // Lists of unequal lengths never reach the policy.
    ws.waiting.pop();
    assert!(route(&p, &req("x"), &ws).is_none());
}

#[test]
fn the_completion_crosses_the_boundary_intact() {
    let p = router(file(guests::PROBE_PATH), &[("locus.instances", "1")]);
    let mut done = locus_policy::Completion::new(77, 22, locus_policy::Outcome::Broken);
    done.status = 200;
    done.attempt = 1;
    done.latency_us = 123_456;
    done.ttft_us = Some(4_321);
    done.prompt_tokens = Some(300);
    done.cached_tokens = Some(256);
    done.response_cache_hit = Some(false);
    done.generated_tokens = Some(9);
    p.observe(&done, true, Default::default());
    let seen = probe_says(&p, "observed", &workers(&[11, 22]));
    for field in [
        "request-id: 77",
        "worker-id: 22",
        "Broken",
        "status: 200",
        "attempt: 1",
        "latency-us: 123456",
        "ttft-us: Some(4321)",
        "prompt-tokens: Some(300)",
        "cached-tokens: Some(256)",
        "response-cache-hit: Some(false)",
        "generated-tokens: Some(9)",
    ] {
        assert!(seen.contains(field), "{field} missing from {seen}");
    }
}

#[test]
fn every_instance_learns_the_kv_events_and_a_fresh_one_is_told_everything() {
    let p = probe();
    let ws = workers(&[11, 22, 33]);
    p.kv().apply(33, false, vec![], vec![1, 2, 3]);
    p.kv().apply(22, false, vec![], vec![1]);
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 2);
    // A trap replaces the instance; the fresh one is told every worker's blocks.
    let mut trap = req("x");
    trap.session = Some("trap".into());
    assert!(matches!(route(&p, &trap, &ws).unwrap().fault, Some(Fault::Trap(_))));
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 2);
    assert_eq!(probe_says(&p, "blocks:33", &ws), "3");
    // Removals apply (a tie goes to the lowest index), and so does a clear.
    p.kv().apply(33, false, vec![2], vec![]);
    assert_eq!(route_blocks(&p, &[1, 2, 3], &ws), 1);
    p.kv().clear(22);
    assert_eq!(route_blocks(&p, &[1, 2, 3], &ws), 2);
    // An instance further behind than the log reaches is told everything again, and a
    // worker that holds nothing now is cleared in it too.
    for i in 0..locus_policy::LOG_BATCHES as u64 + 10 {
        p.kv().apply(11, false, vec![], vec![1000 + i]);
    }
    p.kv().apply(11, false, vec![], vec![1, 2, 3, 4]);
    p.kv().clear(33);
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 0);
    assert_eq!(probe_says(&p, "blocks:11", &ws), (locus_policy::LOG_BATCHES + 14).to_string());
    assert_eq!(probe_says(&p, "blocks:33", &ws), "0");
    assert_eq!(probe_says(&p, "blocks:22", &ws), "0");
    assert_eq!(p.kv().head(), 4 + locus_policy::LOG_BATCHES as u64 + 10 + 2);
}

// ---- the built-in 0.2.0 policies through the boundary ----

#[test]
fn prefix_aware_goes_where_the_blocks_are_until_the_queue_there_costs_more() {
    let p = router(PolicySource::Builtin("prefix-aware"), &[("seed", "1")]);
    let mut ws = workers(&[11, 22, 33]);
    ws.load_known = vec![true; 3];
    ws.kv_total_blocks = vec![1000; 3];
    p.kv().apply(33, false, vec![], (0..32).collect());
    let mut r = req("shared system prompt");
    r.block_hashes = (0..33).collect();
    for _ in 0..20 {
        // Pooled instances: every one of them learnt the blocks.
        assert_eq!(route_blocks(&p, &r.block_hashes, &ws), 2);
    }
    ws.waiting[2] = 20;
    assert_ne!(route_blocks(&p, &r.block_hashes, &ws), 2, "20 queued cost more than 32 blocks");
    // Settings are checked.
    let err = load_err(PolicySource::Builtin("prefix-aware"), &[("load-weight", "-1")]);
    assert_eq!(err.step, LoadStep::Configure);
}

#[test]
fn bounded_hash_keeps_a_prefix_home_until_its_worker_is_over_capacity() {
    let p = router(PolicySource::Builtin("bounded-hash"), &[]);
    let mut ws = workers(&[11, 22, 33, 44]);
    let mut r = req("tenant 7's system prompt");
    r.block_hashes = vec![7, 8, 9];
    let home = route(&p, &r, &ws).unwrap().index;
    ws.in_flight[home] = 3;
    ws.in_flight[(home + 1) % 4] = 3;
    // Total 6 + 1 over 4 workers at c = 1.25: capacity 3, so home is full.
    let spilled = route(&p, &r, &ws).unwrap().index;
    assert_ne!(spilled, home);
    // Total 4 + 1: capacity 2, and home holds 1.
    ws.in_flight[home] = 1;
    assert_eq!(route(&p, &r, &ws).unwrap().index, home);
    let err = load_err(PolicySource::Builtin("bounded-hash"), &[("c", "0.5")]);
    assert_eq!(err.step, LoadStep::Configure);
}

#[test]
fn least_loaded_with_every_worker_drawn_takes_the_least_loaded() {
    let p = router(PolicySource::Builtin("least-loaded"), &[("choices", "4"), ("seed", "3")]);
    let mut ws = workers(&[11, 22, 33, 44]);
    ws.load_known = vec![true, true, true, false];
    ws.waiting = vec![3, 0, 5, 0];
    ws.running = vec![1, 2, 0, 0];
    ws.in_flight = vec![0, 0, 0, 4];
    for _ in 0..50 {
        assert_eq!(route(&p, &req("x"), &ws).unwrap().index, 1);
    }
}
