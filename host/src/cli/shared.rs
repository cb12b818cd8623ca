//! Flags that several commands take alike: the admin token, a server's limits and how it
//! drains on shutdown.

use std::time::Duration;

use clap::Args;
use locus::serve::ServeLimits;

/// How long a server drains on SIGTERM or Ctrl-C.
#[derive(Args, Clone)]
pub struct ShutdownArgs {
    /// Seconds the requests in flight get to finish after SIGTERM or Ctrl-C (the server
    /// stops accepting and fails /health at once); keep it under the orchestrator's own
    /// grace period (Docker's stop timeout, Kubernetes' terminationGracePeriodSeconds).
    #[arg(long, env = "LOCUS_SHUTDOWN_GRACE_S", default_value_t = 25.0)]
    pub shutdown_grace_s: f64,
    /// Seconds the server goes on serving after SIGTERM with /health failing, before it
    /// stops accepting: time for a load balancer (a Kubernetes Service, DNS) to take it
    /// out of rotation. A second signal ends the drain at once.
    #[arg(long, env = "LOCUS_SHUTDOWN_DELAY_S", default_value_t = 0.0)]
    pub shutdown_delay_s: f64,
}

impl ShutdownArgs {
    /// The delay before the server stops accepting, and the grace period after.
    pub fn times(&self) -> anyhow::Result<(Duration, Duration)> {
        let secs = |v: f64, flag: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| anyhow::anyhow!("--{flag} must be a non-negative number of seconds"))
        };
        Ok((
            secs(self.shutdown_delay_s, "shutdown-delay-s")?,
            secs(self.shutdown_grace_s, "shutdown-grace-s")?,
        ))
    }
}

/// The compute threads of a process that runs the engine.
#[cfg(feature = "worker")]
#[derive(Args, Clone, Debug, Default)]
pub struct ThreadsArg {
    /// Compute threads of the engine (matrix products, attention), shared by the workers of
    /// this process: it becomes the process's RAYON_NUM_THREADS. Default: RAYON_NUM_THREADS
    /// if set, else one per core. Workers sharing a machine should split its cores between
    /// them (BENCHMARKS.md, issue 26, measures 1 and 2 threads per worker).
    #[arg(long, env = "LOCUS_THREADS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: Option<usize>,
}

#[cfg(feature = "worker")]
impl ThreadsArg {
    /// Sets RAYON_NUM_THREADS (which rayon's pool and candle's kernels read) when
    /// `--threads` is given. Call it before any other thread starts.
    pub fn apply(&self) {
        if let Some(n) = self.threads {
            // SAFETY: called from `main` before the runtime or any pool starts a thread, so
            // no other thread reads the environment meanwhile.
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) }
        }
    }
}

/// The admin token, shared by every command that serves or calls an admin API.
#[derive(Args, Clone, Default)]
pub struct AdminTokenArg {
    /// Bearer token of the admin APIs. A router without one disables its admin API; a
    /// worker without one disables cache-policy swaps (flush and info stay open, as
    /// SGLang's are). With one, every admin endpoint needs it.
    #[arg(
        long = "admin-token",
        env = "LOCUS_ADMIN_TOKEN",
        hide_env_values = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub token: Option<String>,
}

/// The cluster token, shared by the workers and routers of one cluster (in `locus run`,
/// by all of them at once).
#[derive(Args, Clone, Default)]
pub struct ClusterTokenArg {
    /// Token the workers and routers of a cluster present to each other in
    /// `x-locus-cluster-token`, for moving prefix KV between workers. A worker with one
    /// serves its prefix KV (`POST /kv/export`) to holders of the token, pulls a prefix
    /// from the source a request names and takes the rank a router gave a request
    /// (`x-locus-priority`) only when the request carries the token; a router with one
    /// sends it with every request and lets a routing policy name such a source (contract
    /// 0.4.0). Without it a worker moves no KV and takes ranks from anyone. It travels in
    /// plain HTTP: keep the cluster's network private.
    #[arg(
        long = "cluster-token",
        env = "LOCUS_CLUSTER_TOKEN",
        hide_env_values = true,
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    // Not `token`: clap names an argument by its field, and the admin token's is `token`.
    pub cluster_token: Option<String>,
    /// Send the cluster token (and a router's worker token) over plain HTTP to hosts that
    /// are not loopback. Off by default: anyone who can read the network can read a token
    /// sent in plain HTTP, so say so only for a private network (Compose's own network, a
    /// Kubernetes namespace closed by network policy); see SECURITY.md. Loopback and https
    /// hosts get the token either way.
    #[arg(
        long = "cluster-token-over-http",
        env = "LOCUS_CLUSTER_TOKEN_OVER_HTTP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub over_http: bool,
}

/// Connection and body limits of a server. In `locus run` the router and the workers share
/// them, which is why they are flattened here once rather than in each one's options.
#[derive(Args, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub limits: ServeLimits,
    /// Largest policy component accepted by the admin upload endpoints, in bytes.
    #[arg(long, default_value_t = locus::http::MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: usize,
}
