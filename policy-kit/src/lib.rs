//! What locus's policy components (`guest-router/*`) and the host's native routing fallback
//! share: one 64-bit mix, the hasher and rendezvous weight built on it, rendezvous over a
//! prompt's leading characters (the `hash` policy), and the seeding of a policy's random
//! choices. Not a policy itself; plain Rust, built for the host and for
//! `wasm32-wasip2` alike, so that the `hash` guest and the fallback that stands in for it
//! cannot drift apart.

use std::hash::{Hash, Hasher};

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rendezvous_hash::NodeHasher;

/// splitmix64's step on `x`: a few multiplies where SipHash costs tens of nanoseconds, and
/// mixes well enough that rendezvous weights and hash-table slots come out uniform.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A [`Hasher`] folding 64-bit words through [`mix`]. Unlike `std`'s `RandomState` it needs
/// no random seed, which the policy sandbox does not give (WASI's insecure seed is not
/// linked).
#[derive(Default)]
pub struct Mix64(u64);

impl Hasher for Mix64 {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix(self.0 ^ x);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The rendezvous weight of a (worker, key) pair for `rendezvous_hash`: [`Mix64`] over the
/// key, then the worker.
pub struct MixNodeHasher;

impl<N: Hash> NodeHasher<N> for MixNodeHasher {
    fn hash<T: Hash>(&self, node: &N, item: &T) -> u64 {
        let mut h = Mix64::default();
        item.hash(&mut h);
        node.hash(&mut h);
        h.finish()
    }
}

/// The leading `n` characters of `prompt` (all of it if shorter).
pub fn prefix(prompt: &str, n: usize) -> &str {
    prompt.char_indices().nth(n).map_or(prompt, |(i, _)| &prompt[..i])
}

/// Index of the worker (by id) with the highest rendezvous weight for `key`; ties go to
/// the lowest index. `None` when there is no worker. The `hash` policy and the host's
/// native fallback both decide with this.
pub fn rendezvous(key: &str, workers: impl IntoIterator<Item = u64>) -> Option<usize> {
    let mut h = Mix64::default();
    key.hash(&mut h);
    let key = h.finish();
    let mut best: Option<(u64, usize)> = None;
    for (i, id) in workers.into_iter().enumerate() {
        let w = MixNodeHasher.hash(&id, &key);
        // Strictly greater: ties go to the lowest index.
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i));
        }
    }
    best.map(|(_, i)| i)
}

/// A policy instance's generator: from `seed` when given (reproducible runs), mixed with
/// the host's instance number (`locus.instance`) so that pooled instances do not make the
/// same choices in lockstep; from WASI randomness otherwise.
pub fn seeded_rng(seed: Option<u64>, instance: u64) -> SmallRng {
    match seed {
        // An odd multiplier keeps distinct instances on distinct streams.
        Some(s) => SmallRng::seed_from_u64(s ^ instance.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        None => SmallRng::from_os_rng(),
    }
}

/// The settings a randomized policy reads alike: `seed` (reproducible runs) and the host's
/// `locus.instance`. A policy's `configure` offers each `key=value` to [`Seeding::take`]
/// before its own keys, then makes its generator with [`Seeding::rng`].
#[derive(Debug, Clone, Default)]
pub struct Seeding {
    seed: Option<u64>,
    instance: u64,
}

impl Seeding {
    /// Reads `key=value` if the key is one of these settings (`Ok(true)`); `Ok(false)` for
    /// any other key; an error for a seed that is not an unsigned 64-bit integer.
    pub fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "seed" => {
                let seed = value
                    .parse()
                    .map_err(|_| format!("seed must be an unsigned integer, got `{value}`"))?;
                self.seed = Some(seed);
            }
            "locus.instance" => self.instance = value.parse().unwrap_or(0),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The generator these settings describe ([`seeded_rng`]).
    pub fn rng(&self) -> SmallRng {
        seeded_rng(self.seed, self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_splitmix64() {
        // splitmix64's first outputs from state 0 (Vigna's reference generator).
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
        let mut h = Mix64::default();
        h.write_u64(0);
        assert_eq!(h.finish(), mix(0));
        let mut h = Mix64::default();
        h.write(&[1, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(h.finish(), mix(mix(1) ^ 2));
    }

    #[test]
    fn prefix_counts_characters_not_bytes() {
        assert_eq!(prefix("héllo wörld", 4), "héll");
        assert_eq!(prefix("short", 20), "short");
        assert_eq!(prefix("", 3), "");
    }

    #[test]
    fn keys_spread_over_all_workers_and_empty_lists_choose_none() {
        let mut counts = [0u32; 4];
        for k in 0..4000 {
            counts[rendezvous(&format!("key {k}"), [10, 20, 30, 40]).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
        assert_eq!(rendezvous("k", []), None);
    }

    #[test]
    fn seeded_generators_repeat_and_instances_differ() {
        use rand::Rng;
        let draw = |seed, instance| seeded_rng(Some(seed), instance).random::<u64>();
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
    }

    #[test]
    fn seeding_takes_its_two_settings_and_leaves_the_rest() {
        use rand::Rng;
        let mut s = Seeding::default();
        assert_eq!(s.take("seed", "5000000000"), Ok(true), "a full u64 seed");
        assert_eq!(s.take("locus.instance", "3"), Ok(true));
        assert_eq!(s.take("choices", "2"), Ok(false));
        assert_eq!(s.take("locus.instances", "4"), Ok(false));
        assert_eq!(s.rng().random::<u64>(), seeded_rng(Some(5_000_000_000), 3).random::<u64>());
        let e = s.take("seed", "-1").unwrap_err();
        assert_eq!(e, "seed must be an unsigned integer, got `-1`");
    }
}
