//! Least-recently-used cache policy with a byte capacity.
//!
//! Settings: `capacity-bytes` (default: the store's budget, which the host passes as
//! `locus.capacity-bytes`; unbounded without either). An entry larger than the capacity is
//! never admitted; `evict` drops least-recently-used keys until the requested bytes are
//! freed or nothing is left.

// wit-bindgen's generated glue passes flattened records as many arguments.
#![allow(clippy::too_many_arguments)]

use std::cell::RefCell;

use lru::LruCache;

wit_bindgen::generate!({ world: "cache", path: "../../wit" });

/// Resident keys in recency order, with their sizes.
pub struct Lru {
    entries: LruCache<u64, u64>,
    bytes: u64,
    capacity: u64,
}

impl Lru {
    /// An empty policy that admits entries of at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self { entries: LruCache::unbounded(), bytes: 0, capacity }
    }

    /// Bytes of the resident entries.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records a new entry as most recently used; false if it can never fit.
    pub fn admit(&mut self, key: u64, size: u64) -> bool {
        if size > self.capacity {
            return false;
        }
        if let Some(old) = self.entries.put(key, size) {
            self.bytes -= old;
        }
        self.bytes += size;
        true
    }

    /// Marks `key` as most recently used.
    pub fn hit(&mut self, key: u64) {
        self.entries.promote(&key);
    }

    /// Least-recently-used keys whose sizes add up to at least `needed` (or all of them).
    pub fn evict(&mut self, needed: u64) -> Vec<u64> {
        let mut freed = 0;
        let mut keys = Vec::new();
        while freed < needed {
            let Some((key, size)) = self.entries.pop_lru() else {
                break;
            };
            freed += size;
            keys.push(key);
        }
        self.bytes -= freed;
        keys
    }

    /// Forgets `key`.
    pub fn removed(&mut self, key: u64) {
        if let Some(size) = self.entries.pop(&key) {
            self.bytes -= size;
        }
    }
}

thread_local! {
    static STATE: RefCell<Lru> = RefCell::new(Lru::new(u64::MAX));
}

struct Policy;

impl Guest for Policy {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let mut capacity = u64::MAX;
        let mut explicit = None;
        for (k, v) in settings {
            match k.as_str() {
                "locus.capacity-bytes" => capacity = v.parse().unwrap_or(capacity),
                "capacity-bytes" => {
                    explicit = Some(v.parse().map_err(|_| {
                        format!("capacity-bytes must be an unsigned integer, got `{v}`")
                    })?)
                }
                k if k.starts_with("locus.") => {}
                _ => return Err(format!("unknown setting `{k}` (lru knows: capacity-bytes)")),
            }
        }
        STATE.set(Lru::new(explicit.unwrap_or(capacity)));
        Ok(())
    }

    fn admit(e: Entry) -> bool {
        STATE.with_borrow_mut(|s| s.admit(e.key, e.size))
    }

    fn hit(key: u64) {
        STATE.with_borrow_mut(|s| s.hit(key))
    }

    fn evict(bytes_needed: u64) -> Vec<u64> {
        STATE.with_borrow_mut(|s| s.evict(bytes_needed))
    }

    fn removed(key: u64) {
        STATE.with_borrow_mut(|s| s.removed(key))
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_first_and_counts_bytes() {
        let mut l = Lru::new(100);
        assert!(l.admit(1, 10));
        assert!(l.admit(2, 20));
        assert!(l.admit(3, 30));
        assert!(!l.admit(4, 101));
        l.hit(1);
        assert_eq!(l.evict(25), vec![2, 3]);
        assert_eq!(l.bytes(), 10);
        l.removed(1);
        assert_eq!(l.bytes(), 0);
        assert!(l.evict(1).is_empty());
    }
}
