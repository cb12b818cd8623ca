//! The response cache: whole answers keyed by prompt and sampling parameters. The host
//! holds the bytes under a hard budget; the cache policy decides what stays.

use std::collections::HashMap;
use std::sync::Arc;

use locus_policy::{CachePolicy, Entry, EntryKind};
use parking_lot::Mutex;

use super::outcome::Finish;

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Generated text.
    pub text: String,
    /// Prompt tokens of the request that produced it.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish: Finish,
}

impl Cached {
    /// Bytes charged to the budget: the text plus a fixed per-entry overhead.
    pub fn size(&self) -> u64 {
        self.text.len() as u64 + 64
    }
}

/// Answers by key, under a byte budget, governed by a cache policy.
pub struct ResponseCache {
    policy: Arc<CachePolicy>,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<u64, Cached>,
    bytes: u64,
    capacity: u64,
}

impl ResponseCache {
    /// An empty cache of `capacity` bytes.
    pub fn new(policy: Arc<CachePolicy>, capacity: u64) -> Self {
        Self { policy, inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0, capacity }) }
    }

    /// The policy deciding for this cache.
    pub fn policy(&self) -> &Arc<CachePolicy> {
        &self.policy
    }

    /// The cached answer for `key`, if any (and tells the policy it was used).
    pub fn get(&self, key: u64) -> Option<Cached> {
        let inner = self.inner.lock();
        let hit = inner.map.get(&key).cloned();
        if hit.is_some() {
            self.policy.hit(key);
        }
        hit
    }

    /// Offers `value` to the cache; true if it was kept.
    pub fn insert(&self, key: u64, value: Cached) -> bool {
        let size = value.size();
        let mut inner = self.inner.lock();
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= old.size();
            self.policy.removed(key);
        }
        if !self.policy.admit(Entry { key, kind: EntryKind::Response, size }) {
            return false;
        }
        while inner.bytes + size > inner.capacity {
            let short = inner.bytes + size - inner.capacity;
            let keys = self.policy.evict(short);
            if keys.is_empty() {
                break;
            }
            for k in keys {
                if let Some(v) = inner.map.remove(&k) {
                    inner.bytes -= v.size();
                }
            }
        }
        if inner.bytes + size > inner.capacity {
            self.policy.removed(key);
            return false;
        }
        inner.bytes += size;
        inner.map.insert(key, value);
        true
    }

    /// Drops everything.
    pub fn flush(&self) {
        let mut inner = self.inner.lock();
        inner.map.clear();
        inner.bytes = 0;
        self.policy.flushed();
    }

    /// (entries, bytes, capacity).
    pub fn stats(&self) -> (usize, u64, u64) {
        let inner = self.inner.lock();
        (inner.map.len(), inner.bytes, inner.capacity)
    }
}
