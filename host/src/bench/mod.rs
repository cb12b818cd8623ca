//! `locus bench`: every policy on the same request sequence, from cold caches, against
//! the best any router could do on that sequence.
//!
//! It drives a cluster from outside, over HTTP, as any client would: it may import
//! `crate::api` (the wire types it reads), `crate::admin_client` (policy swaps, flushes),
//! the router's public constants (`crate::router`: the session and route-time headers),
//! `locus_policy` (policy settings) and `locus_tokens` (token counts); never
//! `crate::worker` or `locus_engine` (`procs` starts workers as `locus worker` processes).
//!
//! Files, each importing only those after it: `run` (the passes: swap, flush, warm,
//! measure), `pass` (one pass, open or closed loop), `measure` (one request), `report`
//! (summaries, files and charts), `record` (what was measured), `oracle` (the ideal
//! cache), `options` (the target and the options), `pacing` (rates and arrival times),
//! `workload/` (the request sequences); `procs` (worker processes) stands alone.

mod measure;
mod options;
pub mod oracle;
mod pacing;
mod pass;
pub mod procs;
mod record;
pub mod report;
pub mod run;
pub mod workload;

pub use oracle::{Oracle, oracle};
pub use report::{Summary, summarize, sustained};
pub use run::{
    Arrivals, BenchOptions, Pass, Record, Report, Target, arrival_times, policy_with_settings, run,
};
pub use workload::{BenchRequest, UnknownWorkload, Workload};
