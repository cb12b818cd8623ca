//! The transfer's byte stream: length-prefixed frames, a header naming the holder's
//! fingerprint and how many blocks follow, then one frame per block with every layer's K
//! and V in layer order and a checksum. Fixed-layout binary, decoded by hand: nothing in it
//! can describe its own types, so a hostile stream can at worst be refused.
//!
//! ```text
//! frame  := len:u32le payload[len]
//! header := "LKV1" fingerprint[FINGERPRINT_BYTES] blocks:u32le
//! block  := index:u32le (per layer: K then V, f32le [n_head, block_tokens, head_dim]) checksum:u64le
//! ```
//!
//! A block's checksum is XXH3-64, seeded with the weights digest, of its block hash (8 bytes
//! little-endian), its index and its K/V bytes. The block hash is not on the wire: each side
//! computes it from its own token ids, so K/V that the holder stored for other tokens than
//! the importer's fail the check (the token ids never travel back to the importer).

use candle_core::{Device, Tensor};
use xxhash_rust::xxh3::Xxh3;

use super::fingerprint::{FINGERPRINT_BYTES, KvFingerprint};

/// The header's magic: "locus KV", layout 1.
pub const MAGIC: [u8; 4] = *b"LKV1";

const HEADER_LEN: usize = 4 + FINGERPRINT_BYTES + 4;

/// Why a stream was refused. Blocks decoded before the error were verified and may be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first frame is not a locus KV header.
    #[error("not a locus KV stream (bad header)")]
    BadHeader,
    /// The holder's fingerprint differs from the importer's.
    #[error("KV fingerprints differ in {0}")]
    Fingerprint(&'static str),
    /// A frame's length is not the one its kind has.
    #[error("frame of {got} bytes where {want} were expected")]
    FrameLength {
        /// The length the frame announced.
        got: usize,
        /// The length a block frame has for this fingerprint.
        want: usize,
    },
    /// A block's checksum does not match its bytes and the importer's tokens.
    #[error("block {0} failed its checksum")]
    Checksum(u32),
    /// Blocks came out of order, or more than the header announced.
    #[error("block {got} where block {want} was expected")]
    Order {
        /// The index received.
        got: u32,
        /// The index expected next.
        want: u32,
    },
    /// The holder sent a block beyond the importer's full blocks.
    #[error("block {0} is beyond the prompt")]
    BeyondPrompt(u32),
    /// The stream ended before the blocks its header announced (or inside a frame).
    #[error("stream ended after {got} of {announced} blocks")]
    Truncated {
        /// Blocks received whole.
        got: u32,
        /// Blocks the header announced.
        announced: u32,
    },
}

/// The header frame: the holder's fingerprint and the number of block frames after it.
pub fn header_frame(fp: &KvFingerprint, blocks: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + HEADER_LEN);
    out.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&fp.to_bytes());
    out.extend_from_slice(&blocks.to_le_bytes());
    out
}

/// Block `index` (hash `hash`), its per-layer K and V (`[1, n_head, block_tokens, head_dim]`).
pub fn block_frame(
    fp: &KvFingerprint,
    index: u32,
    hash: u64,
    kv: &[(Tensor, Tensor)],
) -> candle_core::Result<Vec<u8>> {
    let payload = 4 + fp.block_payload_bytes() + 8;
    let mut out = Vec::with_capacity(4 + payload);
    out.extend_from_slice(&(payload as u32).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    for (k, v) in kv {
        for t in [k, v] {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    if out.len() != 4 + payload - 8 {
        candle_core::bail!("block {index} holds {} bytes, not {payload}", out.len() - 4 + 8);
    }
    let sum = checksum(fp, hash, &out[4..]);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

fn checksum(fp: &KvFingerprint, hash: u64, index_and_data: &[u8]) -> u64 {
    let mut h = Xxh3::with_seed(fp.weights_digest);
    h.update(&hash.to_le_bytes());
    h.update(index_and_data);
    h.digest()
}

/// A verified block: its per-layer K and V, `[1, n_head, block_tokens, head_dim]` each.
pub type KvBlock = Vec<(Tensor, Tensor)>;

/// Decodes a stream fed in pieces as they arrive, verifying each block against the
/// importer's fingerprint and the hashes of its own prompt's blocks.
pub struct Decoder {
    fp: KvFingerprint,
    hashes: Vec<u64>,
    buf: Vec<u8>,
    announced: Option<u32>,
    received: u32,
    failed: Option<WireError>,
}

impl Decoder {
    /// A decoder for the importer's fingerprint `fp` and its prompt's block hashes.
    pub fn new(fp: KvFingerprint, hashes: Vec<u64>) -> Self {
        Self { fp, hashes, buf: Vec::new(), announced: None, received: 0, failed: None }
    }

    /// Blocks the header announced (once it has arrived).
    pub fn announced(&self) -> Option<u32> {
        self.announced
    }

    /// Blocks verified so far.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Takes the next piece of the stream; returns the blocks it completed, verified, in
    /// order. After an error nothing more is accepted.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<KvBlock>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_frames(bytes);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_frames(&mut self, bytes: &[u8]) -> Result<Vec<KvBlock>, WireError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(len) = buf.get(at..at + 4) {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            // The length is checked before waiting for the frame: a stream cannot make the
            // importer buffer more than one block.
            let want = self.frame_len();
            if len != want {
                return Err(match self.announced {
                    None => WireError::BadHeader,
                    Some(_) => WireError::FrameLength { got: len, want },
                });
            }
            let Some(frame) = buf.get(at + 4..at + 4 + len) else { break };
            match self.announced {
                None => self.header(frame)?,
                Some(_) => out.push(self.block(frame)?),
            }
            at += 4 + len;
        }
        buf.drain(..at);
        self.buf = buf;
        Ok(out)
    }

    /// Checks that the stream ended whole: every announced block, nothing left over.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let announced = self.announced.unwrap_or(0);
        if self.announced.is_none() || self.received < announced || !self.buf.is_empty() {
            return Err(WireError::Truncated { got: self.received, announced });
        }
        Ok(())
    }

    fn frame_len(&self) -> usize {
        match self.announced {
            None => HEADER_LEN,
            Some(_) => 4 + self.fp.block_payload_bytes() + 8,
        }
    }

    fn header(&mut self, frame: &[u8]) -> Result<(), WireError> {
        if frame[..4] != MAGIC {
            return Err(WireError::BadHeader);
        }
        let fp_bytes: &[u8; FINGERPRINT_BYTES] =
            frame[4..4 + FINGERPRINT_BYTES].try_into().expect("header length checked");
        let theirs = KvFingerprint::from_bytes(fp_bytes);
        if let Some(field) = self.fp.mismatch(&theirs) {
            return Err(WireError::Fingerprint(field));
        }
        let blocks = u32::from_le_bytes(frame[4 + FINGERPRINT_BYTES..].try_into().expect("4"));
        if blocks as usize > self.hashes.len() {
            return Err(WireError::BeyondPrompt(self.hashes.len() as u32));
        }
        self.announced = Some(blocks);
        Ok(())
    }

    fn block(&mut self, frame: &[u8]) -> Result<KvBlock, WireError> {
        let index = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let announced = self.announced.unwrap_or(0);
        if index != self.received || index >= announced {
            return Err(WireError::Order { got: index, want: self.received });
        }
        let hash = *self.hashes.get(index as usize).ok_or(WireError::BeyondPrompt(index))?;
        let (body, sum) = frame.split_at(frame.len() - 8);
        if checksum(&self.fp, hash, body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err(WireError::Checksum(index));
        }
        let fp = &self.fp;
        let (heads, tokens, dim) =
            (fp.n_head as usize, fp.block_tokens as usize, fp.head_dim as usize);
        let per_tensor = heads * tokens * dim;
        let floats: Vec<f32> = body[4..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let tensor = |i: usize| {
            let values = floats[i * per_tensor..(i + 1) * per_tensor].to_vec();
            Tensor::from_vec(values, (1, heads, tokens, dim), &Device::Cpu)
                .expect("length checked against the fingerprint")
        };
        let kv = (0..fp.n_layer as usize).map(|l| (tensor(2 * l), tensor(2 * l + 1))).collect();
        self.received += 1;
        Ok(kv)
    }
}
