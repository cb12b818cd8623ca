//! Why one call into a policy was decided by the native fallback.

use std::time::Duration;

/// Why one call into a policy was decided by the native fallback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The guest trapped (a panic is one).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// The export returned an error.
    #[error("returned an error: {0}")]
    Error(String),
    /// `route` returned an index past the end of the worker list.
    #[error("returned worker index {index} of {len} workers")]
    OutOfRange {
        /// The index returned.
        index: u32,
        /// The number of workers offered.
        len: usize,
    },
    /// A fresh instance could not be made.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `configure` failed on a fresh instance.
    #[error("configure failed: {0}")]
    Configure(String),
}
