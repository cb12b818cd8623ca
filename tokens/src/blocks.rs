//! Block hashes: the names of a prompt's blocks of [`BLOCK_TOKENS`] tokens, by which a
//! worker's prefix store keys its K/V and a router predicts where a prefix is resident.
//!
//! # Block hashes (a wire format)
//!
//! The keys are shared with routers, which compute them from token ids to predict where a
//! prompt's prefix is resident, so the scheme is fixed and portable (no per-process or
//! per-build hasher state):
//!
//! - a prompt's token ids are cut into blocks of [`BLOCK_TOKENS`] (16) tokens from its start;
//!   a partial last block has no hash (it is never stored);
//! - block `i`'s hash is [`block_hash`]`(parent, tokens)`: XXH3-64 with seed
//!   [`BLOCK_HASH_SEED`] over the bytes `parent` as 8 bytes little-endian, then each of the
//!   block's 16 token ids as 4 bytes little-endian (72 bytes in all);
//! - `parent` is block `i-1`'s hash, and 0 for the first block, so a block's hash depends on
//!   every token before it.
//!
//! [`block_hashes`] computes the whole chain. Changing any of this changes every key a
//! router has learned: the pinned vector in this module's tests guards it.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 16;

/// Seed of [`block_hash`]: the bytes of `"locus_kv"`.
pub const BLOCK_HASH_SEED: u64 = 0x6c6f_6375_735f_6b76;

/// The hash of a block of `tokens` whose preceding block hashes to `parent` (0 for a
/// prompt's first block): XXH3-64, seeded with [`BLOCK_HASH_SEED`], of `parent` (8 bytes,
/// little-endian) followed by each token id (4 bytes each, little-endian). See the module
/// documentation; any number of tokens is accepted, the store only hashes full blocks.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    // A full block fits on the stack; the heap is only for callers hashing longer runs.
    let mut stack = [0u8; 8 + 4 * BLOCK_TOKENS];
    let mut heap = Vec::new();
    let bytes: &mut [u8] = if tokens.len() <= BLOCK_TOKENS {
        &mut stack[..8 + 4 * tokens.len()]
    } else {
        heap.resize(8 + 4 * tokens.len(), 0);
        &mut heap
    };
    bytes[..8].copy_from_slice(&parent.to_le_bytes());
    for (dst, t) in bytes[8..].chunks_exact_mut(4).zip(tokens) {
        dst.copy_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(bytes, BLOCK_HASH_SEED)
}

/// Chained hashes of the full [`BLOCK_TOKENS`]-token blocks of `tokens`, first block first;
/// a partial last block is ignored. These are the prefix store's keys.
pub fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut parent = 0;
    tokens
        .chunks_exact(BLOCK_TOKENS)
        .map(|chunk| {
            parent = block_hash(parent, chunk);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn block_hashes_are_pinned() {
        // Routers compute these keys on their own: a change here breaks them (see the module
        // documentation before changing the scheme, and then this vector).
        let tokens: Vec<u32> = (0..40).collect();
        assert_eq!(block_hashes(&tokens), [PINNED_0, PINNED_1]);
        assert_eq!(block_hash(0, &tokens[..16]), PINNED_0);
        assert_eq!(block_hash(PINNED_0, &tokens[16..32]), PINNED_1);
        assert_eq!(block_hash(0, &[]), PINNED_EMPTY);
    }

    // Computed once, and checked against the reference C library (libxxhash 0.8.1,
    // `XXH3_64bits_withSeed` over the same bytes), so another language's XXH3 agrees.
    const PINNED_0: u64 = 11_393_794_923_344_230_228;
    const PINNED_1: u64 = 13_291_586_481_257_411_987;
    const PINNED_EMPTY: u64 = 5_507_205_016_225_083_414;

    #[test]
    fn block_hash_is_xxh3_of_the_little_endian_bytes() {
        // Both the stack path (a block) and the heap path (a longer run).
        for n in [1usize, 16, 17, 40] {
            let tokens = toks(n, 0x0102_0304);
            let mut bytes = 0xdead_beef_u64.to_le_bytes().to_vec();
            for t in &tokens {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            assert_eq!(
                block_hash(0xdead_beef, &tokens),
                xxh3_64_with_seed(&bytes, BLOCK_HASH_SEED)
            );
        }
        assert_eq!(&BLOCK_HASH_SEED.to_be_bytes(), b"locus_kv");
    }

    #[test]
    fn each_block_hash_depends_on_every_token_before_it() {
        let a = toks(48, 0);
        let ha = block_hashes(&a);
        assert_eq!(ha.len(), 3);
        assert_eq!(ha[2], block_hash(ha[1], &a[32..48]));
        for i in 0..48 {
            let mut b = a.clone();
            b[i] += 1;
            let hb = block_hashes(&b);
            let changed_from = i / BLOCK_TOKENS;
            for j in 0..3 {
                assert_eq!(ha[j] == hb[j], j < changed_from, "token {i}, block {j}");
            }
        }
        // The same tokens in another position of the chain hash differently.
        assert_ne!(block_hash(0, &a[16..32]), ha[1]);
    }

    #[test]
    fn a_partial_last_block_has_no_hash() {
        let a = toks(47, 3);
        assert_eq!(block_hashes(&a), block_hashes(&a[..32]));
        assert!(block_hashes(&a[..15]).is_empty());
    }
}
