//! locus's policy runtime: WebAssembly routing and cache policies, loaded, validated,
//! sandboxed, tried and hot-swapped while traffic flows. It knows nothing of HTTP, workers'
//! servers or the model: the host hands it requests and workers and gets decisions back.
//!
//! The contract is `wit/policy.wit`. Loading a policy reads, compiles, links and
//! type-checks it against its world, calls `configure`, then makes a smoke call on
//! synthetic input; only a policy that passes every step replaces the serving one, which
//! happens atomically. At run time every call is sandboxed ([`Limits`]); a call that
//! traps, times out, runs out of memory or returns a bad answer is decided by a native
//! fallback instead, the instance is re-made, and the fault is counted; too many faults
//! in a window roll the policy back to the previous version ([`FaultPolicy`]).
//!
//! Layers, each importing only those below it (and the vocabulary of [`load`] and
//! [`info`], which every layer speaks):
//!
//! 1. [`runtime`]: the sandbox, compiled-code caches, slots (versions, faults, rollback) and
//!    the audit log, for any world;
//! 2. [`worlds`]: the bindings of the `router`, `cache` and `admission` worlds, the native
//!    fallbacks and the router's record of the workers' KV blocks;
//! 3. [`trial`]: a candidate routing policy tried beside the live one, as a shadow or a
//!    canary;
//! 4. [`RouterPolicy`], the one facade the router's request path asks, and [`inspect()`].
#![deny(missing_docs)]

pub mod guests;
pub mod info;
pub mod inspect;
pub mod load;
pub mod router;
pub mod runtime;
pub mod trial;
pub mod worlds;

pub use info::{PolicyInfo, unix_time};
pub use inspect::{Inspection, inspect};
pub use load::{
    LoadError, LoadStep, PolicySource, SettingError, SourceError, builtin_names, parse_setting,
};
pub use router::{Ask, Blocks, Decision, PromoteError, Routed, RouterPolicy, TrialError};
pub use runtime::{
    AUDIT_KEPT, Actor, AuditEntry, AuditEvent, AuditLog, CompiledCache, Fault, FaultPolicy, Limits,
    LoadOptions, Origin, TICK, compiled_code, compiled_file, default_compiled_cache_dir,
    use_compiled_cache,
};
pub use trial::{
    BlockFill, SHADOW_QUEUE, Side, SideReport, TrialEnd, TrialMode, TrialOutcome, TrialReport,
    TrialRules, TrialRunning, TrialSettingError, render_trial, take_trial_settings,
};
pub use worlds::{
    AbandonReason, AdmissionPolicy, Arrival, BANDS, CachePolicy, Completion, Entry, EntryKind,
    KvBatch, KvFeed, LOG_BATCHES, Outcome, PreparedCache, Refusal, RefusalKind, Request,
    RouteChoice, SESSION_BYTES_MAX, Saturation, Served, SourceDropped, TENANTS_KEPT, Workers,
    rendezvous, workers,
};
