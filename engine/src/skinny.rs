//! Matrix products of a few rows by a large weight matrix (`x [rows, k] @ w[n, k]^T`): the
//! decode step of a batch, where every weight is read once for `rows` tokens.
//!
//! candle 0.11's CPU matmul runs one row as a fast matrix-vector product but tiles 2-16 rows
//! poorly (gemm 0.19's kernels are built for large `m`): 2 rows took nearly twice one, so a
//! batch gained little over running its sequences one after another (`batch_scaling`
//! example, BENCHMARKS.md). This kernel streams each weight row once from memory and keeps
//! it in L1 while it meets every input row, with AVX2 FMA over 4 weight rows x 2 input rows
//! at a time, split across threads by weight rows; with AVX-512, one or two input rows
//! stream one weight row at a time (one stream from memory reads fastest) and more go four
//! weight rows by three input rows in column blocks, each pair's sum split the same way in
//! every tile. Without AVX2 and FMA it falls back to candle's matmul.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Most rows the kernel is used for; above it candle's tiled matmul is efficient.
pub const MAX_ROWS: usize = 32;

/// Weight rows per parallel task: 64 rows of 3072 floats is 768 KiB, enough work to be
/// worth a task and small enough to balance two threads on the 768-row matrices.
const ROWS_PER_TASK: usize = 64;

/// `x @ w^T` for `x [rows, k]` and `w [n, k]`, both contiguous f32, as a `[rows, n]` tensor.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if available() {
        x.apply_op2_no_bwd(w, &SkinnyMatmul { avx512: avx512() })
    } else {
        x.matmul(&w.t()?)
    }
}

/// Whether this CPU runs the kernel (else [`matmul_t`] is candle's matmul).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct SkinnyMatmul {
    /// Run the AVX-512 kernel (else the AVX2 one).
    avx512: bool,
}

impl CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "skinny-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("skinny matmul: x has {k} columns, w {k2}");
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("skinny matmul: f32 only");
        };
        let (Some((xs, xe)), Some((ws, we))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("skinny matmul: inputs must be contiguous");
        };
        let (x, w) = (&x[xs..xe], &w[ws..we]);
        let mut out = vec![0f32; rows * n];
        let ptr = OutPtr(out.as_mut_ptr());
        (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|task| {
            let start = task * ROWS_PER_TASK;
            let end = (start + ROWS_PER_TASK).min(n);
            // SAFETY: tasks write disjoint columns `start..end` of `out`, which outlives them.
            unsafe { kernel(x, rows, w, k, n, start, end, ptr, self.avx512) };
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

/// Whether the AVX-512 kernel runs (twice the lanes and registers of AVX2);
/// `LOCUS_NO_AVX512` set makes the path of AVX2-only machines measurable on one that has it.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::env::var_os("LOCUS_NO_AVX512").is_none()
                && std::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only written at disjoint indices by the tasks of one call.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Columns `start..end` of `out [rows, n] = x [rows, k] @ w [n, k]^T`.
///
/// # Safety
/// `out` must point to `rows * n` floats that no one else writes in those columns.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    x: &[f32],
    rows: usize,
    w: &[f32],
    k: usize,
    n: usize,
    start: usize,
    end: usize,
    out: OutPtr,
    avx512: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512 {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { avx512::kernel(x, rows, w, k, n, start, end, out.0) }
        } else {
            // SAFETY: only called when `available()` said the CPU has AVX2 and FMA.
            unsafe { avx2::kernel(x, rows, w, k, n, start, end, out.0) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = avx512;
        for j in start..end {
            let wr = &w[j * k..(j + 1) * k];
            for r in 0..rows {
                let xr = &x[r * k..(r + 1) * k];
                let dot: f32 = wr.iter().zip(xr).map(|(a, b)| a * b).sum();
                // SAFETY: see the function's contract.
                unsafe { *out.0.add(r * n + j) = dot };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Horizontal sum of 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// Dot products of `W` weight rows starting at `wj` with `R` input rows starting at `xr`.
    /// Indexed loops: the register tile reads better as `acc[a][b]` than as iterators.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const W: usize, const R: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        wj: usize,
        xr: usize,
    ) -> [[f32; R]; W] {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); R]; W];
            let body = k - k % 8;
            let wp = w.as_ptr().add(wj * k);
            let xp = x.as_ptr().add(xr * k);
            let mut i = 0;
            while i < body {
                let mut wv = [_mm256_setzero_ps(); W];
                for (a, v) in wv.iter_mut().enumerate() {
                    // See the AVX-512 kernel: weights stream once, fetch them early.
                    _mm_prefetch::<_MM_HINT_T0>(wp.add(a * k + i + 256) as *const i8);
                    *v = _mm256_loadu_ps(wp.add(a * k + i));
                }
                for b in 0..R {
                    let xv = _mm256_loadu_ps(xp.add(b * k + i));
                    for a in 0..W {
                        acc[a][b] = _mm256_fmadd_ps(wv[a], xv, acc[a][b]);
                    }
                }
                i += 8;
            }
            let mut sums = [[0f32; R]; W];
            for a in 0..W {
                for b in 0..R {
                    let mut s = hsum(acc[a][b]);
                    for t in body..k {
                        s += *wp.add(a * k + t) * *xp.add(b * k + t);
                    }
                    sums[a][b] = s;
                }
            }
            sums
        }
    }

    #[inline(always)]
    unsafe fn store<const W: usize, const R: usize>(
        out: *mut f32,
        n: usize,
        wj: usize,
        xr: usize,
        sums: [[f32; R]; W],
    ) {
        for (a, col) in sums.iter().enumerate() {
            for (b, &s) in col.iter().enumerate() {
                // SAFETY: the caller's columns, inside `rows * n`.
                unsafe { *out.add((xr + b) * n + wj + a) = s };
            }
        }
    }

    /// Four weight rows (from L1 after their first pass) against two input rows at a time:
    /// 8 accumulators + 4 weight vectors + 1 input vector fit AVX2's 16 registers.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        n: usize,
        start: usize,
        end: usize,
        out: *mut f32,
    ) {
        unsafe {
            let mut j = start;
            while j + 4 <= end {
                let mut r = 0;
                while r + 2 <= rows {
                    store::<4, 2>(out, n, j, r, tile::<4, 2>(x, w, k, j, r));
                    r += 2;
                }
                if r < rows {
                    store::<4, 1>(out, n, j, r, tile::<4, 1>(x, w, k, j, r));
                }
                j += 4;
            }
            while j < end {
                for r in 0..rows {
                    store::<1, 1>(out, n, j, r, tile::<1, 1>(x, w, k, j, r));
                }
                j += 1;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::MAX_ROWS;

    /// Floats ahead of the current position to prefetch weights from (a prefetch past the
    /// end of a row only touches the next row or nothing: it never faults).
    const PREFETCH: usize = 256;
    /// Columns per block (a multiple of 32): four weight rows of a block (8 KiB) stay in L1
    /// while every input row meets them, however long the rows are (3072 floats for the
    /// MLP's down projection).
    const BLOCK: usize = 512;
    /// Partial sums per (weight row, input row) pair, over interleaved 16-column chunks:
    /// chunk `i / 16` goes to sum `(i / 16) % 2`, and the two are added at the end. One or
    /// two rows stream their weights one weight row at a time, which reads memory ~1.5x
    /// faster than four weight rows in step (`gemv_probe`), and a second sum keeps two FMA
    /// chains in flight there; every tile shape splits the same way, so a row's bits do not
    /// depend on the rows beside it. (Four sums cost the wider tiles their register room:
    /// 8 and 16 rows ran at 0.7-0.8x.)
    const SPLIT: usize = 2;
    /// Most rows that take the one-weight-row path.
    const STREAM_ROWS: usize = 2;

    type Sums = [__m512; SPLIT];
    /// The blocked path's sums between column blocks, left uninitialised (the first block
    /// starts them at zero): zeroing 16 KiB for every four weight rows costs about as many
    /// stores as the rows' own loads.
    type Acc = [[MaybeUninit<Sums>; MAX_ROWS]; 4];

    #[inline(always)]
    unsafe fn fold(s: Sums) -> f32 {
        unsafe { _mm512_reduce_add_ps(_mm512_add_ps(s[0], s[1])) }
    }

    /// Adds 16-column chunks `from..to` (`from` a multiple of 32) of `W` weight rows at `wp`
    /// (row stride `k`) times `R` input rows at `xp` into `regs`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn chunks<const W: usize, const R: usize>(
        regs: &mut [[Sums; R]; W],
        wp: *const f32,
        xp: *const f32,
        k: usize,
        from: usize,
        to: usize,
    ) {
        unsafe {
            let mut i = from;
            let step = |regs: &mut [[Sums; R]; W], i: usize, c: usize| {
                let mut wv = [_mm512_setzero_ps(); W];
                for (a, v) in wv.iter_mut().enumerate() {
                    // The weights stream from memory once: ask for them early enough that
                    // the FMAs on the current lines hide the fetch.
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(a * k + i + PREFETCH) as *const i8);
                    *v = _mm512_loadu_ps(wp.add(a * k + i));
                }
                for b in 0..R {
                    let xv = _mm512_loadu_ps(xp.add(b * k + i));
                    for a in 0..W {
                        regs[a][b][c] = _mm512_fmadd_ps(wv[a], xv, regs[a][b][c]);
                    }
                }
            };
            while i + 32 <= to {
                step(regs, i, 0);
                step(regs, i + 16, 1);
                i += 32;
            }
            // A chunk left goes to the first sum. A constant index: a sum picked at run time
            // would keep every sum in memory instead of registers.
            if i + 16 <= to {
                step(regs, i, 0);
            }
        }
    }

    /// The sum of pair (`a`, `b`): its split sums folded, then the columns past the last
    /// whole chunk.
    #[inline(always)]
    unsafe fn finish(s: Sums, wr: *const f32, xr: *const f32, body: usize, k: usize) -> f32 {
        unsafe {
            let mut t = fold(s);
            for c in body..k {
                t += *wr.add(c) * *xr.add(c);
            }
            t
        }
    }

    /// One weight row at `j` against `R` input rows at `xr`, over all columns.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn stream<const R: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        n: usize,
        j: usize,
        xr: usize,
        out: *mut f32,
    ) {
        unsafe {
            let body = k - k % 16;
            let (wp, xp) = (w.as_ptr().add(j * k), x.as_ptr().add(xr * k));
            let mut regs = [[[_mm512_setzero_ps(); SPLIT]; R]; 1];
            chunks::<1, R>(&mut regs, wp, xp, k, 0, body);
            for (b, s) in regs[0].iter().enumerate() {
                *out.add((xr + b) * n + j) = finish(*s, wp, xp.add(b * k), body, k);
            }
        }
    }

    /// Columns `from..to` of `W` weight rows at `wj` times `R` input rows at `xr`, added to
    /// (or, from column 0, written into) `acc`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    unsafe fn block<const W: usize, const R: usize>(
        acc: &mut Acc,
        x: &[f32],
        w: &[f32],
        k: usize,
        wj: usize,
        xr: usize,
        from: usize,
        to: usize,
    ) {
        unsafe {
            let mut regs = [[[_mm512_setzero_ps(); SPLIT]; R]; W];
            if from > 0 {
                for a in 0..W {
                    for b in 0..R {
                        // SAFETY: written by the block before (the one at column 0 first).
                        regs[a][b] = acc[a][xr + b].assume_init();
                    }
                }
            }
            let (wp, xp) = (w.as_ptr().add(wj * k), x.as_ptr().add(xr * k));
            chunks::<W, R>(&mut regs, wp, xp, k, from, to);
            for a in 0..W {
                for b in 0..R {
                    acc[a][xr + b] = MaybeUninit::new(regs[a][b]);
                }
            }
        }
    }

    /// `W` weight rows at `wj` against every input row, blocked along `k`, three input rows
    /// at a time (4 x 3 pairs x 2 sums = 24 registers, + 4 weight + 1 input vectors).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_tile<const W: usize>(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        n: usize,
        wj: usize,
        out: *mut f32,
    ) {
        unsafe {
            let mut acc: Acc = [[MaybeUninit::uninit(); MAX_ROWS]; 4];
            let body = k - k % 16;
            let mut from = 0;
            while from < body {
                let to = (from + BLOCK).min(body);
                let mut r = 0;
                while r + 3 <= rows {
                    block::<W, 3>(&mut acc, x, w, k, wj, r, from, to);
                    r += 3;
                }
                match rows - r {
                    2 => block::<W, 2>(&mut acc, x, w, k, wj, r, from, to),
                    1 => block::<W, 1>(&mut acc, x, w, k, wj, r, from, to),
                    _ => {}
                }
                from = to;
            }
            let zero = [_mm512_setzero_ps(); SPLIT];
            for (a, row_acc) in acc.iter().enumerate().take(W) {
                let wr = w.as_ptr().add((wj + a) * k);
                for (b, s) in row_acc.iter().enumerate().take(rows) {
                    // SAFETY: every block wrote rows 0..rows; with no block (k < 16), zero.
                    let s = if body > 0 { s.assume_init() } else { zero };
                    *out.add(b * n + wj + a) = finish(s, wr, x.as_ptr().add(b * k), body, k);
                }
            }
        }
    }

    /// Up to [`STREAM_ROWS`] rows: one weight row at a time, streamed once. More: four weight
    /// rows at a time against every input row, in column blocks.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        x: &[f32],
        rows: usize,
        w: &[f32],
        k: usize,
        n: usize,
        start: usize,
        end: usize,
        out: *mut f32,
    ) {
        debug_assert!(rows <= MAX_ROWS);
        unsafe {
            if rows == 0 {
                return;
            }
            if rows <= STREAM_ROWS {
                for j in start..end {
                    match rows {
                        2 => stream::<2>(x, w, k, n, j, 0, out),
                        _ => stream::<1>(x, w, k, n, j, 0, out),
                    }
                }
                return;
            }
            let mut j = start;
            while j + 4 <= end {
                rows_tile::<4>(x, rows, w, k, n, j, out);
                j += 4;
            }
            while j < end {
                rows_tile::<1>(x, rows, w, k, n, j, out);
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn both_kernels_match_candle_matmul() -> Result<()> {
        if !available() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let shapes = [(1, 8, 4), (2, 768, 2304), (3, 13, 7), (5, 100, 67), (16, 1100, 130)];
        for (rows, k, n) in shapes.into_iter().chain([(32, 3072, 9)]) {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
            let want = x.matmul(&w.t()?)?;
            let kernels = if avx512() { vec![false, true] } else { vec![false] };
            for avx512 in kernels {
                let got = x.apply_op2_no_bwd(&w, &SkinnyMatmul { avx512 })?;
                let diff = (&want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
                let what = if avx512 { "avx512" } else { "avx2" };
                assert!(diff < 1e-3 * (k as f32).sqrt(), "{what} {rows}x{k}x{n}: diff {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_row_gets_the_same_bits_whatever_rows_are_beside_it() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 768), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (7, 768), &dev)?;
        let together = matmul_t(&x, &w)?.to_vec2::<f32>()?;
        for (i, row) in together.iter().enumerate() {
            let alone = matmul_t(&x.narrow(0, i, 1)?, &w)?.to_vec2::<f32>()?;
            assert_eq!(&alone[0], row, "row {i}");
        }
        Ok(())
    }
}
