//! Policy runtime benchmark: `route` latency through the wasm `hash` policy against the
//! same algorithm compiled natively, side by side in one run, and the time to load,
//! validate and swap in `hash.wasm`.
//!
//! Run: `cargo bench -p locus --bench policy` (add `-- --quick` for a short run).

use std::time::{Duration, Instant};

use locus::policy::{
    FaultPolicy, LoadOptions, PolicySource, Request, RouterPolicy, rendezvous, workers,
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
        &PolicySource::File(locus::guests::FAULTY_PATH.into()),
        &LoadOptions::default(),
        FaultPolicy::default(),
    )
    .unwrap();
    let prompts: Vec<Request> = (0..1024)
        .map(|i| {
            let prompt = format!("You are a helpful assistant, conversation {i}: what is the answer?");
            Request::new(i, prompt, 64)
        })
        .collect();

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
                let d = policy.route(&prompts[i % prompts.len()], &workers).unwrap();
                check ^= d.index;
            }));
            native.extend(sample(per_round, |i| {
                let r = &prompts[i % prompts.len()];
                check ^= rendezvous(&r.prompt, workers.ids.iter().copied()).unwrap();
            }));
            noop.extend(sample(per_round, |i| {
                assert_eq!(idle.route(&prompts[i % prompts.len()], &workers).unwrap().index, 0);
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
        policy.swap(&src, &LoadOptions::default()).unwrap();
        cold.push(t.elapsed());
        let t = Instant::now();
        policy.swap(&src, &LoadOptions::default()).unwrap();
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
