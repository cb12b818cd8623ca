//! `locus worker`: one model behind SGLang's and OpenAI's HTTP APIs, with two cache levels
//! (whole responses, the engine's prefix KV store) governed by a cache policy component.
//! This folder's one job is serving a model; it builds on `crate::api` (the wire types),
//! `crate::http`, `crate::serve`, `crate::clock`, `locus_engine` and `locus_policy`, and
//! never on `crate::router`: a router finds workers over HTTP only, so either side can be
//! deployed, and changed, alone.
//!
//! Files, each with one job: `state` is the worker's shared state and how it is built,
//! `routes` maps paths to handlers, `handle` starts, stops and drains a running worker.
//! `handlers` reads a request and answers it whole, `stream` answers it as Server-Sent
//! Events, `answer` renders an outcome in each API's shape, `run` queues and runs it
//! (response cache, then engine) and `outcome` is what a run hands back, `stop` cuts text
//! at stop sequences. `caches` holds both cache levels and `responses` is the response
//! level, `admin` swaps the cache policy and flushes, `info` and `metrics` report.
//! `load` (`GET /load`, with the token rate measured in `throughput`) and `kv_events`
//! (`GET /kv_events`, fed by the engine's listener in `kv_listener`) tell a router how busy
//! the worker is and which prefix blocks it holds; `kv_transfer` moves prefix KV between
//! workers (`POST /kv/export`, and pulls from a source a router names); `auth` says which
//! requests are the cluster's own (the cluster token).
//!
//! Imports point one way: the endpoint files use `state`, `state` uses the parts it is
//! made of (`caches`, `metrics`, `kv_listener`, `throughput`), and this file only
//! declares and re-exports; `options` holds [`WorkerOptions`].

mod admin;
mod answer;
mod auth;
mod caches;
mod handle;
mod handlers;
mod info;
mod kv_events;
mod kv_listener;
mod kv_transfer;
mod load;
mod metrics;
mod options;
mod outcome;
mod responses;
mod routes;
mod run;
mod state;
mod stop;
mod stream;
mod throughput;

pub use crate::api::{CLUSTER_TOKEN, KV_SOURCE, KV_SOURCE_USED};
pub use caches::{Caches, LevelInfo};
pub use handle::{WorkerHandle, spawn};
pub use kv_transfer::ExportRequest;
pub use options::WorkerOptions;
pub use outcome::Finish;
pub use responses::{Cached, ResponseCache};
pub use state::Worker;
pub use stop::StopMatcher;
