//! Workloads, all deterministic from a seed: the seed benchmark's 6 requests,
//! generated shared prefixes (the shape of SGLang's bench_serving and inference-perf),
//! multi-turn conversations, and trace replay.
//!
//! Files, each importing only those after it: `generate` makes each kind's request
//! sequence, `trace` reads a trace, `words` is the text they are made of, and `kinds`
//! the kinds with their command-line form.

mod generate;
mod kinds;
mod trace;
mod words;

pub use kinds::{BenchRequest, TENANT_REQUESTS, UnknownWorkload, Workload};
pub use words::filler;
