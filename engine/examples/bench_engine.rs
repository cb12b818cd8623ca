//! Engine timings on the distilgpt2 shape, printed as one JSON object (driven by
//! engine/scripts/bench_vs_torch.py, which runs PyTorch on the same weights beside it).
//!
//! ```text
//! cargo run --release -p locus-engine --example bench_engine -- export DIR
//! cargo run --release -p locus-engine --example bench_engine -- run MODEL [REPS]
//! ```
//! Prompts are token ids `(i * 7919 + 13) % 50000`; the script builds the same ones for PyTorch.

use std::time::Instant;

use locus_engine::gpt2::Config;
use locus_engine::source::{SYNTHETIC_SEED, export, synthetic_weights};
use locus_engine::{Engine, EngineOptions, GenerateRequest, ModelSource, WeightFormat};

const PROMPT: usize = 512;
const PREFIX: usize = 448;
const DECODE_PROMPT: usize = 128;
const DECODE_NEW: usize = 128;

fn ids(n: usize, salt: u64) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 7919 + 13 + salt * 104_729) % 50_000) as u32).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Best of the reps: other processes only ever add time, so the minimum is the least
/// disturbed figure on a shared machine (the medians are reported too).
fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("export") => {
            let dir = args.get(1).ok_or("export DIR")?;
            let cfg = Config::distilgpt2();
            let t = Instant::now();
            let tensors = synthetic_weights(&cfg, SYNTHETIC_SEED, &candle_core::Device::Cpu)?;
            eprintln!("made synthetic weights in {:.2} s", t.elapsed().as_secs_f64());
            export(dir.as_ref(), &cfg, &tensors)?;
        }
        Some("run") => {
            let model: ModelSource = args.get(1).ok_or("run MODEL")?.parse()?;
            let reps: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5);
            run(&model, reps)?;
        }
        _ => return Err("usage: bench_engine export DIR | run MODEL [REPS]".into()),
    }
    Ok(())
}

fn run(model: &ModelSource, reps: usize) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let weights = WeightFormat::from_env()?;
    let engine = Engine::load(
        model,
        EngineOptions { prefix_cache_bytes: 1 << 30, weights, ..Default::default() },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let prompt = ids(PROMPT, 0);

    // Warm-up: first touches of the weights and allocator.
    let (logits, _) = engine.last_logits(&prompt, false)?;

    // Tail over a cached prefix: the prefix is stored once, then each rep runs a fresh 64-token
    // tail (a repeated tail would itself be cached by the previous rep). Cold and tail reps
    // alternate so that load from other processes hits both sides of the ratio alike.
    engine.last_logits(&prompt[..PREFIX + 1], true)?;
    let (mut cold, mut tail) = (Vec::new(), Vec::new());
    let mut cached = 0;
    for r in 0..reps {
        let t = Instant::now();
        engine.last_logits(&prompt, false)?;
        cold.push(t.elapsed().as_secs_f64());

        let mut p = prompt[..PREFIX].to_vec();
        p.extend(ids(PROMPT - PREFIX, r as u64 + 1));
        let t = Instant::now();
        let (_, c) = engine.last_logits(&p, true)?;
        tail.push(t.elapsed().as_secs_f64());
        cached = c;
    }

    let mut decode = Vec::new();
    let mut decoded = 0;
    for _ in 0..reps {
        let req =
            GenerateRequest { max_new_tokens: DECODE_NEW, temperature: 0.0, ..Default::default() };
        let out = engine.generate_from_ids(&ids(DECODE_PROMPT, 99), &req, |_| {})?;
        // decode_ms covers the forwards after the first token: one fewer than generated.
        decoded = out.completion_tokens;
        decode.push((out.completion_tokens - 1) as f64 / (out.decode_ms / 1e3));
    }

    let argmax =
        logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    let (cold_s, tail_s) = (best(&cold), best(&tail));
    let decode_best = -best(&decode.iter().map(|x| -x).collect::<Vec<_>>());
    let report = serde_json::json!({
        "engine": "locus (candle 0.11)",
        "model": engine.describe(),
        "weight_format": weights.name(),
        "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        "load_s": load_s,
        "prefill_tokens": PROMPT,
        "prefill_s": cold_s,
        "prefill_tok_s": PROMPT as f64 / cold_s,
        "decode_prompt": DECODE_PROMPT,
        "decode_tokens": decoded,
        "decode_tok_s": decode_best,
        "decode_tok_s_median": median(decode.clone()),
        "prefill_tok_s_median": PROMPT as f64 / median(cold.clone()),
        // Median over reps of tail / the cold run just before it.
        "tail_ratio_median": median(tail.iter().zip(&cold).map(|(t, c)| t / c).collect()),
        "tail_tokens": PROMPT - PREFIX,
        "tail_cached_tokens": cached,
        "tail_s": tail_s,
        "tail_ratio": tail_s / cold_s,
        "last_logits_head": &logits[..8],
        "argmax": argmax,
    });
    println!("{report}");
    Ok(())
}
