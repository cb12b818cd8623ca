//! `locus router`: the gateway. Routes each request to a worker chosen by the routing
//! policy component and relays the answer; serves an admin API on its own listener.
//!
//! It may import `crate::api` (the wire types), `crate::http` and `crate::serve` (handler
//! helpers, listeners), `crate::clock`, `locus_policy` and `locus_tokens`; never
//! `crate::worker` or `locus_engine`, so that the gateway builds without the model
//! (`--no-default-features`).
//!
//! Files: `routes` reads the public requests, `proxy/` routes, retries and relays them,
//! `registry` keeps the workers and their health, `discovery` finds workers by DNS or a
//! file, `signals` follows the workers' load and KV events (`kv_reader` cuts their stream
//! into events), `tokens` turns prompts into KV block hashes, `admin` is the admin API,
//! `watch` follows files (the policy's: swapped when it changes), `metrics` counts. They
//! share the [`Gateway`] (`gateway.rs`, set up by `options.rs`, started by `start.rs`); among
//! themselves imports point one way (`discovery` uses `watch` and `registry`; `admin`,
//! `signals` and `proxy` use `registry`; `proxy` uses `tokens`; `signals` uses
//! `kv_reader`; `metrics` uses `registry`; `registry`, `tokens`, `watch` and `kv_reader`
//! use no other file).

mod admin;
mod discovery;
mod flow;
mod gateway;
mod kv_reader;
mod metrics;
mod options;
mod proxy;
mod registry;
mod routes;
mod signals;
mod start;
mod tokens;
mod watch;

pub use admin::admin_router;
pub use discovery::{Discover, parse_workers_file};
pub use flow::{
    ApiKeys, DEFAULT_PRIORITY_HEADER, DEFAULT_TENANT_HEADER, FlowCounters, FlowOptions, Identity,
    KeysError, LABELLED_TENANTS, MAX_TENANT_BYTES, Queue, Slots, Ticket, Waiting,
};
pub use gateway::{FEEDBACK_KEPT, Feedback, Gateway, UNREPORTED_DISPATCH_LIMIT};
pub use kv_reader::{KvEventReader, MAX_EVENT_BYTES, StreamError};
pub use options::{
    DEFAULT_ADDR, DEFAULT_ADMIN_ADDR, DEFAULT_ROUTE_TOKENS, DEFAULT_SESSION_HEADER, RouterOptions,
};
pub use proxy::{ROUTE_US, ROUTING_PROMPT_BYTES};
pub use registry::{Backend, BackendInfo, Registry, Reported, worker_base_url, worker_id};
pub use start::spawn;
pub use tokens::PromptTokens;
