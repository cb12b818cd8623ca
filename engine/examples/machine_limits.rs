//! This machine's limits, measured with the threads the engine uses (`RAYON_NUM_THREADS`),
//! printed as one JSON object: the ceilings of `engine/scripts/bench_llamacpp.py` are worked
//! out from them in the same run, never taken from a table.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p locus-engine --example machine_limits -- [REPS]
//! ```
//!
//! - `read_gb_s`: a 512 MiB f32 array (far past any cache) summed by the rayon threads,
//!   sixteen lanes of independent sums so that the adds keep up with memory; best of REPS.
//! - `peak_gflop_s`: candle's f32 matmul (gemm) at a large shape, 512 x 768 by 768 x 3072,
//!   the best rate a kernel reaches on this machine; best of REPS.
//! - `skinny_gflop_s`: the engine's few-row kernel ([`locus_engine::skinny`]) at the decode
//!   step's widest matrix (768 -> 3072) for 1, 8 and 16 rows; best of REPS.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

const LANES: usize = 16;

fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn sum_lanes(c: &[f32]) -> f32 {
    let acc = c.chunks_exact(LANES).fold([0f32; LANES], |mut a, x| {
        for i in 0..LANES {
            a[i] += x[i];
        }
        a
    });
    acc.iter().sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(7);
    let n = 128 << 20;
    let v: Vec<f32> = (0..n).into_par_iter().map(|i| (i % 7) as f32).collect();
    let read_s = best_of(reps, || {
        black_box(v.par_chunks(1 << 16).map(sum_lanes).sum::<f32>());
    });
    drop(v);

    let dev = Device::Cpu;
    let (m, k, n_out) = (512, 768, 3072);
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n_out), &dev)?;
    a.matmul(&b)?; // first touch
    let gemm_s = best_of(reps, || {
        black_box(a.matmul(&b).expect("matmul"));
    });

    let w = Tensor::randn(0f32, 1.0, (n_out, k), &dev)?;
    let mut skinny = serde_json::Map::new();
    for rows in [1usize, 8, 16] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
        locus_engine::skinny::matmul_t(&x, &w)?;
        // Many products per timing: one is ~100 us, below the clock's comfort.
        let per = 50;
        let s = best_of(reps, || {
            for _ in 0..per {
                black_box(locus_engine::skinny::matmul_t(&x, &w).expect("skinny"));
            }
        }) / per as f64;
        skinny.insert(rows.to_string(), (2.0 * (rows * k * n_out) as f64 / s / 1e9).into());
    }

    let report = serde_json::json!({
        "threads": rayon::current_num_threads(),
        "read_gb_s": (n * 4) as f64 / read_s / 1e9,
        "peak_gflop_s": 2.0 * (m * k * n_out) as f64 / gemm_s / 1e9,
        "peak_shape": [m, k, n_out],
        "skinny_available": locus_engine::skinny::available(),
        "skinny_gflop_s": skinny,
        "reps": reps,
    });
    println!("{report}");
    Ok(())
}
