//! The `locus` command line: its commands and flags. Flags shared by several commands are
//! defined once and flattened in.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use locus::router::RouterOptions;
use locus::serve::ServeLimits;
use locus::worker::WorkerOptions;
use locus_engine::{EngineOptions, Limits, ModelSource};
use locus_policy::{self as policy, FaultPolicy, PolicySource};

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
    pub fn cache_args(&self) -> Vec<String> {
        match self.compiled_cache_dir() {
            Some(d) => vec!["--policy-cache-dir".into(), d.display().to_string()],
            None => vec!["--no-policy-cache".into()],
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Start a local cluster: N workers and a router, in one process, with the offline
    /// synthetic distilgpt2 by default (no download).
    Run(RunArgs),
    /// Serve one model over HTTP: SGLang's /generate, OpenAI's /v1/completions and
    /// /v1/chat/completions, /health, /metrics, ...
    Worker(WorkerArgs),
    /// Route requests to workers with a routing policy component.
    Router(RouterArgs),
    /// Swap the routing policy of a router, or the cache policy of a worker.
    Swap(SwapArgs),
    /// Compare routing policies on one workload, each from cold caches, against the
    /// best a single cache could do (the oracle); writes report.json, report.md and
    /// chart.svg.
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
    #[arg(env = "LOCUS_HEALTH_URL", default_value = "http://127.0.0.1:8000/health")]
    pub url: String,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 2.0)]
    pub timeout_s: f64,
}

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

/// Connection and body limits of a server.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Seconds a client has to send a request's head (request line and headers), counted
    /// from the connection's start or the end of its previous answer: an idle keep-alive
    /// connection is closed after this too.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client has to send a request's body once its head has arrived
    /// (slower clients get 408 and the connection is closed).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Largest request body in bytes (larger ones get 413 before they are read).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Largest policy component accepted by the admin upload endpoints, in bytes.
    #[arg(long, default_value_t = locus::http::MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: usize,
}

impl ServeArgs {
    fn limits(&self) -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(self.header_timeout_s.max(1)),
            body_read_timeout: Duration::from_secs(self.body_timeout_s.max(1)),
            max_body_bytes: self.max_body_bytes.max(1024),
        }
    }
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// The model: `synthetic-distilgpt2` (offline, deterministic weights), a Hugging Face
    /// id such as `distilgpt2` (from the local hf-hub cache, downloaded where a network
    /// exists), or a directory with config.json and model.safetensors.
    #[arg(long, env = "LOCUS_MODEL", default_value = "synthetic-distilgpt2")]
    pub model: String,
    /// A local model directory (same as `--model DIR`).
    #[arg(long, env = "LOCUS_MODEL_DIR", conflicts_with = "model")]
    pub model_dir: Option<PathBuf>,
    /// Byte budget of each worker's prefix KV store (finished prompts' blocks, for reuse).
    #[arg(long, env = "LOCUS_PREFIX_CACHE_BYTES", default_value_t = 256 << 20)]
    pub prefix_cache_bytes: u64,
    /// Most sequences a worker decodes together (continuous batching); 1 runs one
    /// generation at a time.
    #[arg(long, env = "LOCUS_MAX_BATCH", default_value_t = Limits::default().max_batch, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_batch: usize,
    /// Most prompt tokens a worker runs in one step: longer prompts are prefilled in chunks
    /// so that running streams keep producing tokens meanwhile.
    #[arg(long, default_value_t = Limits::default().prefill_chunk, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub prefill_chunk: usize,
    /// Byte budget of the running sequences' KV memory per worker, apart from the prefix
    /// store: each request reserves prompt + max tokens at admission and waits while it
    /// does not fit.
    #[arg(long, env = "LOCUS_KV_CACHE_BYTES", default_value_t = Limits::default().kv_bytes)]
    pub kv_cache_bytes: u64,
    /// Seconds a request may wait for admission to the batch before it fails with 503.
    #[arg(long, default_value_t = Limits::default().queue_timeout.as_secs_f64())]
    pub queue_timeout: f64,
}

fn positive_rate(s: &str) -> Result<f64, String> {
    let min = locus::bench::run::MIN_RATE;
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= min => Ok(r),
        _ => Err(format!("`{s}` is not a number of requests per second of at least {min}")),
    }
}

impl ModelArgs {
    /// These flags as `locus worker` arguments, for workers started as processes.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = match &self.model_dir {
            Some(d) => vec!["--model-dir".into(), d.display().to_string()],
            None => vec!["--model".into(), self.model.clone()],
        };
        for (k, v) in [
            ("--prefix-cache-bytes", self.prefix_cache_bytes.to_string()),
            ("--max-batch", self.max_batch.to_string()),
            ("--prefill-chunk", self.prefill_chunk.to_string()),
            ("--kv-cache-bytes", self.kv_cache_bytes.to_string()),
            ("--queue-timeout", self.queue_timeout.to_string()),
        ] {
            a.extend([k.to_string(), v]);
        }
        a
    }

    /// The engine settings these flags describe.
    pub fn engine_options(&self) -> anyhow::Result<EngineOptions> {
        let queue_timeout = Duration::try_from_secs_f64(self.queue_timeout).map_err(|_| {
            anyhow::anyhow!("--queue-timeout must be a non-negative number of seconds")
        })?;
        Ok(EngineOptions {
            prefix_cache_bytes: self.prefix_cache_bytes,
            limits: Limits {
                max_batch: self.max_batch,
                prefill_chunk: self.prefill_chunk,
                kv_bytes: self.kv_cache_bytes,
                queue_timeout,
            },
        })
    }

    pub fn source(&self) -> anyhow::Result<ModelSource> {
        match &self.model_dir {
            Some(d) => Ok(ModelSource::Dir(d.clone())),
            None => Ok(self.model.parse()?),
        }
    }
}

#[derive(Args, Clone)]
pub struct CacheArgs {
    /// Cache policy of both cache levels: a built-in (`locus policy list`) or a .wasm
    /// component.
    #[arg(long, env = "LOCUS_CACHE_POLICY", default_value = "lru")]
    pub cache_policy: String,
    /// A `key=value` setting for the cache policy (repeatable).
    #[arg(long = "cache-setting", value_parser = policy::parse_setting)]
    pub cache_settings: Vec<(String, String)>,
    /// Byte budget of each worker's response cache.
    #[arg(long = "cache-bytes", env = "LOCUS_CACHE_BYTES", default_value_t = 64 << 20)]
    pub response_cache_bytes: u64,
    /// Requests waiting or running per worker beyond which new ones get 429.
    #[arg(long, env = "LOCUS_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
}

impl CacheArgs {
    pub fn options(
        &self,
        token: Option<String>,
        serve: &ServeArgs,
    ) -> anyhow::Result<WorkerOptions> {
        Ok(WorkerOptions {
            worker_id: "worker".into(),
            cache_policy: PolicySource::parse(&self.cache_policy)?,
            cache_settings: self.cache_settings.clone(),
            response_cache_bytes: self.response_cache_bytes,
            max_queue: self.max_queue,
            admin_token: token,
            limits: serve.limits(),
            max_upload_bytes: serve.max_upload_bytes,
            audit_log: None,
        })
    }
}

#[derive(Args, Clone)]
pub struct RoutingArgs {
    /// Routing policy: a built-in (`locus policy list`), `native`, or a .wasm component.
    #[arg(long, env = "LOCUS_POLICY", default_value = "hash")]
    pub policy: String,
    /// A `key=value` setting for the routing policy (repeatable), e.g. prefix-chars=20.
    #[arg(long = "policy-setting", value_parser = policy::parse_setting)]
    pub policy_settings: Vec<(String, String)>,
    /// Swap the policy whenever its file changes on disk.
    #[arg(long, env = "LOCUS_WATCH", value_parser = clap::builder::BoolishValueParser::new())]
    pub watch: bool,
    /// Milliseconds between health checks of each worker.
    #[arg(long, default_value_t = 500)]
    pub health_interval_ms: u64,
    /// Failed health checks before a worker is marked down.
    #[arg(long, default_value_t = 2)]
    pub fail_threshold: u32,
    /// Passed health checks before a down worker is marked up.
    #[arg(long, default_value_t = 1)]
    pub success_threshold: u32,
    /// Other workers tried when one cannot be reached, goes away before it answers, or
    /// answers 5xx.
    #[arg(long, default_value_t = 2)]
    pub max_retries: usize,
    /// Policy faults within --fault-window-s that roll the policy back.
    #[arg(long, default_value_t = 5)]
    pub max_faults: u32,
    /// The window faults are counted in, in seconds.
    #[arg(long, default_value_t = 60)]
    pub fault_window_s: u64,
    /// Leading prompt tokens the router tokenizes (GPT-2's tokenizer, as the workers) to
    /// give a 0.2.0 policy the prompt's KV block hashes; 0 turns tokenizing off. Prompts
    /// longer than about 8 bytes per token are cut at a word's end first.
    #[arg(long, default_value_t = locus::router::DEFAULT_ROUTE_TOKENS)]
    pub route_tokens: usize,
    /// Milliseconds between polls of each worker's load (`GET /load`: queue, running
    /// batch, KV blocks, tokens per second), which a 0.2.0 policy is given with its age.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..))]
    pub load_interval_ms: u64,
    /// Do not follow the workers' KV events (`GET /kv_events`); policies then learn
    /// nothing of which prefix blocks each worker holds.
    #[arg(long)]
    pub no_kv_events: bool,
    /// Bearer token for the workers' `/kv_events` when they have an admin token (`locus
    /// run` passes the workers' own; a standalone router sends none unless given one).
    #[arg(long, env = "LOCUS_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Request header whose value is given to the policy as the session key.
    #[arg(long, default_value = locus::router::DEFAULT_SESSION_HEADER)]
    pub session_header: String,
    /// Append every routing-policy change (swap, rollback, shadow, canary, promotion,
    /// abort) to this JSON-lines file; `GET /admin/audit` shows the last ones either way.
    #[arg(long, env = "LOCUS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
}

impl RoutingArgs {
    pub fn options(
        &self,
        token: Option<String>,
        serve: &ServeArgs,
    ) -> anyhow::Result<RouterOptions> {
        let policy = PolicySource::parse(&self.policy)?;
        let watch = match (&policy, self.watch) {
            (PolicySource::File(p), true) => Some(p.clone()),
            (_, true) => anyhow::bail!("--watch needs --policy to be a file path"),
            _ => None,
        };
        Ok(RouterOptions {
            workers: Vec::new(),
            discover: Vec::new(),
            discover_interval: RouterOptions::default().discover_interval,
            policy,
            settings: self.policy_settings.clone(),
            admin_token: token,
            health_interval: Duration::from_millis(self.health_interval_ms.max(10)),
            fail_threshold: self.fail_threshold.max(1),
            success_threshold: self.success_threshold.max(1),
            max_retries: self.max_retries,
            request_timeout: Duration::from_secs(300),
            faults: FaultPolicy {
                max_faults: self.max_faults.max(1),
                window: Duration::from_secs(self.fault_window_s),
            },
            watch,
            limits: serve.limits(),
            max_upload_bytes: serve.max_upload_bytes,
            route_tokens: self.route_tokens,
            load_interval: Duration::from_millis(self.load_interval_ms),
            kv_events: !self.no_kv_events,
            // Empty, as Compose passes an unset variable: none.
            worker_token: self.worker_token.clone().filter(|t| !t.is_empty()),
            session_header: self.session_header.to_ascii_lowercase(),
            audit_log: self.audit_log.clone().filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Number of workers.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Router port; workers listen on the next ports (8001, 8002, ...).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Admin listener of the router.
    #[arg(long, default_value = "127.0.0.1:8100")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The worker's identity: reported in meta_info.worker_id and /load, and what a
    /// router hashes on, so that a worker back at a new address gets its prompts back.
    /// Default: HOSTNAME:PORT (a pod's or container's name is stable; the port tells
    /// apart workers sharing a host).
    #[arg(long, env = "LOCUS_WORKER_ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub worker_id: Option<String>,
    /// Append every cache-policy change (swap, rollback) to this JSON-lines file;
    /// `GET /admin/audit` shows the last ones either way.
    #[arg(long, env = "LOCUS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("worker-sources").required(true).multiple(true).args(["workers", "discover", "workers_file"])))]
pub struct RouterArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Worker base URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<String>,
    /// Find workers by DNS: `dns:NAME:PORT` adds every address NAME resolves to (a
    /// Compose service or network alias, a Kubernetes headless Service) once it answers,
    /// and removes those gone from the answer. Repeatable, or comma-separated.
    #[arg(long, env = "LOCUS_DISCOVER", value_delimiter = ',')]
    pub discover: Vec<locus::router::Discover>,
    /// Find workers in a file of base URLs, one per line (`#` comments), followed as it
    /// changes.
    #[arg(long, env = "LOCUS_WORKERS_FILE")]
    pub workers_file: Option<PathBuf>,
    /// Milliseconds between DNS lookups of --discover (and re-reads of --workers-file).
    #[arg(long, env = "LOCUS_DISCOVER_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub discover_interval_ms: u64,
    /// Admin listener (keep it on loopback unless a network policy guards it).
    #[arg(long, default_value = "127.0.0.1:8100")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("change").args(["policy", "shadow", "canary", "promote", "abort", "cache_policy"]).required(true)))]
pub struct SwapArgs {
    /// Admin URL of a router (e.g. http://127.0.0.1:8100).
    #[arg(long, conflicts_with = "worker", required_unless_present = "worker")]
    pub router: Option<String>,
    /// URL of a worker (e.g. http://127.0.0.1:8001).
    #[arg(long)]
    pub worker: Option<String>,
    /// New routing policy (with --router): a built-in name or a .wasm file.
    #[arg(long, requires = "router")]
    pub policy: Option<String>,
    /// Try a routing policy as a shadow: asked every routing question beside the serving
    /// policy, its answers only recorded (`locus policy report` compares them).
    #[arg(long, value_name = "POLICY", requires = "router")]
    pub shadow: Option<String>,
    /// Route PERCENT of requests (by a stable hash of their session or leading prompt
    /// block) with POLICY; aborted on its own when it does worse than the serving policy
    /// (see --min-requests, --window and the margins).
    #[arg(long, num_args = 2, value_names = ["PERCENT", "POLICY"], requires = "router")]
    pub canary: Vec<String>,
    /// End the trial running on --router by making its candidate serve everything.
    #[arg(long, requires = "router")]
    pub promote: bool,
    /// End the trial running on --router, keeping the serving policy.
    #[arg(long, requires = "router")]
    pub abort: bool,
    /// Canary: requests each side needs in its window before the rules apply (20).
    #[arg(long, requires = "canary")]
    pub min_requests: Option<usize>,
    /// Canary: the most recent requests per side the rules read (200).
    #[arg(long, requires = "canary")]
    pub window: Option<usize>,
    /// Canary: abort when its error rate exceeds the serving side's by more than this
    /// (0.05: five points).
    #[arg(long, requires = "canary")]
    pub error_margin: Option<f64>,
    /// Canary: abort when its fallback rate (calls the native fallback decided because the
    /// candidate faulted) exceeds the serving side's by more than this (0.05).
    #[arg(long, requires = "canary")]
    pub fallback_margin: Option<f64>,
    /// Canary: abort when its TTFT p90 exceeds the serving side's by more than this
    /// fraction (0.5: 50% slower).
    #[arg(long, requires = "canary")]
    pub ttft_margin: Option<f64>,
    /// Who asks, for the audit log (default: $USER@host name).
    #[arg(long, env = "LOCUS_ACTOR")]
    pub actor: Option<String>,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// New cache policy (with --worker): a built-in name or a .wasm file.
    #[arg(long, requires = "worker")]
    pub cache_policy: Option<String>,
    /// A `key=value` setting for the new policy (repeatable).
    #[arg(long = "setting", value_parser = policy::parse_setting)]
    pub settings: Vec<(String, String)>,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Public URL of a router already running: locus's (with --admin, to swap policies) or
    /// any other in front of locus workers (sglang-router, vllm-router, ...), benched as one
    /// policy named by --label. Default: spawn a local cluster.
    #[arg(long, conflicts_with = "spawn")]
    pub router: Option<String>,
    /// Admin URL of that router, when it is locus's.
    #[arg(long, requires = "router")]
    pub admin: Option<String>,
    /// The workers behind --router, comma-separated: flushed before each pass and counted
    /// (default: listed by --admin; without either, caches are not flushed).
    #[arg(long, value_delimiter = ',', requires = "router")]
    pub workers: Vec<String>,
    /// Name of a non-locus router's passes in the report.
    #[arg(long, default_value = "router", requires = "router", conflicts_with = "admin")]
    pub label: String,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    /// Start a local cluster of N workers for the run (the default, with 3).
    #[arg(long)]
    pub spawn: Option<usize>,
    /// Run the spawned workers inside the bench's own process (they then share its compute
    /// threads) instead of as `locus worker` processes.
    #[arg(long, conflicts_with = "router")]
    pub in_process: bool,
    /// Compute threads of each spawned worker process (its RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["router", "in_process"], value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub compute_threads: usize,
    /// seed, shared-prefix (8 groups x 16 prompts, system 256, question 32, output 16),
    /// multi-turn (8 users x 4 rounds), trace:FILE (JSONL), or tenants[:k=v,...] (Zipf
    /// popularity over tenants' system prompts; keys tenants (24), system (512),
    /// question (32), output (16), zipf (1.1; 0 uniform), requests (240)).
    #[arg(long, default_value = "seed")]
    pub workload: String,
    /// Routing policies to compare, comma-separated (built-ins or .wasm files), each with
    /// optional settings as `NAME:key=value:key=value` (e.g. `prefix-aware:load-weight=8`);
    /// default random,hash. Needs a locus router (spawned, or --admin).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Requests per pass (default: the workload's length).
    #[arg(long)]
    pub requests: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Open loop at this many requests/s instead of a fixed concurrency; several,
    /// comma-separated, sweep the rates in turn (the report then charts TTFT p90 against
    /// rate and names each policy's highest sustained rate).
    #[arg(long, value_delimiter = ',', value_parser = positive_rate)]
    pub rate: Vec<f64>,
    /// Measured passes per policy (and rate): each round runs every policy once, in an
    /// order rotated each round, so a shared machine's drift hits them all alike.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100))]
    pub rounds: usize,
    /// How open-loop requests are spaced: poisson (exponential gaps, seeded by --seed) or
    /// even.
    #[arg(long, value_enum, default_value_t = locus::bench::Arrivals::Poisson)]
    pub arrivals: locus::bench::Arrivals,
    /// Workload seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send an unrecorded warm-up pass before each measured pass: for shared-prefix and
    /// tenants the same system prompts with other questions (steady state: the prefixes
    /// are cached, the answers are not); for the other workloads a repeat of the sequence.
    #[arg(long)]
    pub warm: bool,
    /// Where the report files go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
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
        #[arg(long, env = "LOCUS_ROUTER_ADMIN", default_value = "http://127.0.0.1:8100")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde::Deserialize;
    use serde_yaml::Value;

    const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

    /// `args` with each `LOCUS_*` setting of `env` turned into the flag that reads it, so
    /// that parsing checks the settings' names and values too. A setting that no flag of
    /// the subcommand reads fails, unless another subcommand reads it (`locus probe`'s
    /// LOCUS_HEALTH_URL in a worker's container).
    fn with_env(args: &[String], env: &[(String, String)], place: &str) -> Vec<String> {
        let cli = Cli::command();
        let sub = cli
            .find_subcommand(&args[0])
            .unwrap_or_else(|| panic!("{place}: `{}` is no locus command", args[0]));
        let mut out: Vec<String> =
            ["locus".to_string()].into_iter().chain(args.iter().cloned()).collect();
        for (key, value) in env.iter().filter(|(k, _)| k.starts_with("LOCUS_")) {
            let reads = |a: &clap::Arg| a.get_env().is_some_and(|e| e == key.as_str());
            match sub.get_arguments().find(|a| reads(a)) {
                Some(arg) => {
                    let long =
                        arg.get_long().expect("settings read from the environment have a flag");
                    if arg.get_action().takes_values() {
                        out.push(format!("--{long}={value}"));
                    } else {
                        // A switch read from the environment: true/false, 1/0, yes/no, on/off.
                        use clap::builder::TypedValueParser;
                        let on = clap::builder::BoolishValueParser::new()
                            .parse_ref(sub, Some(arg), std::ffi::OsStr::new(value))
                            .unwrap_or_else(|e| panic!("{place}: {key}={value}: {e}"));
                        if on {
                            out.push(format!("--{long}"));
                        }
                    }
                }
                None => assert!(
                    cli.get_subcommands().any(|s| s.get_arguments().any(reads)),
                    "{place}: {key} is no setting of `locus {}` (nor of any other command)",
                    args[0]
                ),
            }
        }
        out
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_sequence()
            .map(|s| s.iter().map(|x| x.as_str().expect("a string").to_string()).collect())
            .unwrap_or_default()
    }

    fn parses(args: &[String], place: &str) {
        if let Err(e) = Cli::try_parse_from(args) {
            panic!("{place}: `{}` is refused: {e}", args.join(" "));
        }
    }

    #[test]
    fn deploy_files_use_flags_and_settings_the_cli_accepts() {
        // Kubernetes: every container's args, with the ConfigMaps it reads as settings.
        let mut config_maps = std::collections::HashMap::new();
        let mut containers = Vec::new();
        for file in ["config.yaml", "workers.yaml", "router.yaml"] {
            let text = std::fs::read_to_string(format!("{ROOT}/deploy/k8s/{file}")).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let doc = Value::deserialize(doc).unwrap();
                let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
                if doc["kind"] == "ConfigMap" {
                    let data: Vec<(String, String)> = doc["data"]
                        .as_mapping()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().unwrap().to_string(),
                                        v.as_str().unwrap().to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    config_maps.insert(name, data);
                } else if let Some(cs) = doc["spec"]["template"]["spec"]["containers"].as_sequence()
                {
                    for c in cs {
                        containers.push((format!("{file}: {name}"), c.clone()));
                    }
                }
            }
        }
        assert_eq!(containers.len(), 2, "a worker and a router container");
        for (place, c) in &containers {
            let mut env = Vec::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let cm = from["configMapRef"]["name"].as_str().unwrap();
                env.extend(
                    config_maps
                        .get(cm)
                        .unwrap_or_else(|| panic!("{place}: no ConfigMap {cm}"))
                        .clone(),
                );
            }
            parses(&with_env(&strings(&c["args"]), &env, place), place);
        }
        // Compose: every service's command and environment.
        let text = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
        let mut compose: Value = serde_yaml::from_str(&text).unwrap();
        // `<<: *worker`, as Compose reads it.
        compose.apply_merge().unwrap();
        let services = compose["services"].as_mapping().unwrap();
        assert_eq!(services.len(), 4, "three workers and a router");
        for (name, s) in services {
            let place = format!("docker-compose.yml: {}", name.as_str().unwrap());
            let env: Vec<(String, String)> = s["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                // No value: passed on from the caller's environment, absent when unset
                // there (an empty value would be a value, and refused).
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    // `${VAR:-default}` as Compose expands it when VAR is unset.
                    let v = v.as_str().unwrap();
                    let v = match v.strip_prefix("${").and_then(|r| r.split_once(":-")) {
                        Some((_, d)) => d.trim_end_matches('}'),
                        None => v,
                    };
                    (k.as_str().unwrap().to_string(), v.to_string())
                })
                .collect();
            parses(&with_env(&strings(&s["command"]), &env, &place), &place);
            assert_eq!(strings(&s["healthcheck"]["test"]), ["CMD", "/locus", "probe"], "{place}");
        }
        // The image's own command and health check.
        let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
        for (prefix, want) in [("CMD ", "run"), ("HEALTHCHECK ", "probe")] {
            let line = dockerfile.lines().find(|l| l.starts_with(prefix)).unwrap();
            let json = &line[line.find('[').unwrap()..];
            let mut args: Vec<String> = serde_json::from_str(json).unwrap();
            if args[0] == "/locus" {
                args.remove(0);
            }
            assert_eq!(args[0], want);
            parses(
                &["locus".to_string()].into_iter().chain(args).collect::<Vec<_>>(),
                "Dockerfile",
            );
        }
    }

    #[test]
    fn a_bad_setting_in_a_deploy_file_would_be_caught() {
        let args = ["worker".to_string()];
        let env = [("LOCUS_MAX_BATCH".to_string(), "many".to_string())];
        let full = with_env(&args, &env, "test");
        assert!(Cli::try_parse_from(&full).is_err(), "{full:?}");
        let unknown = [("LOCUS_NO_SUCH".to_string(), "1".to_string())];
        let caught = std::panic::catch_unwind(|| with_env(&args, &unknown, "test"));
        assert!(caught.is_err());
    }
}
