//! Continuous batching measured on the offline distilgpt2-shaped model (issue 8), side by
//! side in one run, repetitions interleaved so that machine noise hits every column alike.
//!
//! ```text
//! cargo run --release -p locus-engine --example batch_decode -- [REPS] [STREAMS,..] [CHUNKS,..]
//! ```
//!
//! 1. Decode throughput: N concurrent streams (128-token prompts, distinct per stream and
//!    per repetition, 128 new tokens, greedy, end-of-text ignored), on an engine batching
//!    up to 32 sequences and on one with `max_batch` 1. "decode tok/s": tokens generated
//!    while all N streams were decoding, over that time (prefill excluded, as far as the
//!    streams overlap: with `max_batch` 1 they do not, and the single-stream figure is its
//!    N=1 row); "wall tok/s": all tokens over the whole wall time, prefill included.
//! 2. Chunked prefill: a 900-token prompt starts, a 16-token request arrives 100 ms later;
//!    the short one's time to first token, and the long one's, for each prefill chunk size
//!    (1024 = no chunking).

use std::sync::Arc;
use std::time::{Duration, Instant};

use locus_engine::{Engine, EngineOptions, GenerateRequest, Limits, ModelSource, WeightFormat};

fn ids(n: usize, salt: u64) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 7919 + 13 + salt * 104_729) % 50_000) as u32).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load(limits: Limits) -> Arc<Engine> {
    // No deadline: with one place, 32 streams queue for minutes by design.
    let limits = Limits { queue_timeout: Duration::from_secs(3600), ..limits };
    let opts = EngineOptions {
        prefix_cache_bytes: 0,
        limits,
        weights: WeightFormat::from_env().expect("LOCUS_WEIGHT_FORMAT"),
    };
    Arc::new(Engine::load(&ModelSource::Synthetic, opts).expect("synthetic model"))
}

fn list(arg: Option<String>, default: &[usize]) -> Vec<usize> {
    arg.map(|a| a.split(',').map(|x| x.parse().expect("a number")).collect())
        .unwrap_or_else(|| default.to_vec())
}

struct Run {
    decode_tps: f64,
    wall_tps: f64,
    tpot_ms: f64,
}

/// N streams at once. Every token's arrival is timed: the decode figures come from the
/// window where all N streams were decoding (from the last stream's first token to the
/// first stream's last), so prefill steps count only where they really interleave.
fn streams(engine: &Arc<Engine>, n: usize, salt: u64) -> Run {
    let req = GenerateRequest { max_new_tokens: 128, ignore_eos: true, ..Default::default() };
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (engine, req) = (engine.clone(), req.clone());
            let prompt = ids(128, salt * 1000 + i as u64);
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(128);
                let mut seen = 0;
                engine
                    .generate_until(&prompt, &req, |_, tokens| {
                        // One timestamp per token (a piece can carry several).
                        while seen < tokens {
                            times.push(Instant::now());
                            seen += 1;
                        }
                        std::ops::ControlFlow::Continue(())
                    })
                    .unwrap();
                times
            })
        })
        .collect();
    let times: Vec<Vec<Instant>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = started.elapsed().as_secs_f64();
    let from = times.iter().map(|t| t[0]).max().unwrap();
    let to = times.iter().map(|t| *t.last().unwrap()).min().unwrap();
    if to <= from {
        // The streams never all decoded at once (one at a time): each stream's own decode.
        let span: f64 =
            times.iter().map(|t| t.last().unwrap().duration_since(t[0]).as_secs_f64()).sum();
        let tokens = (n * 127) as f64;
        return Run {
            decode_tps: tokens / span,
            wall_tps: (n * 128) as f64 / wall,
            tpot_ms: span * 1e3 / tokens,
        };
    }
    // Tokens after `from` up to `to`, over that window.
    let in_window: usize =
        times.iter().map(|t| t.iter().filter(|&&x| x > from && x <= to).count()).sum();
    let window = to.duration_since(from).as_secs_f64();
    Run {
        decode_tps: in_window as f64 / window,
        wall_tps: (n * 128) as f64 / wall,
        tpot_ms: window * 1e3 / (in_window as f64 / n as f64),
    }
}

/// (short request's TTFT, long prompt's TTFT), in ms.
fn prefill_race(engine: &Arc<Engine>, salt: u64) -> (f64, f64) {
    let long = {
        let engine = engine.clone();
        let req = GenerateRequest { max_new_tokens: 1, ..Default::default() };
        std::thread::spawn(move || {
            let g = engine.generate_from_ids(&ids(900, salt), &req, |_| {}).unwrap();
            g.queue_ms + g.prefill_ms
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let req = GenerateRequest { max_new_tokens: 1, ..Default::default() };
    let g = engine.generate_from_ids(&ids(16, salt + 7), &req, |_| {}).unwrap();
    (g.queue_ms + g.prefill_ms, long.join().unwrap())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map(|a| a.parse().expect("REPS")).unwrap_or(3);
    let ns = list(args.next(), &[1, 2, 4, 8, 16, 32]);
    let chunks = list(args.next(), &[32, 64, 128, 256, 1024]);

    let batched = load(Limits { max_batch: 32, ..Limits::default() });
    let single = load(Limits { max_batch: 1, ..Limits::default() });
    println!("## Decode: N streams x 128 new tokens (median of {reps}, interleaved)\n");
    println!(
        "| streams | decode tok/s, batched | decode tok/s, max-batch 1 | batched / max-batch 1 | batched vs 1 stream | wall tok/s batched | wall tok/s max-batch 1 | ms per output token, batched | ms per output token, max-batch 1 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut one_stream = None;
    let mut salt = 1;
    for &n in &ns {
        let (mut b, mut s) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            salt += 1;
            b.push(streams(&batched, n, salt));
            s.push(streams(&single, n, salt + 500));
        }
        let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
        let (bd, sd) = (m(&b, |r| r.decode_tps), m(&s, |r| r.decode_tps));
        // With one place in the batch, streams run one after another: the aggregate is one
        // stream's rate whatever N, so the single-stream figure is max-batch 1's.
        let base = *one_stream.get_or_insert(sd);
        println!(
            "| {n} | {bd:.1} | {sd:.1} | {:.2}x | {:.2}x | {:.1} | {:.1} | {:.1} | {:.1} |",
            bd / sd,
            bd / base,
            m(&b, |r| r.wall_tps),
            m(&s, |r| r.wall_tps),
            m(&b, |r| r.tpot_ms),
            m(&s, |r| r.tpot_ms),
        );
    }
    drop((batched, single));

    println!(
        "\n## Prefill chunk: 900-token prompt, 16-token request 100 ms later (median of {reps})\n"
    );
    println!("| prefill chunk | short request TTFT ms | 900-token prompt TTFT ms |");
    println!("|---:|---:|---:|");
    let engines: Vec<(usize, Arc<Engine>)> = chunks
        .iter()
        .map(|&c| (c, load(Limits { prefill_chunk: c, ..Limits::default() })))
        .collect();
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); engines.len()];
    for _ in 0..reps {
        for ((_, e), r) in engines.iter().zip(&mut results) {
            salt += 1;
            let (short, long) = prefill_race(e, salt);
            r.0.push(short);
            r.1.push(long);
        }
    }
    for ((c, _), (short, long)) in engines.iter().zip(results) {
        println!("| {c} | {:.0} | {:.0} |", median(short), median(long));
    }
}
