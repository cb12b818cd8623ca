//! Rendezvous (highest-random-weight) hashing over the first `prefix-chars` characters of
//! the prompt, as the original proof of concept did with `hash(prompt[:20])`, but stable
//! under membership changes: removing a worker moves only the keys it owned.
//!
//! Settings: `prefix-chars` (default 20, at least 1).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::Cell;
use std::hash::{Hash, Hasher};

use locus_policy_kit::{Mix64, MixNodeHasher};
use rendezvous_hash::NodeHasher;

wit_bindgen::generate!({ world: "router", path: "../../wit/0.1.0" });

/// Prompt characters hashed when no `prefix-chars` setting is given (the seed's choice).
pub const DEFAULT_PREFIX_CHARS: usize = 20;

thread_local! {
    static PREFIX_CHARS: Cell<usize> = const { Cell::new(DEFAULT_PREFIX_CHARS) };
}

/// The leading `n` characters of `prompt` (all of it if shorter).
pub fn prefix(prompt: &str, n: usize) -> &str {
    prompt.char_indices().nth(n).map_or(prompt, |(i, _)| &prompt[..i])
}

/// Index of the worker (by id) with the highest rendezvous weight for `key`.
pub fn choose(key: &str, workers: impl IntoIterator<Item = u64>) -> Option<u32> {
    let mut h = Mix64::default();
    key.hash(&mut h);
    let key = h.finish();
    let mut best: Option<(u64, u32)> = None;
    for (i, id) in workers.into_iter().enumerate() {
        let w = MixNodeHasher.hash(&id, &key);
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i as u32));
        }
    }
    best.map(|(_, i)| i)
}

struct Hash_;

impl Guest for Hash_ {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        for (k, v) in settings {
            match k.as_str() {
                "prefix-chars" => {
                    let n: usize = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("prefix-chars must be an integer >= 1, got `{v}`")
                    })?;
                    PREFIX_CHARS.set(n);
                }
                k if k.starts_with("locus.") => {}
                _ => return Err(format!("unknown setting `{k}` (hash knows: prefix-chars)")),
            }
        }
        Ok(())
    }

    fn route(req: Request, workers: Workers) -> Result<u32, String> {
        let key = prefix(&req.prompt, PREFIX_CHARS.get());
        choose(key, workers.ids.iter().copied())
            .ok_or_else(|| "no worker to choose from".to_string())
    }

    fn observe(_done: Completion) {}
}

export!(Hash_);

#[cfg(test)]
mod tests {
    use super::*;

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
            counts[choose(&format!("key {k}"), [10, 20, 30, 40]).unwrap() as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
        assert_eq!(choose("k", []), None);
    }
}
