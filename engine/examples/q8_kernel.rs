//! candle's Q8_0 matmul beside locus's f32 few-row kernel on distilgpt2's projection shapes,
//! at 1-32 rows: why the 8-bit head is padded to a multiple of 16 rows (50,272 beside
//! 50,257 shows the two kernels candle picks between).
//!
//! ```text
//! cargo run --release -p locus-engine --example q8_kernel -- [REPS]
//! ```
//! Each figure is the mean of REPS products of one matrix, so the smaller matrices are read
//! from cache: a kernel figure, not a decode step's.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

fn main() -> candle_core::Result<()> {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let dev = Device::Cpu;
    println!("| out x in | rows | q8_0 ms | q8_0 GFLOP/s | f32 ms | f32 / q8_0 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (n, k) in [(2304, 768), (3072, 768), (768, 3072), (50257, 768), (50272, 768)] {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let q = QMatMul::QTensor(std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0)?));
        for m in [1usize, 8, 16, 32] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            q.forward(&x)?;
            let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| {
                let t = Instant::now();
                for _ in 0..reps {
                    f()?;
                }
                Ok::<f64, candle_core::Error>(t.elapsed().as_secs_f64() / reps as f64)
            };
            let q8 = time(&|| q.forward(&x))?;
            let f32 = time(&|| locus_engine::skinny::matmul_t(&x, &w))?;
            let gflop = 2.0 * (m * n * k) as f64 / q8 / 1e9;
            println!(
                "| {n} x {k} | {m} | {:.3} | {gflop:.0} | {:.3} | {:.1}x |",
                q8 * 1e3,
                f32 * 1e3,
                f32 / q8
            );
        }
    }
    Ok(())
}
