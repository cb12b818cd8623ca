//! Attention of one new token per sequence over that sequence's own cached keys and values,
//! for every sequence of a decode step in one parallel pass.
//!
//! Through candle, each sequence cost a dozen small tensor operations per layer (two batched
//! matmuls of one row, a softmax, reshapes and copies of strided cache views), each waking
//! the thread pool: at 8 sequences of ~300 tokens that was about a quarter of a decode step.
//! Here each (sequence, head) pair is one task reading the cache buffers in place. Every
//! sequence's result depends only on its own query and cache, whatever else is in the step.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use rayon::prelude::*;

/// One sequence's query (`[n_embd]`, heads side by side) and its keys and values after the
/// new token was appended (`[1, n_head, len, head_dim]` views of the cache buffers).
pub(crate) struct Query<'a> {
    pub k: &'a Tensor,
    pub v: &'a Tensor,
}

/// `q [rows, n_embd]` (row `i` is `seqs[i]`'s query, not yet scaled) to `[rows, n_embd]`.
pub(crate) fn attend(q: &Tensor, seqs: &[Query<'_>], n_head: usize) -> Result<Tensor> {
    let (rows, c) = q.dims2()?;
    if rows != seqs.len() || !c.is_multiple_of(n_head) {
        candle_core::bail!("decode attention: {rows} queries for {} sequences", seqs.len());
    }
    let d = c / n_head;
    let q = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    // Read guards on every cache buffer, held for the pass (the buffers are not written
    // until the next layer's append).
    let guards: Vec<_> =
        seqs.iter().map(|s| (s.k.storage_and_layout(), s.v.storage_and_layout())).collect();
    let mut views = Vec::with_capacity(seqs.len());
    for ((ks, kl), (vs, vl)) in &guards {
        let (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) = (&**ks, &**vs)
        else {
            candle_core::bail!("decode attention: f32 CPU caches only");
        };
        let (_, h, len, hd) = kl.shape().dims4()?;
        if h != n_head || hd != d || vl.shape() != kl.shape() {
            candle_core::bail!("decode attention: cache shape {:?}", kl.shape());
        }
        let (ks_, vs_) = (kl.stride(), vl.stride());
        if ks_[3] != 1 || vs_[3] != 1 || ks_[2] != d || vs_[2] != d {
            candle_core::bail!("decode attention: cache rows must be contiguous");
        }
        views.push(View {
            k: &k[kl.start_offset()..],
            v: &v[vl.start_offset()..],
            k_head: ks_[1],
            v_head: vs_[1],
            len,
        });
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; rows * c];
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (task, y)| {
        let (row, h) = (task / n_head, task % n_head);
        let view = &views[row];
        let q = &q[row * c + h * d..row * c + (h + 1) * d];
        let keys = &view.k[h * view.k_head..];
        let values = &view.v[h * view.v_head..];
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in 0..view.len {
            let s = dot(q, &keys[j * d..(j + 1) * d]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for (j, &p) in scores.iter().enumerate() {
            let p = p * inv;
            for (o, &x) in y.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                *o += p * x;
            }
        }
    });
    Tensor::from_vec(out, (rows, c), q_device())
}

struct View<'a> {
    k: &'a [f32],
    v: &'a [f32],
    k_head: usize,
    v_head: usize,
    len: usize,
}

fn q_device() -> &'static candle_core::Device {
    &candle_core::Device::Cpu
}

/// A dot product in 8 independent lanes, which the compiler vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
