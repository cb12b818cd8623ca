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
//! the worker is and which prefix blocks it holds.
//!
//! Imports point one way: the endpoint files use `state`, `state` uses the parts it is
//! made of (`caches`, `metrics`, `kv_listener`, `throughput`), and this file only
//! declares, re-exports and holds [`WorkerOptions`].

mod admin;
mod answer;
mod caches;
mod handle;
mod handlers;
mod info;
mod kv_events;
mod kv_listener;
mod load;
mod metrics;
mod outcome;
mod responses;
mod routes;
mod run;
mod state;
mod stop;
mod stream;
mod throughput;

pub use caches::{Caches, LevelInfo};
pub use handle::{WorkerHandle, spawn};
pub use outcome::Finish;
pub use responses::{Cached, ResponseCache};
pub use state::Worker;
pub use stop::StopMatcher;

use crate::serve::ServeLimits;
use locus_policy::PolicySource;

/// How a worker is set up.
///
/// Also the worker's cache flags (`--cache-setting`, `--cache-bytes`, `--max-queue`), which
/// `locus worker` and `locus run` flatten in: their defaults are read from [`Default`], so
/// that each value is written once. Fields without a flag of their own keep `Default`'s
/// value; the command line sets them from flags it shares or checks.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// Name reported in `meta_info.worker_id`.
    #[arg(skip = WorkerOptions::default().worker_id)]
    pub worker_id: String,
    /// The cache policy for both cache levels.
    #[arg(skip = WorkerOptions::default().cache_policy)]
    pub cache_policy: PolicySource,
    /// Settings for the cache policy.
    #[arg(
        long = "cache-setting",
        help = "A `key=value` setting for the cache policy (repeatable)",
        value_parser = locus_policy::parse_setting
    )]
    pub cache_settings: Vec<(String, String)>,
    /// Byte budget of the response cache.
    #[arg(
        long = "cache-bytes",
        env = "LOCUS_CACHE_BYTES",
        help = "Byte budget of each worker's response cache",
        default_value_t = WorkerOptions::default().response_cache_bytes
    )]
    pub response_cache_bytes: u64,
    /// Requests waiting or running beyond which new ones get 429.
    #[arg(
        long,
        env = "LOCUS_MAX_QUEUE",
        help = "Requests waiting or running per worker beyond which new ones get 429",
        default_value_t = WorkerOptions::default().max_queue
    )]
    pub max_queue: usize,
    /// Bearer token of the admin endpoints. Without one, swapping the cache policy is
    /// disabled and `/flush_cache` is open (as SGLang's is).
    #[arg(skip)]
    pub admin_token: Option<String>,
    /// Connection and body limits of the listener.
    #[arg(skip = WorkerOptions::default().limits)]
    pub limits: ServeLimits,
    /// Largest component accepted by `PUT /admin/cache-policy`.
    #[arg(skip = WorkerOptions::default().max_upload_bytes)]
    pub max_upload_bytes: usize,
    /// Append every cache-policy change to this JSON-lines file, beside the in-memory log
    /// of `GET /admin/audit`.
    #[arg(skip)]
    pub audit_log: Option<std::path::PathBuf>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            worker_id: "worker".into(),
            cache_policy: PolicySource::Builtin("lru"),
            cache_settings: Vec::new(),
            response_cache_bytes: 64 << 20,
            max_queue: 64,
            admin_token: None,
            limits: ServeLimits::default(),
            max_upload_bytes: crate::http::MAX_UPLOAD_BYTES,
            audit_log: None,
        }
    }
}
