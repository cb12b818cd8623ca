//! The native routing fallback: rendezvous hashing of the prompt's first characters over
//! the workers, the same algorithm (and hash) as the `hash` guest with its
//! defaults, so a faulted call lands where the policy would have sent it.

use std::hash::{Hash, Hasher};

use rendezvous_hash::NodeHasher;

/// Prompt characters the fallback hashes, as the `hash` guest does by default.
pub const PREFIX_CHARS: usize = 20;

/// splitmix64-folding hasher; must stay identical to the `hash` guest's `Mix64`
/// (the test `hash_guest_and_native_fallback_agree` checks it).
#[derive(Default)]
struct Mix64(u64);

impl Hasher for Mix64 {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let mut z = (self.0 ^ x).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct MixNodeHasher;

impl<N: Hash> NodeHasher<N> for MixNodeHasher {
    fn hash<T: Hash>(&self, node: &N, item: &T) -> u64 {
        let mut h = Mix64::default();
        item.hash(&mut h);
        node.hash(&mut h);
        h.finish()
    }
}

/// The index of the worker (by id) with the highest rendezvous weight for the first
/// [`PREFIX_CHARS`] characters of `prompt`; `None` if there is no worker.
pub fn rendezvous(prompt: &str, ids: impl IntoIterator<Item = u64>) -> Option<usize> {
    let prefix = prompt.char_indices().nth(PREFIX_CHARS).map_or(prompt, |(i, _)| &prompt[..i]);
    let mut h = Mix64::default();
    prefix.hash(&mut h);
    let key = h.finish();
    let mut best: Option<(u64, usize)> = None;
    for (i, id) in ids.into_iter().enumerate() {
        let w = MixNodeHasher.hash(&id, &key);
        // Strictly greater: ties go to the lowest index, as in the guest.
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i));
        }
    }
    best.map(|(_, i)| i)
}
