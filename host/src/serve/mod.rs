//! Serving a [`Router`](axum::Router) with the limits `axum::serve` lacks: a deadline for the request
//! head (which is also how long an idle keep-alive connection is kept), a deadline for the
//! body and a body size limit checked before the body is read.
//!
//! A client that sends slowly holds no worker: until its head and body are complete it is
//! only a connection (a socket and a small task), and the handler runs once the whole body
//! is buffered. The deadlines bound how long such a connection may exist.

//! Files: `limits` (the limits and their flags), `listen` (the accept loop, its connection
//! cap, shutdown signals), `write_deadline` (dropping a client that stops reading),
//! `bodies` (buffering bodies under the limits), `lag` (how late the runtime wakes a task),
//! `fds` (the descriptor table, grown before threads start). This folder may import
//! `crate::http` (the error shape) and nothing of the servers that use it.

mod bodies;
mod fds;
mod lag;
mod limits;
mod listen;
#[cfg(test)]
mod tests;
mod write_deadline;

pub use bodies::limit_bodies;
pub use fds::{FD_TABLE_MAX, presize_fd_table};
pub use lag::{lag_histogram, spawn_lag_probe};
pub use limits::ServeLimits;
pub use listen::{serve, shutdown_signal};
