//! One row times a weight matrix (a single stream's decode product), three ways, on the
//! distilgpt2 head (154 MB, streamed from memory) and two layer shapes: locus's few-row
//! kernel, candle's matmul, a plain dot per weight row (four 16-lane accumulators, one
//! weight row at a time), and four weight rows at a time with one accumulator each (the
//! kernel's pattern, bare). Printed as GB/s of weights read; a probe for the next kernel, not
//! part of the benchmark script.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p locus-engine --example gemv_probe
//! ```

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Dot product with four independent accumulators (more FMAs in flight than one chain).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    unsafe {
        let mut s = [_mm512_setzero_ps(); 4];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i + 64 <= a.len() {
            for (l, acc) in s.iter_mut().enumerate() {
                let o = i + 16 * l;
                *acc =
                    _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(o)), _mm512_loadu_ps(bp.add(o)), *acc);
            }
            i += 64;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
        let mut total = _mm512_reduce_add_ps(sum);
        for t in i..a.len() {
            total += a[t] * b[t];
        }
        total
    }
}

/// Four weight rows at once against one input row, one sum per row: the few-row kernel's
/// access pattern and summation order with nothing else of it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot4(w: &[f32], k: usize, x: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    unsafe {
        let mut s = [_mm512_setzero_ps(); 4];
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut i = 0;
        while i + 16 <= k {
            let xv = _mm512_loadu_ps(xp.add(i));
            for (a, acc) in s.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(a * k + i)), xv, *acc);
            }
            i += 16;
        }
        s.map(|v| _mm512_reduce_add_ps(v))
    }
}

fn main() -> candle_core::Result<()> {
    #[cfg(target_arch = "x86_64")]
    if !std::is_x86_feature_detected!("avx512f") {
        eprintln!("gemv_probe needs AVX-512");
        return Ok(());
    }
    let dev = Device::Cpu;
    for (n, k) in [(50257usize, 768usize), (3072, 768), (768, 3072)] {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, k), &dev)?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let reps = if n > 10_000 { 20 } else { 500 };
        let time = |f: &dyn Fn()| {
            f();
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let skinny = time(&|| {
            black_box(locus_engine::skinny::matmul_t(&x, &w).expect("skinny"));
        });
        let candle = time(&|| {
            black_box(x.matmul(&w.t().expect("t")).expect("matmul"));
        });
        let rowdot = time(&|| {
            let mut o = vec![0f32; n];
            o.par_chunks_mut(64).enumerate().for_each(|(t, oc)| {
                for (r, y) in oc.iter_mut().enumerate() {
                    let j = t * 64 + r;
                    // SAFETY: AVX-512 checked at the start of main.
                    *y = unsafe { dot(&wv[j * k..(j + 1) * k], &xv) };
                }
            });
            black_box(o);
        });
        let four = time(&|| {
            let mut o = vec![0f32; n];
            o.par_chunks_mut(64).enumerate().for_each(|(t, oc)| {
                let mut r = 0;
                while r + 4 <= oc.len() {
                    let j = t * 64 + r;
                    // SAFETY: AVX-512 checked at the start of main.
                    let d = unsafe { dot4(&wv[j * k..(j + 4) * k], k, &xv) };
                    oc[r..r + 4].copy_from_slice(&d);
                    r += 4;
                }
            });
            black_box(o);
        });
        let gb = |s: f64| (n * k * 4) as f64 / s / 1e9;
        println!(
            "{n} x {k}: few-row kernel {:.1} GB/s, candle {:.1} GB/s, one row four sums {:.1} GB/s, \
             four rows one sum each {:.1} GB/s",
            gb(skinny),
            gb(candle),
            gb(rowdot),
            gb(four)
        );
    }
    Ok(())
}
