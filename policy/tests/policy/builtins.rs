//! The built-in policies, each against a reference of what it must do.

use crate::common::*;

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

/// What a client can make the router hand a policy, at its largest, many times over and
/// all distinct: maximum-size session keys (more than `prefix-aware` remembers), 8 KiB
/// prompts (the router's routing prompt cap) and a full context's block hashes. Every
/// built-in router policy keeps answering within its memory cap: no fault, no rollback.
#[test]
fn every_router_policy_holds_under_maximum_size_inputs() {
    let ws = workers(&[1, 2, 3]);
    let prompt = "p".repeat(8192);
    for (name, n) in [
        ("random", 2_000),
        ("hash", 2_000),
        ("least-loaded", 2_000),
        ("bounded-hash", 2_000),
        // Past its 100,000 remembered sessions, so that it forgets too.
        ("prefix-aware", 110_000),
    ] {
        let p = router(PolicySource::Builtin(name), &[]);
        let version = p.info().version;
        for i in 0..n {
            let mut r = Request::new(i, prompt.clone(), 16);
            let mut session = format!("{i:020}");
            session.extend(std::iter::repeat_n('s', locus_policy::SESSION_BYTES_MAX - 20));
            r.session = Some(session);
            r.block_hashes = (0..64).map(|b| i << 8 | b).collect();
            r.prompt_tokens = Some(1024);
            let d = route(&p, &r, &ws).expect("workers");
            assert_eq!(d.fault, None, "{name} faulted on request {i}");
        }
        assert_eq!(p.total_faults(), 0, "{name}");
        assert_eq!(p.info().version, version, "{name} was rolled back");
    }
}
