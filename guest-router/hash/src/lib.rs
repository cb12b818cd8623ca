//! Rendezvous (highest-random-weight) hashing over the first `prefix-chars` characters of
//! the prompt, as the original proof of concept did with `hash(prompt[:20])`, but stable
//! under membership changes: removing a worker moves only the keys it owned.
//!
//! Settings: `prefix-chars` (default 20, at least 1).

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};

use rendezvous_hash::{DefaultNodeHasher, NodeHasher};

wit_bindgen::generate!({ world: "router", path: "../../wit" });

/// Prompt characters hashed when no `prefix-chars` setting is given (the seed's choice).
pub const DEFAULT_PREFIX_CHARS: usize = 20;

thread_local! {
    static PREFIX_CHARS: Cell<usize> = const { Cell::new(DEFAULT_PREFIX_CHARS) };
}

/// The leading `n` characters of `prompt` (all of it if shorter).
pub fn prefix(prompt: &str, n: usize) -> &str {
    prompt
        .char_indices()
        .nth(n)
        .map_or(prompt, |(i, _)| &prompt[..i])
}

/// Index of the healthy worker with the highest rendezvous weight for `key`.
///
/// The key is hashed once, then each worker id is mixed with it, so the cost is one
/// short hash per worker.
pub fn choose(key: &str, workers: impl IntoIterator<Item = (u64, bool)>) -> Option<u32> {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    let key = h.finish();
    let hasher = DefaultNodeHasher::new();
    let mut best: Option<(u64, u32)> = None;
    for (i, (id, healthy)) in workers.into_iter().enumerate() {
        if !healthy {
            continue;
        }
        let w = hasher.hash(&id, &key);
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

    fn route(req: Request, workers: Vec<Worker>) -> Result<u32, String> {
        let key = prefix(&req.prompt, PREFIX_CHARS.get());
        choose(key, workers.iter().map(|w| (w.id, w.healthy)))
            .ok_or_else(|| "no healthy worker".to_string())
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
    fn unhealthy_workers_are_never_chosen() {
        for k in 0..200 {
            let key = format!("key {k}");
            let all = choose(&key, [(1, true), (2, true), (3, true)]).unwrap();
            let ws = [(1, true), (2, true), (3, true)].map(|(id, _)| (id, id != all as u64 + 1));
            assert_ne!(choose(&key, ws), Some(all));
        }
        assert_eq!(choose("k", [(1, false)]), None);
    }
}
