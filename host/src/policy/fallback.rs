//! The native routing fallback: rendezvous hashing of the prompt's first characters over
//! the healthy workers, the same algorithm as the `hash` guest with its defaults.

use std::hash::{DefaultHasher, Hash, Hasher};

use rendezvous_hash::{DefaultNodeHasher, NodeHasher};

/// Prompt characters the fallback hashes, as the `hash` guest does by default.
pub const PREFIX_CHARS: usize = 20;

/// The index of the healthy worker (by `(id, healthy)`) with the highest rendezvous
/// weight for the first [`PREFIX_CHARS`] characters of `prompt`.
pub fn rendezvous(prompt: &str, workers: impl IntoIterator<Item = (u64, bool)>) -> Option<usize> {
    let prefix = prompt
        .char_indices()
        .nth(PREFIX_CHARS)
        .map_or(prompt, |(i, _)| &prompt[..i]);
    let mut h = DefaultHasher::new();
    prefix.hash(&mut h);
    let key = h.finish();
    let hasher = DefaultNodeHasher::new();
    workers
        .into_iter()
        .enumerate()
        .filter(|(_, (_, healthy))| *healthy)
        .map(|(i, (id, _))| (hasher.hash(&id, &key), i))
        // Ties go to the lowest index, as in the guest.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, i)| i)
}
