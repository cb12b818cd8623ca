//! Who decides what the prefix store keeps: the [`CachePolicy`] protocol, the native
//! [`LruPolicy`], and [`CacheEntry`], the listing of resident blocks a new policy is handed.

use lru::LruCache;
use parking_lot::Mutex;

/// The decision maker for admission and eviction (in production a wasm component; see
/// [`LruPolicy`] for the native default). Protocol, all calls made under the store's lock:
/// - insertion: `admit(key, size)`; when admitted and the store is short of space,
///   `evict(bytes_short)` and the store drops the returned keys (unknown keys are ignored);
///   when still short, the new block is dropped and `removed(key)` is called;
/// - reuse: `hit(key)` for each reused block, deepest first, so the first block of a chain is
///   the most recently used (a recency policy then evicts chains from their tails);
/// - `removed(key)` also tells of every block dropped without the policy choosing it: the
///   descendants of an evicted block (unreachable without it) and everything on `flush`.
pub trait CachePolicy: Send + Sync {
    /// Whether to keep a new block of `size` bytes.
    fn admit(&self, key: u64, size: u64) -> bool;
    /// A resident block was reused.
    fn hit(&self, key: u64);
    /// Keys to drop to free at least `bytes_needed` bytes (fewer is allowed).
    fn evict(&self, bytes_needed: u64) -> Vec<u64>;
    /// A block left the store without being chosen by `evict`.
    fn removed(&self, key: u64);
}

/// Least-recently-used policy: admits everything, evicts the oldest blocks first.
pub struct LruPolicy {
    // Unbounded: the store enforces the byte budget; this only keeps the order and sizes.
    // A lock without poisoning: a panic elsewhere cannot leave the order inconsistent, so
    // the policy keeps serving after one.
    order: Mutex<LruCache<u64, u64>>,
}

impl Default for LruPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl LruPolicy {
    /// An empty policy.
    pub fn new() -> Self {
        Self { order: Mutex::new(LruCache::unbounded()) }
    }

    /// A policy that already knows `entries` (oldest first), e.g. handed over on a swap.
    pub fn with_entries(entries: &[CacheEntry]) -> Self {
        let p = Self::new();
        for e in entries {
            p.admit(e.key, e.size);
        }
        p
    }
}

impl CachePolicy for LruPolicy {
    fn admit(&self, key: u64, size: u64) -> bool {
        self.order.lock().put(key, size);
        true
    }
    fn hit(&self, key: u64) {
        self.order.lock().get(&key);
    }
    fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        let mut order = self.order.lock();
        let (mut freed, mut keys) = (0u64, Vec::new());
        while freed < bytes_needed {
            match order.pop_lru() {
                Some((k, size)) => {
                    freed += size;
                    keys.push(k);
                }
                None => break,
            }
        }
        keys
    }
    fn removed(&self, key: u64) {
        self.order.lock().pop(&key);
    }
}

/// A resident block, as listed for a policy swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    /// Chained-hash key.
    pub key: u64,
    /// Bytes of K and V held.
    pub size: u64,
    /// Logical time of the last insertion or reuse (larger is more recent).
    pub last_use: u64,
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<LruPolicy>();
}
