//! The worker's two cache levels, whole responses and the engine's prefix KV blocks,
//! governed by one cache policy component (an instance per level). A swap loads and checks
//! the candidate for both levels first and installs both under one lock, so both levels
//! change together or neither does.

use std::sync::Arc;

use locus_engine::Engine;
use parking_lot::Mutex;

use super::responses::{Cached, Key, ResponseCache};
use locus_policy::{
    Actor, AuditEvent, AuditLog, CachePolicy, Entry, EntryKind, FaultPolicy, LoadError,
    LoadOptions, PolicyInfo, PolicySource,
};

/// Both cache levels of a worker.
pub struct Caches {
    responses: ResponseCache,
    prefix: Arc<CachePolicy>,
    engine: Arc<Engine>,
    swapping: Mutex<()>,
    audit: Arc<AuditLog>,
}

/// The engine's prefix store asks the cache policy component through this adapter.
struct PrefixPolicy(Arc<CachePolicy>);

impl locus_engine::CachePolicy for PrefixPolicy {
    fn admit(&self, key: u64, size: u64) -> bool {
        self.0.admit(Entry { key, kind: EntryKind::Prefix, size })
    }
    fn hit(&self, key: u64) {
        self.0.hit(key)
    }
    fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        self.0.evict(bytes_needed)
    }
    fn removed(&self, key: u64) {
        self.0.removed(key)
    }
}

/// Settings for one level: the operator's, plus the level's byte budget.
fn level_options(settings: &[(String, String)], capacity: u64) -> LoadOptions {
    let mut s = settings.to_vec();
    s.push(("locus.capacity-bytes".into(), capacity.to_string()));
    LoadOptions::with_settings(s)
}

impl Caches {
    /// Loads `source` for both levels and puts the prefix level in charge of `engine`'s
    /// store; the load and every later change are recorded in `audit`.
    pub fn new(
        engine: Arc<Engine>,
        source: &PolicySource,
        settings: &[(String, String)],
        response_bytes: u64,
        audit: Arc<AuditLog>,
    ) -> Result<Self, LoadError> {
        let prefix_bytes = engine.cache_stats().capacity_bytes;
        let load =
            |cap| CachePolicy::load(source, &level_options(settings, cap), FaultPolicy::default());
        let responses = ResponseCache::new(Arc::new(load(response_bytes)?), response_bytes);
        let prefix = Arc::new(load(prefix_bytes)?);
        engine.set_cache_policy(Arc::new(PrefixPolicy(prefix.clone())));
        responses.policy().set_audit(audit.clone());
        prefix.set_audit(audit.clone());
        let caches = Self { responses, prefix, engine, swapping: Mutex::new(()), audit };
        caches.record(AuditEvent::Load, None, &Actor::locus("the worker started"));
        Ok(caches)
    }

    /// Records a change of both levels' policy (now serving) in the audit log.
    fn record(&self, event: AuditEvent, from: Option<&PolicyInfo>, by: &Actor) {
        let from = from.map(|f| f.sha256.as_str());
        self.audit.change(event, "cache", &self.prefix.info(), from, by);
    }

    /// The audit log of this worker's cache policy.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The cached answer for `key`.
    pub fn response(&self, key: &Key) -> Option<Cached> {
        self.responses.get(key)
    }

    /// Offers an answer to the response cache.
    pub fn keep_response(&self, key: &Key, value: Cached) -> bool {
        self.responses.insert(key, value)
    }

    /// Replaces the policy of both levels, or of neither: a candidate that fails to load
    /// for either level leaves both serving as before. Blocking (it compiles).
    pub fn swap(
        &self,
        source: &PolicySource,
        settings: &[(String, String)],
        by: &Actor,
    ) -> Result<LevelInfo, LoadError> {
        let rcap = self.responses.stats().2;
        let pcap = self.engine.cache_stats().capacity_bytes;
        let response = CachePolicy::prepare(source, &level_options(settings, rcap))?;
        let prefix = CachePolicy::prepare(source, &level_options(settings, pcap))?;
        let _one_at_a_time = self.swapping.lock();
        let before = self.prefix.info();
        let info = LevelInfo {
            response: self.responses.policy().install(response),
            prefix: self.prefix.install(prefix),
        };
        self.record(AuditEvent::Swap, Some(&before), by);
        Ok(info)
    }

    /// What serves each level.
    pub fn info(&self) -> LevelInfo {
        LevelInfo { response: self.responses.policy().info(), prefix: self.prefix.info() }
    }

    /// Drops everything from both levels.
    pub fn flush(&self) {
        self.responses.flush();
        self.engine.flush_cache();
    }

    /// Policy faults of both levels so far.
    pub fn faults(&self) -> u64 {
        self.responses.policy().total_faults() + self.prefix.total_faults()
    }

    /// (entries, bytes, capacity) of the response cache.
    pub fn response_stats(&self) -> (usize, u64, u64) {
        self.responses.stats()
    }

    /// What the response level's policy was told is resident.
    pub fn response_residents(&self) -> Vec<Entry> {
        self.responses.policy().residents()
    }
}

/// The policy of each level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelInfo {
    /// The response cache's.
    pub response: PolicyInfo,
    /// The prefix store's.
    pub prefix: PolicyInfo,
}
