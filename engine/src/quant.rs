//! The format the projection weights are held in: f32 (exact, the default) or 8-bit.
//!
//! One decode stream reads every weight once per token, so its speed is the weights' bytes
//! over the memory bandwidth: distilgpt2's projections and tied head are 324 MB in f32.
//! `q8_0` holds them as GGUF's Q8_0 (blocks of 32 signed bytes with one f16 scale, 8.5 bits a
//! weight: 3.8x fewer bytes) through candle's quantized matmul, which quantizes each
//! activation row to 8 bits as well and multiplies in integers (AVX-512 VNNI where the CPU has
//! it). Embeddings, layer norms and biases stay f32, and so do the keys and values: the KV
//! layout, prefix blocks and KV events are the same in both formats, but blocks computed in
//! one format are not the other's (the KV fingerprint differs).

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

use crate::error::EngineError;
use crate::gpt2::{Gpt2, KvCache, argmax};

/// How projection weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// f32, as in the checkpoint: the output equals PyTorch's.
    #[default]
    F32,
    /// GGUF Q8_0: 8-bit weights in blocks of 32 with an f16 scale each.
    Q8_0,
}

impl WeightFormat {
    /// Every accepted name, for error messages and `--help`.
    pub const NAMES: &'static str = "f32, q8_0";

    /// The format `LOCUS_WEIGHT_FORMAT` names (f32 when unset), as `locus worker` reads it:
    /// for the engine's examples and benchmarks, which take no flags for it.
    pub fn from_env() -> std::result::Result<Self, EngineError> {
        std::env::var("LOCUS_WEIGHT_FORMAT").map_or(Ok(Self::F32), |s| s.parse())
    }

    /// The name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
        }
    }
}

impl FromStr for WeightFormat {
    type Err = EngineError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            other => Err(EngineError::InvalidParam {
                field: "weights",
                reason: format!("unknown weight format `{other}` (one of {})", Self::NAMES),
            }),
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Output rows are padded to a multiple of this: candle's AVX-512 VNNI kernel takes weights
/// in tiles of 16 rows and leaves any other count to a generic path, which measured 1.9x
/// slower for one row and 5.4x for eight on the head's 50,257 rows (`q8_kernel` example).
const ROW_TILE: usize = 16;

/// An 8-bit projection `x @ w^T` for `w [out, in]`.
pub(crate) struct Q8Weight {
    q: QMatMul,
    /// `out` before padding.
    out: usize,
}

impl Q8Weight {
    /// Quantizes `w [out, in]`; `None` when `in` is not a multiple of the block (such a
    /// projection stays f32).
    pub(crate) fn quantize(w: &Tensor) -> Result<Option<Self>> {
        let (out, k) = w.dims2()?;
        if !k.is_multiple_of(GgmlDType::Q8_0.block_size()) {
            return Ok(None);
        }
        let padded = out.next_multiple_of(ROW_TILE);
        let q = if padded == out {
            QTensor::quantize(w, GgmlDType::Q8_0)?
        } else {
            QTensor::quantize(&w.pad_with_zeros(0, 0, padded - out)?, GgmlDType::Q8_0)?
        };
        // Always the quantized kernel, whatever CANDLE_DEQUANTIZE_ALL says: a worker's format
        // is its setting, not an environment variable's.
        Ok(Some(Self { q: QMatMul::QTensor(std::sync::Arc::new(q)), out }))
    }

    /// `x [rows, in]` times the weights: `[rows, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.q.forward(x)?;
        if y.dim(1)? == self.out { Ok(y) } else { y.narrow(1, 0, self.out)?.contiguous() }
    }
}

/// How closely a model follows a reference (the same checkpoint in f32) over a set of
/// prompts. Meaningful on random weights too: it compares the two models' distributions,
/// not the text.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Fidelity {
    /// Positions compared (prompts x steps).
    pub positions: usize,
    /// Share of positions where both models' most likely next token is the same, the
    /// candidate fed the reference's greedy tokens (teacher-forced).
    pub top1_agreement: f64,
    /// Mean KL divergence from the reference's next-token distribution to the candidate's
    /// (nats), teacher-forced.
    pub mean_kl: f64,
    /// The largest KL divergence at any position.
    pub max_kl: f64,
    /// Per prompt: greedy tokens the candidate generated, running freely, before its first
    /// differed from the reference's (`steps` when none did).
    pub divergence: Vec<usize>,
}

/// Compares `candidate` with `reference` over `steps` greedy tokens after each prompt.
pub fn fidelity(
    reference: &Gpt2,
    candidate: &Gpt2,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Result<Fidelity> {
    let n_layer = reference.config().n_layer;
    let (mut agree, mut kl_sum, mut max_kl, mut positions) = (0usize, 0f64, 0f64, 0usize);
    let mut divergence = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        let (mut rc, mut cc) = (KvCache::new(n_layer), KvCache::new(n_layer));
        let mut r = reference.forward(prompt, &mut rc)?;
        let mut c = candidate.forward(prompt, &mut cc)?;
        let mut greedy = Vec::with_capacity(steps);
        for _ in 0..steps {
            let (rl, cl) = (r.to_vec1::<f32>()?, c.to_vec1::<f32>()?);
            let tok = argmax(&r)?;
            agree += usize::from(tok == argmax(&c)?);
            let kl = kl_divergence(&rl, &cl);
            kl_sum += kl;
            max_kl = max_kl.max(kl);
            positions += 1;
            greedy.push(tok);
            r = reference.forward(&[tok], &mut rc)?;
            c = candidate.forward(&[tok], &mut cc)?;
        }
        // The candidate on its own: how long until its greedy text leaves the reference's.
        let mut own = KvCache::new(n_layer);
        let mut logits = candidate.forward(prompt, &mut own)?;
        let mut same = 0;
        for &want in &greedy {
            let tok = argmax(&logits)?;
            if tok != want {
                break;
            }
            same += 1;
            logits = candidate.forward(&[tok], &mut own)?;
        }
        divergence.push(same);
    }
    let n = positions.max(1) as f64;
    Ok(Fidelity {
        positions,
        top1_agreement: agree as f64 / n,
        mean_kl: kl_sum / n,
        max_kl,
        divergence,
    })
}

/// KL(p || q) in nats for the softmax distributions of logits `p` and `q`, in f64.
fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    fn log_softmax(x: &[f32]) -> Vec<f64> {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        x.iter().map(|&v| v as f64 - lse).collect()
    }
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn formats_parse_by_name_and_refuse_others_naming_the_field() {
        assert_eq!("f32".parse::<WeightFormat>().unwrap(), WeightFormat::F32);
        assert_eq!(" Q8_0 ".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        assert_eq!("q8".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        let err = "int4".parse::<WeightFormat>().unwrap_err().to_string();
        assert!(err.contains("weights") && err.contains("int4") && err.contains("q8_0"), "{err}");
        assert_eq!(WeightFormat::default(), WeightFormat::F32);
    }

    #[test]
    fn q8_projection_is_within_a_few_quantization_steps_of_f32() -> Result<()> {
        let dev = Device::Cpu;
        // 90 rows: not a multiple of the tile, so the padding is exercised.
        let (n, k) = (90, 256);
        let w = (Tensor::randn(0f32, 0.02, (n, k), &dev)?).contiguous()?;
        let q = Q8Weight::quantize(&w)?.expect("k is a multiple of 32");
        for rows in [1, 3, 8, 40] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let want = x.matmul(&w.t()?)?;
            let got = q.forward(&x)?;
            assert_eq!(got.dims(), &[rows, n]);
            // Relative to the output's scale: 8-bit weights and activations leave ~1% error.
            let scale = want.abs()?.mean_all()?.to_scalar::<f32>()?;
            let err = (&want - &got)?.abs()?.mean_all()?.to_scalar::<f32>()?;
            assert!(err < 0.03 * scale, "rows {rows}: mean error {err} vs scale {scale}");
            assert!(err > 0.0, "rows {rows}: a q8 product equal to f32 means f32 ran");
        }
        Ok(())
    }

    #[test]
    fn kl_is_zero_for_equal_logits_and_grows_with_difference() {
        let p = [1.0f32, 2.0, 3.0, -1.0];
        assert!(kl_divergence(&p, &p).abs() < 1e-12);
        let shifted: Vec<f32> = p.iter().map(|v| v + 5.0).collect();
        assert!(kl_divergence(&p, &shifted).abs() < 1e-12, "a constant shift is the same law");
        let near = [1.0f32, 2.0, 3.1, -1.0];
        let far = [3.0f32, 2.0, 1.0, -1.0];
        let (a, b) = (kl_divergence(&p, &near), kl_divergence(&p, &far));
        assert!(a > 0.0 && b > 10.0 * a, "{a} {b}");
    }

    #[test]
    fn widths_off_the_block_stay_f32() -> Result<()> {
        let w = Tensor::zeros((4, 33), candle_core::DType::F32, &Device::Cpu)?;
        assert!(Q8Weight::quantize(&w)?.is_none());
        Ok(())
    }
}
