//! GPT-2 in candle-nn (candle-transformers 0.11 has none; `bigcode.rs` cannot read GPT-2's
//! Conv1D weights).
//!
//! Hugging Face stores GPT-2's projections as `Conv1D` with weights laid out `[in, out]`. They are
//! transposed once at load into `[out, in]` so that every projection is a plain
//! [`candle_nn::Linear`]: the GEMV over a `.t()` view of an `[out, in]` matrix measured 15-25%
//! faster here than over a contiguous `[in, out]` one, and decode is bound by those reads.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::decode_attention::{self, Query};
use crate::quant::{Q8Weight, WeightFormat};
use crate::skinny;
use serde::{Deserialize, Serialize};

/// The architecture numbers of a GPT-2-family checkpoint, read from its `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Vocabulary size (rows of `wte`).
    pub vocab_size: usize,
    /// Context length: positions in `wpe`.
    pub n_positions: usize,
    /// Hidden width.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// MLP width; `None` means 4 x `n_embd`, as in Hugging Face.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Epsilon of every layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Activation name; the GPT-2 family uses the tanh form of gelu (`gelu_new`).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// End-of-text token; generation stops when it is sampled.
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".to_string()
}
fn default_eos() -> Option<u32> {
    Some(50256)
}

impl Config {
    /// distilgpt2: 6 layers, 768 wide, 12 heads, 50257 tokens, 1024 positions.
    pub fn distilgpt2() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 6,
            n_head: 12,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: default_activation(),
            eos_token_id: Some(50256),
        }
    }

    /// Width of the MLP's hidden layer.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Rejects configurations this implementation would compute wrongly rather than fail on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if self.n_layer == 0 || self.n_positions == 0 || self.vocab_size == 0 {
            return Err("n_layer, n_positions and vocab_size must be positive".into());
        }
        if activation(&self.activation_function).is_none() {
            return Err(format!("unsupported activation_function `{}`", self.activation_function));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluTanh,
    GeluErf,
}

fn activation(name: &str) -> Option<Activation> {
    match name {
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
        "gelu" => Some(Activation::GeluErf),
        _ => None,
    }
}

/// Keys and values of every layer for the tokens processed so far, each `[1, n_head, seq, head_dim]`.
///
/// Each layer's K and V live in buffers with room to grow, written in place: appending one
/// decoded token then costs its own size instead of a copy of the whole sequence (which
/// `Tensor::cat` would make at every step). Not `Clone`: two caches sharing a buffer would
/// overwrite each other's appends.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Positions to allocate room for on the first append (0: exactly what is appended).
    reserve: usize,
}

#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache for `n_layer` layers.
    pub fn new(n_layer: usize) -> Self {
        Self::with_capacity(n_layer, 0)
    }

    /// An empty cache whose buffers are sized for `positions` tokens from the start, so a
    /// request that knows its prompt and completion lengths never regrows them.
    pub fn with_capacity(n_layer: usize, positions: usize) -> Self {
        Self { layers: (0..n_layer).map(|_| None).collect(), reserve: positions }
    }

    /// A cache holding the concatenation of per-layer blocks of keys and values (e.g. shared
    /// with the prefix store; they are copied, never written), in buffers with room for
    /// `positions` tokens in all.
    pub fn from_blocks(blocks: &[Vec<(Tensor, Tensor)>], positions: usize) -> Result<Self> {
        let layers = blocks
            .iter()
            .map(|layer| {
                let (mut ks, mut vs): (Vec<Tensor>, Vec<Tensor>) = layer.iter().cloned().unzip();
                let len: usize = ks.iter().map(|k| k.dim(2)).sum::<Result<usize>>()?;
                if positions > len
                    && let Some(k0) = ks.first()
                {
                    let (b, h, _, d) = k0.dims4()?;
                    let pad = Tensor::zeros((b, h, positions - len, d), k0.dtype(), k0.device())?;
                    ks.push(pad.clone());
                    vs.push(pad);
                }
                // Even a single block is copied by cat once padded; unpadded, it stays shared
                // and the first append copies it before writing.
                Ok(Some(LayerKv { k: Tensor::cat(&ks, 2)?, v: Tensor::cat(&vs, 2)?, len }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, reserve: 0 })
    }

    /// A cache holding given per-layer keys and values (all with the same sequence length).
    /// They may be shared (e.g. with the prefix store): the first append copies them into
    /// buffers of this cache's own.
    pub fn from_layers(layers: Vec<(Tensor, Tensor)>) -> Self {
        let layers = layers
            .into_iter()
            .map(|(k, v)| {
                let len = k.dim(2).unwrap_or(0);
                Some(LayerKv { k, v, len })
            })
            .collect();
        Self { layers, reserve: 0 }
    }

    /// Tokens held.
    pub fn seq_len(&self) -> usize {
        match self.layers.first() {
            Some(Some(l)) => l.len,
            _ => 0,
        }
    }

    /// Forgets every token from position `len` on (the buffers stay): undoes a step that
    /// failed part-way through its layers.
    pub fn truncate(&mut self, len: usize) {
        for l in self.layers.iter_mut().flatten() {
            l.len = l.len.min(len);
        }
    }

    /// Keys and values of layer `i` (views of the held tokens), if any token was processed.
    pub fn layer(&self, i: usize) -> Option<(Tensor, Tensor)> {
        let l = self.layers.get(i)?.as_ref()?;
        Some((l.k.narrow(2, 0, l.len).ok()?, l.v.narrow(2, 0, l.len).ok()?))
    }

    /// Appends `k` and `v` (contiguous, `[1, n_head, t, head_dim]`) to layer `i`, growing its
    /// buffers up to `max_len` positions; returns views of all held keys and values.
    fn append(
        &mut self,
        i: usize,
        k: Tensor,
        v: Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let layer = match self.layers[i].take() {
            None if self.reserve > t => {
                let (b, h, _, d) = k.dims4()?;
                let buf = || {
                    Tensor::zeros(
                        (b, h, self.reserve.min(max_len).max(t), d),
                        k.dtype(),
                        k.device(),
                    )
                };
                let (kb, vb) = (buf()?, buf()?);
                kb.slice_set(&k, 2, 0)?;
                vb.slice_set(&v, 2, 0)?;
                LayerKv { k: kb, v: vb, len: t }
            }
            None => LayerKv { k, v, len: t },
            Some(mut l) => {
                let need = l.len + t;
                if need > l.k.dim(2)? {
                    // Doubling keeps the copies amortised O(1) per token.
                    let cap = (2 * need).max(need + 64).min(max_len).max(need);
                    let grow = |buf: &Tensor| -> Result<Tensor> {
                        let (b, h, _, d) = buf.dims4()?;
                        let pad = Tensor::zeros((b, h, cap - l.len, d), buf.dtype(), buf.device())?;
                        Tensor::cat(&[&buf.narrow(2, 0, l.len)?, &pad], 2)
                    };
                    l.k = grow(&l.k)?;
                    l.v = grow(&l.v)?;
                }
                l.k.slice_set(&k, 2, l.len)?;
                l.v.slice_set(&v, 2, l.len)?;
                l.len = need;
                l
            }
        };
        let views = (layer.k.narrow(2, 0, layer.len)?, layer.v.narrow(2, 0, layer.len)?);
        self.layers[i] = Some(layer);
        Ok(views)
    }
}

/// A projection `x @ w^T + b` over rows `x [rows, in]`, `w [out, in]` contiguous.
///
/// In f32, a few rows (a decode step's batch) go through the [`skinny`] kernel, many (a
/// prompt) through candle's tiled matmul. Each output row of the kernel depends on its own
/// input row only, whatever the others, so a sequence decodes to the same bits alone or in a
/// batch. In 8 bits, candle's quantized matmul (see [`crate::quant`]).
struct Proj {
    w: ProjWeight,
    b: Option<Tensor>,
}

enum ProjWeight {
    F32(Tensor),
    Q8(Q8Weight),
}

impl Proj {
    /// `w [out, in]` held in `format` (f32 where the format cannot hold it).
    fn new(w: Tensor, b: Option<Tensor>, format: WeightFormat) -> Result<Self> {
        let w = match format {
            WeightFormat::F32 => ProjWeight::F32(w),
            WeightFormat::Q8_0 => match Q8Weight::quantize(&w)? {
                Some(q) => ProjWeight::Q8(q),
                None => ProjWeight::F32(w),
            },
        };
        Ok(Self { w, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.w {
            ProjWeight::F32(w) if x.dim(0)? <= skinny::MAX_ROWS => skinny::matmul_t(x, w)?,
            ProjWeight::F32(w) => x.matmul(&w.t()?)?,
            ProjWeight::Q8(q) => q.forward(x)?,
        };
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// A Conv1D layer stored `[in, out]`, loaded as a projection over `[out, in]`.
fn conv1d(n_in: usize, n_out: usize, format: WeightFormat, vb: VarBuilder) -> Result<Proj> {
    let w = vb.get((n_in, n_out), "weight")?.t()?.contiguous()?;
    let b = vb.get(n_out, "bias")?;
    Proj::new(w, Some(b), format)
}

fn layer_norm(n: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(n, eps, vb)
}

struct Attention {
    c_attn: Proj,
    c_proj: Proj,
    n_head: usize,
    head_dim: usize,
    max_len: usize,
}

impl Attention {
    fn load(cfg: &Config, format: WeightFormat, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_attn: conv1d(cfg.n_embd, 3 * cfg.n_embd, format, vb.pp("c_attn"))?,
            c_proj: conv1d(cfg.n_embd, cfg.n_embd, format, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            max_len: cfg.n_positions,
        })
    }

    /// `x [rows, c]` packs the new tokens of every sequence of the step, `seqs[i].tokens`
    /// rows each: the projections run once over all rows, attention per sequence over its
    /// own cache (no padding, no mask for a single decoded token).
    fn forward(&self, x: &Tensor, seqs: &mut [StepSeq<'_>], layer: usize) -> Result<Tensor> {
        let c = x.dim(1)?;
        let qkv = self.c_attn.forward(x)?;
        if seqs.iter().all(|s| s.tokens.len() == 1) {
            return self.decode(&qkv, seqs, layer);
        }
        let mut ys = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for s in seqs.iter_mut() {
            let t = s.tokens.len();
            let part = qkv.narrow(0, row, t)?;
            row += t;
            // The fused projection is laid out q | k | v along the last axis.
            let head = |i: usize| -> Result<Tensor> {
                part.narrow(1, i * c, c)?
                    .reshape((1, t, self.n_head, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            // Scaling q (t rows) is cheaper than scaling the scores (t x seq).
            let q = head(0)?.affine(1.0 / (self.head_dim as f64).sqrt(), 0.0)?;
            let (k, v) = s.cache.append(layer, head(1)?, head(2)?, self.max_len)?;
            let scores = q.matmul(&k.t()?)?;
            let scores = match &s.mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            ys.push(probs.matmul(&v)?.transpose(1, 2)?.reshape((t, c))?);
        }
        let y = if ys.len() == 1 { ys.pop().expect("one") } else { Tensor::cat(&ys, 0)? };
        self.c_proj.forward(&y)
    }

    /// One new token per sequence: append each one's key and value, then attend for all of
    /// them in one parallel pass over their caches (see [`decode_attention`]).
    fn decode(&self, qkv: &Tensor, seqs: &mut [StepSeq<'_>], layer: usize) -> Result<Tensor> {
        let c = qkv.dim(1)? / 3;
        let mut kvs = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter_mut().enumerate() {
            let row = qkv.narrow(0, i, 1)?;
            // One row of heads side by side is already `[1, n_head, 1, head_dim]` in memory.
            let head = |j: usize| -> Result<Tensor> {
                row.narrow(1, j * c, c)?.reshape((1, self.n_head, 1, self.head_dim))
            };
            kvs.push(s.cache.append(layer, head(1)?, head(2)?, self.max_len)?);
        }
        let queries: Vec<Query> = kvs.iter().map(|(k, v)| Query { k, v }).collect();
        let y = decode_attention::attend(&qkv.narrow(1, 0, c)?, &queries, self.n_head)?;
        self.c_proj.forward(&y)
    }
}

struct Mlp {
    c_fc: Proj,
    c_proj: Proj,
    act: Activation,
}

impl Mlp {
    fn load(cfg: &Config, format: WeightFormat, vb: VarBuilder) -> Result<Self> {
        let act = activation(&cfg.activation_function).ok_or_else(|| {
            candle_core::Error::Msg(format!("activation {}", cfg.activation_function))
        })?;
        Ok(Self {
            c_fc: conv1d(cfg.n_embd, cfg.inner(), format, vb.pp("c_fc"))?,
            c_proj: conv1d(cfg.inner(), cfg.n_embd, format, vb.pp("c_proj"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = match self.act {
            Activation::GeluTanh => gelu_tanh(&h)?,
            Activation::GeluErf => h.gelu_erf()?,
        };
        self.c_proj.forward(&h)
    }
}

/// gelu's tanh form rewritten as `x * sigmoid(2y)` = `x / (1 + exp(-2y))`, with
/// `y = sqrt(2/pi) (x + 0.044715 x^3)`: the same function, but built from candle's vectorised
/// elementwise ops and `exp`, it ran ~2x faster than `Tensor::gelu` (scalar `tanh`) on the
/// 512 x 3072 prefill activations here, where gelu had cost about as much as the c_fc matmul.
/// Saturates correctly: exp overflows to inf for large negative x (giving -0) and underflows
/// to 0 for large positive x (giving x).
fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    const C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
    let minus_2y_over_x = x.sqr()?.affine(-2.0 * C * 0.044715, -2.0 * C)?;
    let e = (x * minus_2y_over_x)?.exp()?;
    x / e.affine(1.0, 1.0)?
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(cfg: &Config, format: WeightFormat, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: layer_norm(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::load(cfg, format, vb.pp("attn"))?,
            ln_2: layer_norm(cfg.n_embd, eps, vb.pp("ln_2"))?,
            mlp: Mlp::load(cfg, format, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, seqs: &mut [StepSeq<'_>], layer: usize) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, seqs, layer)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// A GPT-2 language model with its head tied to the token embedding.
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Proj,
    cfg: Config,
    format: WeightFormat,
    device: Device,
}

impl Gpt2 {
    /// Loads from a VarBuilder whose names are either bare (`wte.weight`) or under `transformer.`,
    /// with the projections and head held in `format` (embeddings stay f32).
    pub fn load(cfg: &Config, format: WeightFormat, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let vb =
            if vb.contains_tensor("transformer.wte.weight") { vb.pp("transformer") } else { vb };
        let wte_w = vb.get((cfg.vocab_size, cfg.n_embd), "wte.weight")?;
        let wpe_w = vb.get((cfg.n_positions, cfg.n_embd), "wpe.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, format, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            // wte is already [vocab, n_embd] = [out, in]: the tied head needs no copy.
            lm_head: Proj::new(wte_w.clone(), None, format)?,
            wte: Embedding::new(wte_w, cfg.n_embd),
            wpe: Embedding::new(wpe_w, cfg.n_embd),
            blocks,
            ln_f: layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_f"))?,
            cfg: cfg.clone(),
            format,
            device: vb.device().clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The format the projections are held in.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// Number of parameters (the tied head counted once).
    pub fn num_parameters(&self) -> usize {
        let c = &self.cfg;
        let per_block = 4 * c.n_embd // two layer norms
            + c.n_embd * 3 * c.n_embd + 3 * c.n_embd
            + c.n_embd * c.n_embd + c.n_embd
            + 2 * c.n_embd * c.inner() + c.inner() + c.n_embd;
        (c.vocab_size + c.n_positions) * c.n_embd + c.n_layer * per_block + 2 * c.n_embd
    }

    /// Runs `tokens` after whatever `cache` holds, appends their keys and values to it, and
    /// returns the logits of the last position only (`[vocab]`): the head is the single largest
    /// matrix, so running it on every prompt position would dominate short prefills.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut step = [Step { tokens, cache, logits: true }];
        let mut out = self.forward_batch(&mut step)?;
        out.pop().flatten().ok_or_else(|| candle_core::Error::Msg("no logits".into()))
    }

    /// One step of several sequences at once: each runs its `tokens` after what its own cache
    /// holds (positions differ per sequence), and those with `logits` set get their last
    /// position's logits (`[vocab]`). The dense layers run once over all the new tokens;
    /// attention runs per sequence. Nothing is appended to any cache when an input is invalid;
    /// after an error part-way, [`KvCache::truncate`] restores the caches.
    pub fn forward_batch(&self, steps: &mut [Step<'_, '_>]) -> Result<Vec<Option<Tensor>>> {
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut seqs = Vec::with_capacity(steps.len());
        for s in steps.iter_mut() {
            let t = s.tokens.len();
            let past = s.cache.seq_len();
            if t == 0 {
                candle_core::bail!("forward needs at least one token");
            }
            if past + t > self.cfg.n_positions {
                candle_core::bail!(
                    "positions {} exceed n_positions {}",
                    past + t,
                    self.cfg.n_positions
                );
            }
            if s.cache.layers.len() != self.cfg.n_layer {
                candle_core::bail!(
                    "cache has {} layers, model {}",
                    s.cache.layers.len(),
                    self.cfg.n_layer
                );
            }
            if let Some(&bad) = s.tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                candle_core::bail!("token id {bad} outside vocabulary of {}", self.cfg.vocab_size);
            }
            ids.extend_from_slice(s.tokens);
            pos.extend(past as u32..(past + t) as u32);
            let mask = if t > 1 { Some(causal_mask(t, past, &self.device)?) } else { None };
            seqs.push(StepSeq { tokens: s.tokens, cache: &mut *s.cache, mask });
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let pos = Tensor::new(pos.as_slice(), &self.device)?;
        let mut x = (self.wte.forward(&ids)? + self.wpe.forward(&pos)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, &mut seqs, i)?;
        }
        // The head only on the rows that need logits: each wanted sequence's last row.
        let mut last = Vec::new();
        let mut row = 0;
        for s in steps.iter() {
            row += s.tokens.len();
            if s.logits {
                last.push(row as u32 - 1);
            }
        }
        let mut out = Vec::with_capacity(steps.len());
        if last.is_empty() {
            out.resize(steps.len(), None);
            return Ok(out);
        }
        let rows = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        let logits = self.lm_head.forward(&self.ln_f.forward(&rows)?)?;
        let mut next = 0;
        for s in steps.iter() {
            if s.logits {
                out.push(Some(logits.get(next)?));
                next += 1;
            } else {
                out.push(None);
            }
        }
        Ok(out)
    }
}

/// One sequence's part of a [`Gpt2::forward_batch`] step.
pub struct Step<'t, 'c> {
    /// New tokens, run after what `cache` holds.
    pub tokens: &'t [u32],
    /// The sequence's keys and values; the new tokens' are appended.
    pub cache: &'c mut KvCache,
    /// Whether to compute the last position's logits (not for a prompt chunk that has more
    /// to come).
    pub logits: bool,
}

struct StepSeq<'a> {
    tokens: &'a [u32],
    cache: &'a mut KvCache,
    mask: Option<Tensor>,
}

/// Additive mask `[t, past + t]`: query `i` (absolute position `past + i`) sees keys `0..=past + i`.
fn causal_mask(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, total), device)?.to_dtype(DType::F32)
}

/// Index of the largest logit (ties go to the lowest index, as in `torch.argmax`).
pub fn argmax(logits: &Tensor) -> Result<u32> {
    logits.argmax(D::Minus1)?.to_scalar::<u32>()
}
