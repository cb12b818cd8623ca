//! The response cache: whole answers keyed by prompt and sampling parameters. The host
//! holds the bytes under a hard budget; the cache policy decides what stays.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use locus_policy::{CachePolicy, Entry, EntryKind};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::outcome::Finish;

/// What an answer is cached under: the SHA-256 of the request's prompt and parameters,
/// and the 64-bit id the cache policy knows it by (the digest's first bytes). Two requests
/// whose ids collide never share an answer: a lookup compares the whole digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The entry's id for the cache policy.
    pub id: u64,
    digest: [u8; 32],
}

impl Key {
    /// The key of everything `parts` hashes (through [`Hash`], so a field's type and
    /// length are part of it, as in a `HashMap`).
    pub fn of(parts: &impl Hash) -> Self {
        let mut w = Sha256Writer(Sha256::new());
        parts.hash(&mut w);
        let digest: [u8; 32] = w.0.finalize().into();
        let id = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        Self { id, digest }
    }
}

/// Feeds what [`Hash`] writes into SHA-256.
struct Sha256Writer(Sha256);

impl Hasher for Sha256Writer {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Unused: [`Key::of`] reads the whole digest.
    fn finish(&self) -> u64 {
        u64::from_le_bytes(self.0.clone().finalize()[..8].try_into().expect("8 bytes"))
    }
}

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
    /// Bytes charged to the budget: the text plus a fixed per-entry overhead (the map
    /// entry and the key's digest).
    pub fn size(&self) -> u64 {
        self.text.len() as u64 + 96
    }
}

/// Answers by key, under a byte budget, governed by a cache policy.
pub struct ResponseCache {
    policy: Arc<CachePolicy>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// By id: the digest it was stored under, and the answer.
    map: HashMap<u64, ([u8; 32], Cached)>,
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
    pub fn get(&self, key: &Key) -> Option<Cached> {
        let inner = self.inner.lock();
        let hit = inner.map.get(&key.id).filter(|(d, _)| *d == key.digest).map(|(_, v)| v.clone());
        if hit.is_some() {
            self.policy.hit(key.id);
        }
        hit
    }

    /// Offers `value` to the cache; true if it was kept.
    pub fn insert(&self, key: &Key, value: Cached) -> bool {
        let (id, size) = (key.id, value.size());
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.map.remove(&id) {
            inner.bytes -= old.size();
            self.policy.removed(id);
        }
        if !self.policy.admit(Entry { key: id, kind: EntryKind::Response, size }) {
            return false;
        }
        while inner.bytes + size > inner.capacity {
            let short = inner.bytes + size - inner.capacity;
            // A round that frees nothing ends the loop: a policy answering keys that are
            // not resident would otherwise hold this lock forever.
            let mut freed = false;
            for k in self.policy.evict(short) {
                if let Some((_, v)) = inner.map.remove(&k) {
                    inner.bytes -= v.size();
                    freed = true;
                }
            }
            if !freed {
                break;
            }
        }
        if inner.bytes + size > inner.capacity {
            self.policy.removed(id);
            return false;
        }
        inner.bytes += size;
        inner.map.insert(id, (key.digest, value));
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

#[cfg(test)]
mod tests {
    use locus_policy::{FaultPolicy, LoadOptions, PolicySource, guests};

    use super::*;

    fn answer(text: &str) -> Cached {
        Cached { text: text.into(), prompt_tokens: 1, completion_tokens: 1, finish: Finish::Length }
    }

    fn cache(source: PolicySource, settings: &[(&str, &str)], capacity: u64) -> ResponseCache {
        let kv = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let opts = LoadOptions::with_settings(kv);
        let policy = CachePolicy::load(&source, &opts, FaultPolicy::default()).expect("loads");
        ResponseCache::new(Arc::new(policy), capacity)
    }

    /// Two requests whose 64-bit ids collide are different entries: the second one's
    /// lookup misses instead of answering with the first one's text.
    #[test]
    fn a_colliding_id_is_not_a_hit() {
        let c = cache(PolicySource::Builtin("lru"), &[], 1 << 20);
        let a = Key::of(&"prompt a");
        let forged = Key { id: a.id, digest: Key::of(&"prompt b").digest };
        assert!(c.insert(&a, answer("for a")));
        assert_eq!(c.get(&forged), None);
        assert_eq!(c.get(&a), Some(answer("for a")));
        assert_ne!(Key::of(&"prompt a"), Key::of(&"prompt b"));
        assert_eq!(Key::of(&("x", 1u32)), Key::of(&("x", 1u32)));
    }

    /// A policy that answers evictions with keys that are not resident cannot hold the
    /// cache's lock forever: the insert that needs room gives up and reports not kept.
    #[test]
    fn an_eviction_of_strangers_ends() {
        let faulty = PolicySource::File(guests::FAULTY_CACHE_PATH.into());
        let c = cache(faulty, &[("evict", "strangers")], 300);
        assert!(c.insert(&Key::of(&1u8), answer("one")));
        assert!(!c.insert(&Key::of(&2u8), answer(&"x".repeat(150))));
        assert_eq!(c.stats().0, 1);
        assert_eq!(c.get(&Key::of(&1u8)), Some(answer("one")));
    }
}
