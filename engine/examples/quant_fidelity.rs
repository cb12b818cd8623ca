//! How closely 8-bit weights (`q8_0`) follow f32 on the same weights, printed as one JSON
//! object (engine/scripts/bench_llamacpp.py puts it beside the speeds).
//!
//! ```text
//! cargo run --release -p locus-engine --example quant_fidelity -- [MODEL] [PROMPTS] [STEPS]
//! ```
//! Prompts are token ids `(i * 977 + j * 131 + 7) % 50000`, 32 to 256 tokens long; each is
//! followed for STEPS greedy tokens of the f32 model (see `locus_engine::quant::fidelity`).

use locus_engine::quant::fidelity;
use locus_engine::{Engine, EngineOptions, ModelSource, WeightFormat};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model: ModelSource = args.next().as_deref().unwrap_or("synthetic").parse()?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let load = |weights| {
        Engine::load(&model, EngineOptions { prefix_cache_bytes: 0, weights, ..Default::default() })
    };
    let (f32e, q8e) = (load(WeightFormat::F32)?, load(WeightFormat::Q8_0)?);
    let prompts: Vec<Vec<u32>> = (0..n as u64)
        .map(|i| {
            (0..32 + (i * 71) % 225).map(|j| ((i * 977 + j * 131 + 7) % 50_000) as u32).collect()
        })
        .collect();
    let f = fidelity(f32e.model(), q8e.model(), &prompts, steps)?;
    let mut report = serde_json::to_value(&f)?;
    report["prompts"] = n.into();
    report["steps"] = steps.into();
    report["model"] = f32e.describe().into();
    println!("{report}");
    Ok(())
}
