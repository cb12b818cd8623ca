//! locus: a cache-aware LLM inference router whose routing and cache policies are
//! WebAssembly components, loaded, sandboxed and hot-swapped at run time.
#![deny(missing_docs)]

pub mod admin_client;
pub mod api;
#[cfg(feature = "bench")]
pub mod bench;
pub mod clock;
#[cfg(feature = "worker")]
pub mod cluster;
pub mod fuzz;
pub mod http;
pub mod router;
pub mod serve;
#[cfg(feature = "worker")]
pub mod worker;

pub use locus_policy::guests;
