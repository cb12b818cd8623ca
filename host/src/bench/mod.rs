//! `locus bench`: every policy on the same request sequence, from cold caches, against
//! the best any router could do on that sequence.

pub mod oracle;
pub mod procs;
pub mod report;
pub mod run;
pub mod workload;

pub use oracle::{Oracle, oracle};
pub use report::{Summary, summarize, sustained};
pub use run::{
    Arrivals, BenchOptions, Pass, Record, Report, Target, arrival_times, policy_with_settings, run,
};
pub use workload::{BenchRequest, UnknownWorkload, Workload};
