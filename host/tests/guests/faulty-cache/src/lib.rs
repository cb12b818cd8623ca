//! Test-only cache policy: admits everything and evicts oldest first, but traps when
//! asked to admit the key 0xDEAD, to exercise the host's cache fallback. With the setting
//! `evict=strangers` it answers every eviction with a key that was never admitted, as a
//! buggy or hostile policy could. Built against the
//! 0.1.0 contract, so its tests also show a 0.1.0 cache component loading and serving.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;
use std::collections::VecDeque;

wit_bindgen::generate!({ world: "cache", path: "../../../../wit/0.1.0" });

/// The key that makes `admit` trap.
const POISON: u64 = 0xDEAD;

/// A key this policy never admits.
const STRANGER: u64 = u64::MAX;

thread_local! {
    static ORDER: RefCell<VecDeque<(u64, u64)>> = const { RefCell::new(VecDeque::new()) };
    static STRANGERS: RefCell<bool> = const { RefCell::new(false) };
}

struct Policy;

impl Guest for Policy {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        // The host's own settings (`locus.*`) come too: only `evict` is read.
        for (k, v) in settings {
            match (k.as_str(), v.as_str()) {
                ("evict", "strangers") => STRANGERS.with_borrow_mut(|s| *s = true),
                ("evict", "oldest") => {}
                ("evict", _) => return Err(format!("evict={v}: use strangers or oldest")),
                _ => {}
            }
        }
        Ok(())
    }

    fn admit(e: Entry) -> bool {
        assert!(e.key != POISON, "admit trapped on purpose");
        ORDER.with_borrow_mut(|o| o.push_back((e.key, e.size)));
        true
    }

    fn hit(_key: u64) {}

    fn evict(bytes_needed: u64) -> Vec<u64> {
        if STRANGERS.with_borrow(|s| *s) {
            return vec![STRANGER];
        }
        ORDER.with_borrow_mut(|o| {
            let mut freed = 0;
            let mut keys = Vec::new();
            while freed < bytes_needed {
                let Some((k, s)) = o.pop_front() else { break };
                freed += s;
                keys.push(k);
            }
            keys
        })
    }

    fn removed(key: u64) {
        ORDER.with_borrow_mut(|o| o.retain(|(k, _)| *k != key));
    }
}

export!(Policy);
