//! The native routing fallback: rendezvous hashing of the prompt's first characters over
//! the workers, the same algorithm (and hash, from `locus-policy-kit`) as the `hash` guest
//! with its defaults, so a faulted call lands where the policy would have sent it.

use std::hash::{Hash, Hasher};

use locus_policy_kit::{Mix64, MixNodeHasher};
use rendezvous_hash::NodeHasher;

/// Prompt characters the fallback hashes, as the `hash` guest does by default.
pub const PREFIX_CHARS: usize = 20;

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
