//! The commands: what each does once its flags are parsed. One file per command (`policy`
//! holds `list`, `inspect` and `report`); `ids` makes up the names and tokens several of
//! them need.
//!
//! Imports: each file imports its flags from `cli`, the library, and `ids`; none imports
//! another command's file, this file or `main`. This file only declares them.

#[cfg(feature = "bench")]
pub mod bench;
pub mod ids;
pub mod policy;
pub mod probe;
pub mod router;
#[cfg(feature = "worker")]
pub mod run;
pub mod swap;
#[cfg(feature = "worker")]
pub mod worker;
