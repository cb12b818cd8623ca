//! Policy runtime benchmark: `route` latency through the wasm `hash` policy against the
//! same algorithm compiled natively, side by side in one run; `route` through a 0.1.0
//! component against a 0.2.0 one given block hashes, load lists and KV events; and the
//! time to load, validate and swap in `hash.wasm`.
//!
//! Run: `cargo bench -p locus --bench policy` (add `-- --quick` for a short run).

use std::time::{Duration, Instant};

use locus_policy::{
    Actor, Ask, FaultPolicy, LoadOptions, PolicySource, Request, RouterPolicy, rendezvous, workers,
};

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
}

/// Nanoseconds per call of `f`, one sample per call.
fn sample(n: usize, mut f: impl FnMut(usize)) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i);
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    let per_round = if quick { 20_000 } else { 50_000 };

    let hash = PolicySource::Builtin("hash");
    let policy =
        RouterPolicy::load(&hash, &LoadOptions::default(), FaultPolicy::default()).unwrap();
    // The boundary alone: a policy that does (almost) no work and answers worker 0.
    let idle = RouterPolicy::load(
        &PolicySource::File(locus_policy::guests::FAULTY_PATH.into()),
        &LoadOptions::default(),
        FaultPolicy::default(),
    )
    .unwrap();
    let prompts: Vec<Request> = (0..1024)
        .map(|i| {
            let prompt =
                format!("You are a helpful assistant, conversation {i}: what is the answer?");
            Request::new(i, prompt, 64)
        })
        .collect();
    let mut prompts_asks: Vec<Ask> = prompts.iter().map(|r| Ask::new(r.clone())).collect();

    println!("route latency, ns per call ({rounds} interleaved rounds x {per_round} calls each)");
    println!(
        "| workers | wasm hash p50 | wasm hash p99 | native p50 | native p99 | wasm/native p50 | no-op policy p50 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [3usize, 16, 128] {
        let workers = workers((0..n as u64).map(|i| (0x9E37_79B9 ^ (i * 7919), 0)));
        let (mut wasm, mut native, mut noop) = (Vec::new(), Vec::new(), Vec::new());
        let mut check = 0usize;
        for _ in 0..rounds {
            wasm.extend(sample(per_round, |i| {
                let d = policy.route(&mut prompts_asks[i % prompts.len()], &workers).unwrap();
                check ^= d.index;
            }));
            native.extend(sample(per_round, |i| {
                let r = &prompts[i % prompts.len()];
                check ^= rendezvous(&r.prompt, workers.ids.iter().copied()).unwrap();
            }));
            noop.extend(sample(per_round, |i| {
                assert_eq!(
                    idle.route(&mut prompts_asks[i % prompts.len()], &workers).unwrap().index,
                    0
                );
            }));
        }
        assert_eq!(check, 0, "wasm and native disagree");
        wasm.sort_unstable();
        native.sort_unstable();
        noop.sort_unstable();
        let (w50, n50) = (percentile(&wasm, 0.5), percentile(&native, 0.5));
        println!(
            "| {n} | {w50:.0} | {:.0} | {n50:.0} | {:.0} | {:.2}x | {:.0} |",
            percentile(&wasm, 0.99),
            percentile(&native, 0.99),
            w50 / n50,
            percentile(&noop, 0.5),
        );
    }
    assert_eq!(policy.total_faults(), 0);
    contract_versions(rounds, per_round);
    prefix_aware(rounds, per_round);

    // Load + validate + swap. Cold: a never-seen component (a custom section appended
    // changes its hash, so nothing is cached) is compiled; warm: the same bytes again.
    let base = hash.bytes().unwrap();
    let samples = if quick { 5 } else { 20 };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..samples {
        let mut bytes = base.clone();
        let payload = format!("bench-{i}-{}", std::process::id());
        // Custom section: id 0, size, then a name (length-prefixed); the payload is the name.
        bytes.push(0);
        bytes.push((payload.len() + 1) as u8);
        bytes.push(payload.len() as u8);
        bytes.extend_from_slice(payload.as_bytes());
        let src = PolicySource::Bytes { name: "hash.wasm".into(), bytes };
        let t = Instant::now();
        policy.swap(&src, &LoadOptions::default(), &Actor::default()).unwrap();
        cold.push(t.elapsed());
        let t = Instant::now();
        policy.swap(&src, &LoadOptions::default(), &Actor::default()).unwrap();
        warm.push(t.elapsed());
    }
    cold.sort();
    warm.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("load + validate + swap of hash.wasm ({} bytes), {samples} samples", base.len());
    println!("| | p50 ms | max ms |");
    println!("|---|---:|---:|");
    println!(
        "| cold (compile) | {:.2} | {:.2} |",
        ms(cold[cold.len() / 2]),
        ms(*cold.last().unwrap())
    );
    println!(
        "| warm (compiled before) | {:.2} | {:.2} |",
        ms(warm[warm.len() / 2]),
        ms(*warm.last().unwrap())
    );
}

/// `route` through a 0.1.0 component (`hash`) and a 0.2.0 one (the `probe` test guest:
/// the longest run of the request's 64 block hashes that a worker holds, from its own
/// index fed by KV events), with every load list filled, interleaved in one run. "Boundary
/// only" is the probe answering from the session key at once: what crossing costs.
fn contract_versions(rounds: usize, per_round: usize) {
    let load = |src: PolicySource| {
        RouterPolicy::load(&src, &LoadOptions::default(), FaultPolicy::default()).unwrap()
    };
    let v1 = load(PolicySource::Builtin("hash"));
    let v2 = load(PolicySource::File(locus_policy::guests::PROBE_PATH.into()));
    let prompts: Vec<Request> = (0..1024u64)
        .map(|i| {
            let mut r = Request::new(i, format!("conversation {i}: a prompt of 64 blocks"), 64);
            // 16 tenants; each prompt is its tenant's 48 shared blocks and 16 of its own.
            let tenant = i % 16;
            r.block_hashes =
                (0..64).map(|b| if b < 48 { tenant << 32 | b } else { i << 32 | b }).collect();
            r.prompt_tokens = Some(64 * 16);
            r
        })
        .collect();
    let mut prompts_asks: Vec<Ask> = prompts.iter().map(|r| Ask::new(r.clone())).collect();
    println!();
    println!(
        "route latency by contract version, ns per call, 64-block prompts ({rounds} interleaved rounds x {per_round} calls)"
    );
    println!(
        "| workers | 0.1.0 hash p50 | p99 | 0.2.0 boundary only p50 | p99 | 0.2.0 probe p50 | p99 | 0.2.0 with KV events flowing p50 | p99 | blocks indexed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [3usize, 16, 128] {
        let mut ws = workers((0..n as u64).map(|i| (0x9E37_79B9 ^ (i * 7919), i as u32 % 4)));
        for i in 0..n {
            ws.load_known[i] = true;
            ws.load_age_ms[i] = 40;
            ws.waiting[i] = (i % 3) as u32;
            ws.running[i] = (i % 16) as u32;
            ws.kv_used_blocks[i] = 100 + i as u32;
            ws.kv_total_blocks[i] = 1820;
            ws.tokens_per_second[i] = 80.0;
        }
        // Each tenant's shared blocks on one worker, and 100k blocks in all.
        let kv = v2.kv();
        for (w, id) in ws.ids.iter().enumerate() {
            let shared: Vec<u64> = (0..16u64)
                .filter(|t| *t as usize % n == w)
                .flat_map(|t| (0..48).map(move |b| t << 32 | b))
                .collect();
            let filler: Vec<u64> =
                (0..100_000 / n as u64).map(|k| (1 << 63) | (*id << 20) | k).collect();
            kv.apply(*id, true, Vec::new(), shared.into_iter().chain(filler).collect());
        }
        let indexed = kv.total_blocks();
        let pinned: Vec<Request> = prompts
            .iter()
            .map(|r| Request { session: Some("pin:0".into()), ..r.clone() })
            .collect();
        let mut pinned_asks: Vec<Ask> = pinned.iter().map(|r| Ask::new(r.clone())).collect();
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut i0 = 0;
        for _ in 0..rounds {
            a.extend(sample(per_round, |i| {
                v1.route(&mut prompts_asks[i % prompts.len()], &ws).unwrap();
            }));
            d.extend(sample(per_round, |i| {
                v2.route(&mut pinned_asks[i % pinned.len()], &ws).unwrap();
            }));
            b.extend(sample(per_round, |i| {
                v2.route(&mut prompts_asks[i % prompts.len()], &ws).unwrap();
            }));
            // Between routes, one worker stores 4 new blocks and drops the 4 it stored n
            // routes ago, so the index keeps its size.
            c.extend(sample(per_round, |j| {
                let i = i0 + j as u64;
                let block = |i: u64, k: u64| (1 << 62) | (i << 2) | k;
                let removed = if i >= n as u64 {
                    (0..4).map(|k| block(i - n as u64, k)).collect()
                } else {
                    Vec::new()
                };
                kv.apply(
                    ws.ids[i as usize % n],
                    false,
                    removed,
                    (0..4).map(|k| block(i, k)).collect(),
                );
                v2.route(&mut prompts_asks[j % prompts.len()], &ws).unwrap();
            }));
            i0 += per_round as u64;
        }
        for v in [&mut a, &mut b, &mut c, &mut d] {
            v.sort_unstable();
        }
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {indexed} |",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&d, 0.5),
            percentile(&d, 0.99),
            percentile(&b, 0.5),
            percentile(&b, 0.99),
            percentile(&c, 0.5),
            percentile(&c, 0.99),
        );
        // Fresh index for the next size.
        for id in &ws.ids {
            kv.clear(*id);
        }
    }
    assert_eq!(v1.total_faults() + v2.total_faults(), 0, "no call faulted");
}

/// `route` through the built-in `prefix-aware` with 100k blocks indexed over all workers
/// (issue 10's target: p99 <= 20 us at 16 workers), pooled as the router runs it.
fn prefix_aware(rounds: usize, per_round: usize) {
    println!();
    println!(
        "prefix-aware route latency, ns per call, 64-block prompts, 100k blocks indexed ({rounds} rounds x {per_round} calls)"
    );
    println!("| workers | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|");
    for n in [3usize, 16, 128] {
        let p = RouterPolicy::load(
            &PolicySource::Builtin("prefix-aware"),
            &LoadOptions::default(),
            FaultPolicy::default(),
        )
        .unwrap();
        let mut ws = workers((0..n as u64).map(|i| (0x9E37_79B9 ^ (i * 7919), i as u32 % 4)));
        for i in 0..n {
            ws.load_known[i] = true;
            ws.waiting[i] = (i % 3) as u32;
            ws.running[i] = (i % 16) as u32;
            ws.kv_used_blocks[i] = 100 + i as u32;
            ws.kv_total_blocks[i] = 1820;
        }
        // 16 tenants' 48-block system prompts, each on one worker, and filler to 100k.
        for (w, id) in ws.ids.iter().enumerate() {
            let shared = (0..16u64)
                .filter(|t| *t as usize % n == w)
                .flat_map(|t| (0..48).map(move |b| t << 32 | b));
            let filler = (0..100_000 / n as u64).map(|k| (1 << 63) | (*id << 20) | k);
            p.kv().apply(*id, true, Vec::new(), shared.chain(filler).collect());
        }
        let prompts: Vec<Request> = (0..1024u64)
            .map(|i| {
                let mut r = Request::new(i, "tenant prompt", 64);
                let t = i % 16;
                r.block_hashes =
                    (0..64).map(|b| if b < 48 { t << 32 | b } else { i << 32 | b }).collect();
                r.prompt_tokens = Some(64 * 16 + 5);
                r
            })
            .collect();
        let mut prompts_asks: Vec<Ask> = prompts.iter().map(|r| Ask::new(r.clone())).collect();
        let mut v = Vec::new();
        for _ in 0..rounds {
            v.extend(sample(per_round, |i| {
                p.route(&mut prompts_asks[i % prompts.len()], &ws).unwrap();
            }));
        }
        v.sort_unstable();
        println!(
            "| {n} | {:.0} | {:.0} | {:.0} |",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            *v.last().unwrap() as f64
        );
        assert_eq!(p.total_faults(), 0);
    }
}
