//! The policy runtime, for any world: the sandbox every call runs in, the caches of
//! compiled code, the slot that serves a policy's versions (faults, rollback, hot swap) and
//! the audit log of every change. Imports nothing of the crate but [`crate::load`] and
//! [`crate::info`].

mod audit;
pub(crate) mod compiled_cache;
mod fault;
mod options;
pub(crate) mod sandbox;
pub(crate) mod slot;
pub(crate) mod version;
pub(crate) mod world;

pub use audit::{AUDIT_KEPT, Actor, AuditEntry, AuditEvent, AuditLog};
pub use compiled_cache::{
    CompiledCache, Origin, compiled_code, compiled_file, default_dir as default_compiled_cache_dir,
};
pub use fault::Fault;
pub use options::LoadOptions;
pub use sandbox::{Limits, TICK, use_compiled_cache};
pub use slot::FaultPolicy;
