//! The policy runtime against real components built from `guest-router/`, `guest-cache/`
//! and the test-only guests in `host/tests/guests/`. One test binary, a module per subject.

mod admission;
mod builtins;
mod common;
mod contract;
mod faults;
mod kv_source;
