//! The native routing fallback: rendezvous hashing of the prompt's first characters over
//! the workers, the same code (`locus-policy-kit`) as the `hash` guest with its defaults, so
//! a faulted call lands where the policy would have sent it.

/// Prompt characters the fallback hashes, as the `hash` guest does by default.
pub const PREFIX_CHARS: usize = 20;

/// The index of the worker (by id) with the highest rendezvous weight for the first
/// `PREFIX_CHARS` (20) characters of `prompt`; `None` if there is no worker.
pub fn rendezvous(prompt: &str, ids: impl IntoIterator<Item = u64>) -> Option<usize> {
    locus_policy_kit::rendezvous(locus_policy_kit::prefix(prompt, PREFIX_CHARS), ids)
}
