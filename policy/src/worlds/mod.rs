//! The worlds of `wit/policy.wit` on top of the runtime: routing (every contract version,
//! the native fallback, the router's record of the workers' KV blocks), caching and
//! admission. Imports [`crate::runtime`] and nothing above it.

pub(crate) mod admission;
pub(crate) mod cache;
pub(crate) mod fallback;
pub(crate) mod kv_feed;
pub(crate) mod router;

pub use admission::{
    AbandonReason, AdmissionPolicy, Arrival, BANDS, Refusal, RefusalKind, Saturation, Served,
    TENANTS_KEPT,
};
pub use cache::{CachePolicy, Entry, EntryKind, PreparedCache};
pub use fallback::rendezvous;
pub use kv_feed::{KvBatch, KvFeed, LOG_BATCHES};
pub use router::{
    Completion, Outcome, Request, RouteChoice, SESSION_BYTES_MAX, SourceDropped, Workers, workers,
};
