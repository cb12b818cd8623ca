//! `locus bench` building blocks: deterministic workloads and the oracle they are scored
//! against. (The runner that drives a cluster and writes the report is the next step.)

pub mod oracle;
pub mod workload;

pub use oracle::{Oracle, oracle};
pub use workload::{BenchRequest, Workload};
