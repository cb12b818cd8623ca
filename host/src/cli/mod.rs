//! The `locus` command line: its commands and their flags, parsed, checked and turned into
//! the library's options. Nothing here serves or calls anything; `commands` does.
//!
//! Files: `shared` holds the flags several commands take (admin token, limits, shutdown),
//! `router` the gateway's and `locus swap`'s, `worker` those of `locus worker` and `locus
//! run` (with the model), `bench` those of `locus bench`. The options structs of the
//! library carry their own flags and defaults (`RouterOptions`, `WorkerOptions`,
//! `ServeLimits`); these files flatten them in and add what only the command line has.
//!
//! Imports: this file declares the others and names their argument types in [`Command`];
//! they import `shared` (and `worker` imports `router`, `bench` imports `worker`), never
//! this file nor `commands`.

#[cfg(feature = "bench")]
mod bench;
mod router;
mod shared;
// The deploy files run workers, so their check needs the `worker` commands.
#[cfg(all(test, feature = "worker"))]
mod tests;
#[cfg(feature = "worker")]
mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use locus_policy as policy;

#[cfg(feature = "bench")]
pub use bench::BenchArgs;
pub use router::{RouterArgs, SwapArgs};
pub use shared::AdminTokenArg;
#[cfg(feature = "worker")]
pub use worker::{RunArgs, WorkerArgs};

/// locus: a cache-aware LLM inference router whose routing and cache policies are
/// WebAssembly components, swapped at run time.
#[derive(Parser)]
#[command(name = "locus", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Where compiled policies are kept, so that a restart or a swap loads a component
    /// compiled before in milliseconds instead of compiling it again. Must be private to
    /// this user (mode 700). Default: $XDG_CACHE_HOME/locus/policies, else
    /// ~/.cache/locus/policies.
    #[arg(long, global = true, env = "LOCUS_POLICY_CACHE_DIR")]
    pub policy_cache_dir: Option<PathBuf>,
    /// Compile every policy afresh; keep nothing on disk (wins over --policy-cache-dir).
    #[arg(long, global = true)]
    pub no_policy_cache: bool,
}

impl Cli {
    /// The compiled-policy cache directory, if any.
    pub fn compiled_cache_dir(&self) -> Option<PathBuf> {
        if self.no_policy_cache {
            return None;
        }
        self.policy_cache_dir.clone().or_else(policy::default_compiled_cache_dir)
    }

    /// These flags as arguments, for `locus` processes started by this one.
    #[cfg(feature = "bench")]
    pub fn cache_args(&self) -> Vec<String> {
        match self.compiled_cache_dir() {
            Some(d) => vec!["--policy-cache-dir".into(), d.display().to_string()],
            None => vec!["--no-policy-cache".into()],
        }
    }
}

// Without the `worker` feature there is no model to serve, so `run` and `worker` (and
// `bench`, which starts workers) are not commands at all rather than commands that fail.
#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "one is parsed, once, at start-up: boxing would buy nothing"
)]
pub enum Command {
    /// Start a local cluster: N workers and a router, in one process, with the offline
    /// synthetic distilgpt2 by default (no download).
    #[cfg(feature = "worker")]
    Run(RunArgs),
    /// Serve one model over HTTP: SGLang's /generate, OpenAI's /v1/completions and
    /// /v1/chat/completions, /health, /metrics, ...
    #[cfg(feature = "worker")]
    Worker(WorkerArgs),
    /// Route requests to workers with a routing policy component.
    Router(RouterArgs),
    /// Swap the routing policy of a router, or the cache policy of a worker.
    Swap(SwapArgs),
    /// Compare routing policies on one workload, each from cold caches, against the
    /// best a single cache could do (the oracle); writes report.json, report.md and
    /// chart.svg.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a server's health endpoint: exit 0 if it answers 2xx, 1 otherwise. For
    /// container health checks, which then need no shell or curl.
    Probe(ProbeArgs),
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The URL to ask.
    #[arg(
        env = "LOCUS_HEALTH_URL",
        default_value = format!("http://{}/health", locus::router::DEFAULT_ADDR)
    )]
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 2.0)]
    pub timeout_s: f64,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Load a policy the way a swap would and report on it: the world it implements,
    /// its exports, sha256, size and the outcome of a smoke call. Exits non-zero if
    /// locus cannot use it.
    Inspect {
        /// A built-in policy name (`locus policy list`) or a path to a .wasm component.
        policy: String,
        /// A `key=value` setting passed to `configure` (repeatable).
        #[arg(long = "setting", short = 's', value_parser = policy::parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List the built-in policies.
    List,
    /// Show a router's policy trial side by side: the serving policy against the shadow or
    /// canary (agreement, predicted and real prefix hits, load spread, errors, fallbacks,
    /// TTFT), or how the last trial ended; then the last changes of the audit log.
    Report {
        /// Admin URL of the router (e.g. http://127.0.0.1:8100).
        #[arg(
            long,
            env = "LOCUS_ROUTER_ADMIN",
            default_value = format!("http://{}", locus::router::DEFAULT_ADMIN_ADDR)
        )]
        router: String,
        #[command(flatten)]
        admin_token: AdminTokenArg,
        /// Print the JSON of `GET /admin/policy/trial` instead of a table.
        #[arg(long)]
        json: bool,
        /// Audit entries shown after the table.
        #[arg(long, default_value_t = 10)]
        audit: usize,
    },
}
