//! How decode throughput could scale with batching on this machine: the weight-bound
//! matmuls of one decode step (per layer QKV 768x2304, attention output 768x768, MLP
//! 768x3072 and 3072x768; then the LM head 768x50257), timed for B rows at once. One row
//! is one sequence's next token, so rows/s at B is the ceiling of B batched streams'
//! tokens/s before attention, sampling and scheduling take their share. Groundwork for
//! continuous batching: it says how large `--max-batch` is worth making.
//!
//! ```text
//! cargo run --release -p locus-engine --example batch_scaling [-- REPS]
//! ```

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

fn main() -> candle_core::Result<()> {
    let reps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let dev = Device::Cpu;
    let (layers, d) = (6, 768);
    let shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)];
    let weights: Vec<Tensor> = shapes
        .iter()
        .map(|&(i, o)| Tensor::randn(0f32, 0.02, (i, o), &dev))
        .collect::<candle_core::Result<_>>()?;
    let head = Tensor::randn(0f32, 0.02, (d, 50_257), &dev)?;
    // The same matrices laid out [out, in], as the model holds them for the skinny kernel.
    let weights_t: Vec<Tensor> =
        weights.iter().map(|w| w.t()?.contiguous()).collect::<candle_core::Result<_>>()?;
    let head_t = head.t()?.contiguous()?;
    println!(
        "| rows (B) | candle ms per step (best of {reps}) | candle rows/s | vs B=1 | skinny ms per step | skinny rows/s | skinny vs candle B=1 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut base = 0.0;
    for b in [1usize, 2, 4, 8, 16, 32, 64] {
        let x = Tensor::randn(0f32, 1.0, (b, d), &dev)?;
        let x4 = Tensor::randn(0f32, 1.0, (b, 4 * d), &dev)?;
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..layers {
                for (w, &(i, _)) in weights.iter().zip(&shapes) {
                    let input = if i == d { &x } else { &x4 };
                    input.matmul(w)?.to_dtype(DType::F32)?;
                }
            }
            x.matmul(&head)?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut best_skinny = f64::INFINITY;
        if b <= locus_engine::skinny::MAX_ROWS {
            for _ in 0..reps {
                let t = Instant::now();
                for _ in 0..layers {
                    for (w, &(i, _)) in weights_t.iter().zip(&shapes) {
                        let input = if i == d { &x } else { &x4 };
                        locus_engine::skinny::matmul_t(input, w)?;
                    }
                }
                locus_engine::skinny::matmul_t(&x, &head_t)?;
                best_skinny = best_skinny.min(t.elapsed().as_secs_f64());
            }
        }
        let rows = b as f64 / best;
        if b == 1 {
            base = rows;
        }
        let skinny_rows = b as f64 / best_skinny;
        println!(
            "| {b} | {:.2} | {rows:.0} | {:.1}x | {:.2} | {skinny_rows:.0} | {:.1}x |",
            best * 1e3,
            rows / base,
            best_skinny * 1e3,
            skinny_rows / base
        );
    }
    Ok(())
}
