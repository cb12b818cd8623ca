//! What two workers compare before either uses the other's keys and values: everything
//! that decides whether a block computed by one means the same to the other.

use std::collections::HashMap;
use std::fmt;

use candle_core::{DType, Tensor};
use locus_tokens::blocks::{BLOCK_HASH_SEED, BLOCK_TOKENS};
use xxhash_rust::xxh3::Xxh3;

use crate::gpt2::Config;
use crate::quant::WeightFormat;

/// Version of the KV layout on the wire and in the store: per block, per layer, K then V,
/// each `[n_head, BLOCK_TOKENS, head_dim]` f32 little-endian. Raise it on any change.
pub const KV_LAYOUT_VERSION: u32 = 1;

/// A worker's KV identity. Two workers may exchange blocks only when theirs are equal:
/// a different hash seed would match no block (or, worse, the wrong ones), different
/// weights or shapes would compute different K and V for the same tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvFingerprint {
    /// XXH3-64 over the checkpoint's weights (as f32: each tensor's name, shape and bytes,
    /// in name order) and the format the model holds them in: 8-bit weights compute other
    /// keys and values from the same checkpoint.
    pub weights_digest: u64,
    /// Element type of the stored K and V (0: f32, the only one today).
    pub dtype: u8,
    /// Transformer layers.
    pub n_layer: u32,
    /// Attention heads.
    pub n_head: u32,
    /// Width of one head.
    pub head_dim: u32,
    /// Tokens per block.
    pub block_tokens: u32,
    /// [`KV_LAYOUT_VERSION`].
    pub layout_version: u32,
    /// The block hashes' seed.
    pub hash_seed: u64,
}

/// Bytes of [`KvFingerprint::to_bytes`].
pub const FINGERPRINT_BYTES: usize = 8 + 1 + 4 * 5 + 8;

impl KvFingerprint {
    /// The fingerprint of a model of `config` with these named weights (before loading:
    /// the names are the checkpoint's, with or without `transformer.`, so the digest is
    /// taken after dropping that prefix).
    pub fn of(
        config: &Config,
        tensors: &HashMap<String, Tensor>,
        format: WeightFormat,
    ) -> candle_core::Result<Self> {
        let mut names: Vec<(&str, &Tensor)> =
            tensors.iter().map(|(n, t)| (n.strip_prefix("transformer.").unwrap_or(n), t)).collect();
        names.sort_unstable_by_key(|(n, _)| *n);
        let mut h = Xxh3::new();
        for (name, t) in names {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(t.rank() as u64).to_le_bytes());
            for d in t.dims() {
                h.update(&(*d as u64).to_le_bytes());
            }
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            for chunk in values.chunks(1 << 14) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                h.update(&bytes);
            }
        }
        // f32 adds nothing, so f32 fingerprints stay those of workers that predate formats.
        if format != WeightFormat::F32 {
            h.update(b"weight-format:");
            h.update(format.name().as_bytes());
        }
        Ok(Self {
            weights_digest: h.digest(),
            dtype: 0,
            n_layer: config.n_layer as u32,
            n_head: config.n_head as u32,
            head_dim: config.head_dim() as u32,
            block_tokens: BLOCK_TOKENS as u32,
            layout_version: KV_LAYOUT_VERSION,
            hash_seed: BLOCK_HASH_SEED,
        })
    }

    /// Shape of one layer's K (or V) in a block: `[1, n_head, block_tokens, head_dim]`.
    pub fn block_shape(&self) -> [usize; 4] {
        [1, self.n_head as usize, self.block_tokens as usize, self.head_dim as usize]
    }

    /// Bytes of one block's K and V for every layer.
    pub fn block_payload_bytes(&self) -> usize {
        let per_layer =
            2 * self.n_head as usize * self.block_tokens as usize * self.head_dim as usize;
        self.n_layer as usize * per_layer * 4
    }

    /// The fixed little-endian encoding, [`FINGERPRINT_BYTES`] long.
    pub fn to_bytes(&self) -> [u8; FINGERPRINT_BYTES] {
        let mut b = [0u8; FINGERPRINT_BYTES];
        b[..8].copy_from_slice(&self.weights_digest.to_le_bytes());
        b[8] = self.dtype;
        let words =
            [self.n_layer, self.n_head, self.head_dim, self.block_tokens, self.layout_version];
        for (i, w) in words.iter().enumerate() {
            b[9 + 4 * i..13 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[29..].copy_from_slice(&self.hash_seed.to_le_bytes());
        b
    }

    /// Decodes [`Self::to_bytes`].
    pub fn from_bytes(b: &[u8; FINGERPRINT_BYTES]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Self {
            weights_digest: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            dtype: b[8],
            n_layer: u32_at(9),
            n_head: u32_at(13),
            head_dim: u32_at(17),
            block_tokens: u32_at(21),
            layout_version: u32_at(25),
            hash_seed: u64::from_le_bytes(b[29..].try_into().expect("8 bytes")),
        }
    }

    /// Parses [`Display`](fmt::Display)'s hex form (for headers and JSON).
    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.len() != 2 * FINGERPRINT_BYTES || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; FINGERPRINT_BYTES];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self::from_bytes(&b))
    }

    /// The first field in which `other` differs, for a refusal that says why.
    pub fn mismatch(&self, other: &Self) -> Option<&'static str> {
        [
            (self.weights_digest != other.weights_digest, "weights digest"),
            (self.dtype != other.dtype, "dtype"),
            (self.n_layer != other.n_layer, "layer count"),
            (self.n_head != other.n_head, "head count"),
            (self.head_dim != other.head_dim, "head width"),
            (self.block_tokens != other.block_tokens, "block size"),
            (self.layout_version != other.layout_version, "KV layout version"),
            (self.hash_seed != other.hash_seed, "block hash seed"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }
}

/// Lowercase hex of [`KvFingerprint::to_bytes`].
impl fmt::Display for KvFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
