//! GPT-2 in candle-nn (candle-transformers 0.11 has none; `bigcode.rs` cannot read GPT-2's
//! Conv1D weights).
//!
//! Hugging Face stores GPT-2's projections as `Conv1D` with weights laid out `[in, out]`. They are
//! transposed once at load into `[out, in]` so that every projection is a plain
//! [`candle_nn::Linear`]: the GEMV over a `.t()` view of an `[out, in]` matrix measured 15-25%
//! faster here than over a contiguous `[in, out]` one, and decode is bound by those reads.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
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

/// A Conv1D layer stored `[in, out]`, loaded as a Linear over `[out, in]`.
fn conv1d(n_in: usize, n_out: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((n_in, n_out), "weight")?.t()?.contiguous()?;
    let b = vb.get(n_out, "bias")?;
    Ok(Linear::new(w, Some(b)))
}

fn layer_norm(n: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(n, eps, vb)
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    head_dim: usize,
    max_len: usize,
}

impl Attention {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            c_attn: conv1d(cfg.n_embd, 3 * cfg.n_embd, vb.pp("c_attn"))?,
            c_proj: conv1d(cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            max_len: cfg.n_positions,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?;
        // The fused projection is laid out q | k | v along the last axis.
        let head = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        // Scaling q (t rows) is cheaper than scaling the scores (t x seq).
        let q = head(0)?.affine(1.0 / (self.head_dim as f64).sqrt(), 0.0)?;
        let (k, v) = cache.append(layer, head(1)?, head(2)?, self.max_len)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        self.c_proj.forward(&y)
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let act = activation(&cfg.activation_function).ok_or_else(|| {
            candle_core::Error::Msg(format!("activation {}", cfg.activation_function))
        })?;
        Ok(Self {
            c_fc: conv1d(cfg.n_embd, cfg.inner(), vb.pp("c_fc"))?,
            c_proj: conv1d(cfg.inner(), cfg.n_embd, vb.pp("c_proj"))?,
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
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Self {
            ln_1: layer_norm(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::load(cfg, vb.pp("attn"))?,
            ln_2: layer_norm(cfg.n_embd, eps, vb.pp("ln_2"))?,
            mlp: Mlp::load(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask, cache, layer)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// A GPT-2 language model with its head tied to the token embedding.
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Linear,
    cfg: Config,
    device: Device,
}

impl Gpt2 {
    /// Loads from a VarBuilder whose names are either bare (`wte.weight`) or under `transformer.`.
    pub fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let vb =
            if vb.contains_tensor("transformer.wte.weight") { vb.pp("transformer") } else { vb };
        let wte_w = vb.get((cfg.vocab_size, cfg.n_embd), "wte.weight")?;
        let wpe_w = vb.get((cfg.n_positions, cfg.n_embd), "wpe.weight")?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            // wte is already [vocab, n_embd] = [out, in]: the tied head needs no copy.
            lm_head: Linear::new(wte_w.clone(), None),
            wte: Embedding::new(wte_w, cfg.n_embd),
            wpe: Embedding::new(wpe_w, cfg.n_embd),
            blocks,
            ln_f: layer_norm(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_f"))?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.cfg
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
        let hidden = self.forward_hidden(tokens, cache)?;
        let t = hidden.dim(1)?;
        let last = self.ln_f.forward(&hidden.narrow(1, t - 1, 1)?)?;
        self.lm_head.forward(&last)?.flatten_all()
    }

    fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let t = tokens.len();
        let past = cache.seq_len();
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
        if cache.layers.len() != self.cfg.n_layer {
            candle_core::bail!(
                "cache has {} layers, model {}",
                cache.layers.len(),
                self.cfg.n_layer
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            candle_core::bail!("token id {bad} outside vocabulary of {}", self.cfg.vocab_size);
        }
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let pos: Vec<u32> = (past as u32..(past + t) as u32).collect();
        let pos = Tensor::new(pos.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut x = (self.wte.forward(&ids)? + self.wpe.forward(&pos)?)?;
        let mask = if t > 1 { Some(causal_mask(t, past, &self.device)?) } else { None };
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, mask.as_ref(), cache, i)?;
        }
        Ok(x)
    }
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
