//! Rendezvous (highest-random-weight) hashing over the first `prefix-chars` characters of
//! the prompt, as the original proof of concept did with `hash(prompt[:20])`, but stable
//! under membership changes: removing a worker moves only the keys it owned.
//!
//! Settings: `prefix-chars` (default 20, at least 1).

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::Cell;

use locus_policy_kit::{prefix, rendezvous};

wit_bindgen::generate!({ world: "router", path: "../../wit/0.1.0" });

/// Prompt characters hashed when no `prefix-chars` setting is given (the seed's choice).
pub const DEFAULT_PREFIX_CHARS: usize = 20;

thread_local! {
    static PREFIX_CHARS: Cell<usize> = const { Cell::new(DEFAULT_PREFIX_CHARS) };
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
        rendezvous(key, workers.ids.iter().copied())
            .map(|i| i as u32)
            .ok_or_else(|| "no worker to choose from".to_string())
    }

    fn observe(_done: Completion) {}
}

export!(Hash_);
