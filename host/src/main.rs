//! The `locus` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use locus::cluster::{self, ClusterOptions};
use locus::policy::{self, FaultPolicy, LoadOptions, PolicySource};
use locus::router::{self, RouterOptions};
use locus::worker::{self, WorkerOptions};
use locus_engine::ModelSource;

/// locus: a cache-aware LLM inference router whose routing and cache policies are
/// WebAssembly components, swapped at run time.
#[derive(Parser)]
#[command(name = "locus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster: N workers and a router, in one process, with the offline
    /// synthetic distilgpt2 by default (no download).
    Run(RunArgs),
    /// Serve one model over HTTP (/generate, /v1/completions, /health, /metrics, ...).
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
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// The model: `synthetic-distilgpt2` (offline, deterministic weights), a Hugging Face
    /// id such as `distilgpt2` (from the local hf-hub cache, downloaded where a network
    /// exists), or a directory with config.json and model.safetensors.
    #[arg(long, default_value = "synthetic-distilgpt2")]
    model: String,
    /// A local model directory (same as `--model DIR`).
    #[arg(long, conflicts_with = "model")]
    model_dir: Option<PathBuf>,
    /// Byte budget of each worker's prefix KV store.
    #[arg(long, default_value_t = 256 << 20)]
    prefix_cache_bytes: u64,
}

impl ModelArgs {
    fn source(&self) -> Result<ModelSource, String> {
        match &self.model_dir {
            Some(d) => Ok(ModelSource::Dir(d.clone())),
            None => self.model.parse().map_err(|e: locus_engine::EngineError| e.to_string()),
        }
    }
}

#[derive(Args, Clone)]
struct CacheArgs {
    /// Cache policy of both cache levels: a built-in (lru) or a .wasm component.
    #[arg(long, default_value = "lru")]
    cache_policy: String,
    /// A `key=value` setting for the cache policy (repeatable).
    #[arg(long = "cache-setting", value_parser = policy::parse_setting)]
    cache_settings: Vec<(String, String)>,
    /// Byte budget of each worker's response cache.
    #[arg(long = "cache-bytes", default_value_t = 64 << 20)]
    response_cache_bytes: u64,
    /// Requests waiting or running per worker beyond which new ones get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
}

impl CacheArgs {
    fn options(&self, token: Option<String>) -> Result<WorkerOptions, String> {
        Ok(WorkerOptions {
            worker_id: "worker".into(),
            cache_policy: PolicySource::parse(&self.cache_policy)?,
            cache_settings: self.cache_settings.clone(),
            response_cache_bytes: self.response_cache_bytes,
            max_queue: self.max_queue,
            admin_token: token,
        })
    }
}

#[derive(Args, Clone)]
struct RoutingArgs {
    /// Routing policy: a built-in (hash, random), `native`, or a .wasm component.
    #[arg(long, default_value = "hash")]
    policy: String,
    /// A `key=value` setting for the routing policy (repeatable), e.g. prefix-chars=20.
    #[arg(long = "policy-setting", value_parser = policy::parse_setting)]
    policy_settings: Vec<(String, String)>,
    /// Swap the policy whenever its file changes on disk.
    #[arg(long)]
    watch: bool,
    /// Milliseconds between health checks of each worker.
    #[arg(long, default_value_t = 500)]
    health_interval_ms: u64,
    /// Failed health checks before a worker is marked down.
    #[arg(long, default_value_t = 2)]
    fail_threshold: u32,
    /// Passed health checks before a down worker is marked up.
    #[arg(long, default_value_t = 1)]
    success_threshold: u32,
    /// Other workers tried when one refuses the connection or answers 5xx.
    #[arg(long, default_value_t = 2)]
    max_retries: usize,
    /// Policy faults within --fault-window-s that roll the policy back.
    #[arg(long, default_value_t = 5)]
    max_faults: u32,
    /// The window faults are counted in, in seconds.
    #[arg(long, default_value_t = 60)]
    fault_window_s: u64,
}

impl RoutingArgs {
    fn options(&self, token: Option<String>) -> Result<RouterOptions, String> {
        let policy = PolicySource::parse(&self.policy)?;
        let watch = match (&policy, self.watch) {
            (PolicySource::File(p), true) => Some(p.clone()),
            (_, true) => return Err("--watch needs --policy to be a file path".into()),
            _ => None,
        };
        Ok(RouterOptions {
            workers: Vec::new(),
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
        })
    }
}

#[derive(Args)]
struct RunArgs {
    /// Number of workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Router port; workers listen on the next ports (8001, 8002, ...).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Admin listener of the router.
    #[arg(long, default_value = "127.0.0.1:8100")]
    admin_addr: SocketAddr,
    /// Bearer token of the admin APIs (a random one is made and printed if not given).
    #[arg(long, env = "LOCUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    routing: RoutingArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct WorkerArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Name reported in meta_info.worker_id (default: worker-PORT).
    #[arg(long)]
    worker_id: Option<String>,
    /// Bearer token of PUT /admin/cache-policy (disabled without one).
    #[arg(long, env = "LOCUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct RouterArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Worker base URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    workers: Vec<String>,
    /// Admin listener (keep it on loopback unless a network policy guards it).
    #[arg(long, default_value = "127.0.0.1:8100")]
    admin_addr: SocketAddr,
    /// Bearer token of the admin API (disabled without one).
    #[arg(long, env = "LOCUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    routing: RoutingArgs,
}

#[derive(Args)]
struct SwapArgs {
    /// Admin URL of a router (e.g. http://127.0.0.1:8100).
    #[arg(long, conflicts_with = "worker", required_unless_present = "worker")]
    router: Option<String>,
    /// URL of a worker (e.g. http://127.0.0.1:8001).
    #[arg(long)]
    worker: Option<String>,
    /// New routing policy (with --router): a built-in name or a .wasm file.
    #[arg(long)]
    policy: Option<String>,
    /// New cache policy (with --worker): a built-in name or a .wasm file.
    #[arg(long)]
    cache_policy: Option<String>,
    /// A `key=value` setting for the new policy (repeatable).
    #[arg(long = "setting", value_parser = policy::parse_setting)]
    settings: Vec<(String, String)>,
    /// Bearer token of the admin API.
    #[arg(long, env = "LOCUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Public URL of an existing router (with --admin); default: spawn a local cluster.
    #[arg(long, requires = "admin", conflicts_with = "spawn")]
    router: Option<String>,
    /// Admin URL of that router.
    #[arg(long, requires = "router")]
    admin: Option<String>,
    /// Bearer token of the admin APIs.
    #[arg(long, env = "LOCUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Start a local cluster of N workers for the run (the default, with 3).
    #[arg(long)]
    spawn: Option<usize>,
    /// seed, shared-prefix (8 groups x 16 prompts, system 256, question 32, output 16),
    /// multi-turn (8 users x 4 rounds) or trace:FILE (JSONL).
    #[arg(long, default_value = "seed")]
    workload: String,
    /// Routing policies to compare, comma-separated (built-ins or .wasm files).
    #[arg(long, value_delimiter = ',', default_value = "random,hash")]
    policies: Vec<String>,
    /// Requests per policy (default: the workload's length).
    #[arg(long)]
    requests: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Open loop at this many requests/s instead of a fixed concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// Workload seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send the workload once, unrecorded, before each measured pass.
    #[arg(long)]
    warm: bool,
    /// Where the report files go.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy the way a swap would and report on it: the world it implements,
    /// its exports, sha256, size and the outcome of a smoke call. Exits non-zero if
    /// locus cannot use it.
    Inspect {
        /// A built-in policy name (random, hash, lru) or a path to a .wasm component.
        policy: String,
        /// A `key=value` setting passed to `configure` (repeatable).
        #[arg(long = "setting", short = 's', value_parser = policy::parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List the built-in policies.
    List,
}

fn random_token() -> String {
    use std::hash::BuildHasher;
    let a = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    let b = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{a:016x}{b:016x}")
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => return policy_command(cmd),
        other => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(other))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn policy_command(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::List => {
            for name in policy::builtin_names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        PolicyCommand::Inspect { policy, settings } => {
            let source = match PolicySource::parse(&policy) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = policy::inspect(&source, &LoadOptions::with_settings(settings));
            println!("{report}");
            if report.usable() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}

async fn serve(cmd: Command) -> anyhow::Result<()> {
    let err = |e: String| anyhow::anyhow!(e);
    match cmd {
        Command::Run(a) => {
            let token = a.admin_token.clone().unwrap_or_else(random_token);
            let mut opts = ClusterOptions::local();
            opts.host = a.host;
            opts.port = a.port;
            opts.worker_port = if a.port == 0 { 0 } else { a.port + 1 };
            opts.admin_addr = a.admin_addr;
            opts.workers = a.workers.max(1);
            opts.model = a.model.source().map_err(err)?;
            opts.prefix_cache_bytes = a.model.prefix_cache_bytes;
            opts.worker = a.cache.options(Some(token.clone())).map_err(err)?;
            opts.router = a.routing.options(Some(token.clone())).map_err(err)?;
            let c = cluster::start(opts).await?;
            let r = c.router_addr;
            println!("locus is running");
            println!("  router:  http://{r}   (policy {})", c.gateway.policy().info().name);
            for (i, w) in c.worker_addrs.iter().enumerate() {
                println!("  worker {}: http://{w}", i + 1);
            }
            println!("  admin:   http://{}   (token: {token})", c.admin_addr);
            println!("  metrics: http://{r}/metrics");
            println!();
            println!("try:");
            println!(
                "  curl -s http://{r}/generate -H 'content-type: application/json' \\\n    -d '{{\"text\": \"The capital of France is\", \"sampling_params\": {{\"max_new_tokens\": 16}}}}'"
            );
            println!(
                "  locus swap --router http://{} --policy random --admin-token {token}",
                c.admin_addr
            );
            tokio::signal::ctrl_c().await?;
            println!("stopping");
            Ok(())
        }
        Command::Worker(a) => {
            let source = a.model.source().map_err(err)?;
            let engines = cluster::load_engines(&source, 1, a.model.prefix_cache_bytes).await?;
            let engine = engines.into_iter().next().expect("one engine");
            tracing::info!(model = %engine.describe(), "model loaded");
            let mut wo = a.cache.options(a.admin_token.clone()).map_err(err)?;
            wo.worker_id = a.worker_id.unwrap_or_else(|| format!("worker-{}", a.port));
            let handle = worker::spawn(engine, wo, SocketAddr::new(a.host, a.port)).await?;
            println!("locus worker listening on http://{}", handle.addr);
            handle.until_ctrl_c().await?;
            Ok(())
        }
        Command::Router(a) => {
            let mut ro = a.routing.options(a.admin_token.clone()).map_err(err)?;
            ro.workers = a.workers.clone();
            let (addr, admin, gw) =
                router::spawn(ro, SocketAddr::new(a.host, a.port), a.admin_addr).await?;
            println!(
                "locus router listening on http://{addr} (admin http://{admin}), policy {}, workers {}",
                gw.policy().info().name,
                a.workers.join(",")
            );
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Swap(a) => swap(a).await,
        Command::Bench(a) => bench(a).await,
        Command::Policy(_) => unreachable!("handled without a runtime"),
    }
}

async fn swap(a: SwapArgs) -> anyhow::Result<()> {
    let (base, path, policy) = match (&a.router, &a.worker) {
        (Some(r), _) => {
            let p = a.policy.clone().ok_or_else(|| anyhow::anyhow!("--router needs --policy"))?;
            (r.clone(), "/admin/policy", p)
        }
        (None, Some(w)) => {
            let p = a
                .cache_policy
                .clone()
                .ok_or_else(|| anyhow::anyhow!("--worker needs --cache-policy"))?;
            (w.clone(), "/admin/cache-policy", p)
        }
        (None, None) => anyhow::bail!("give --router URL or --worker URL"),
    };
    let source = PolicySource::parse(&policy).map_err(|e| anyhow::anyhow!(e))?;
    let mut query: Vec<(String, String)> = a.settings.clone();
    let body = match &source {
        PolicySource::File(p) => {
            query.push(("name".into(), p.display().to_string()));
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?
        }
        other => {
            query.push(("name".into(), other.name()));
            Vec::new()
        }
    };
    let mut req = reqwest::Client::new()
        .put(format!("{}{path}", base.trim_end_matches('/')))
        .query(&query)
        .body(body);
    if let Some(t) = &a.admin_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if status.is_success() {
        println!("{text}");
        Ok(())
    } else {
        anyhow::bail!("{status}: {text}")
    }
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use locus::bench::{self, BenchOptions, Target, Workload};
    let workload = Workload::parse(&a.workload).map_err(|e| anyhow::anyhow!(e))?;
    let mut _cluster = None;
    let target = match (&a.router, &a.admin) {
        (Some(r), Some(ad)) => Target {
            router: r.trim_end_matches('/').into(),
            admin: ad.trim_end_matches('/').into(),
            token: a.admin_token.clone(),
        },
        _ => {
            let token = a.admin_token.clone().unwrap_or_else(random_token);
            let mut o = ClusterOptions::local();
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            (o.port, o.worker_port, o.admin_addr) = (0, 0, any);
            o.workers = a.spawn.unwrap_or(3).max(1);
            o.model = a.model.source().map_err(|e| anyhow::anyhow!(e))?;
            o.prefix_cache_bytes = a.model.prefix_cache_bytes;
            o.worker.admin_token = Some(token.clone());
            o.router.admin_token = Some(token.clone());
            let c = cluster::start(o).await?;
            let t = Target {
                router: format!("http://{}", c.router_addr),
                admin: format!("http://{}", c.admin_addr),
                token: Some(token),
            };
            _cluster = Some(c);
            t
        }
    };
    let opts = BenchOptions {
        workload,
        policies: a.policies.clone(),
        requests: a.requests,
        concurrency: a.concurrency.max(1),
        rate: a.rate,
        seed: a.seed,
        warm: a.warm,
        progress: true,
    };
    let report = bench::run(&target, &opts).await?;
    let summaries = bench::report::write(&report, &a.out)?;
    println!("{}", bench::report::table(&report, &summaries));
    println!(
        "{} requests per policy, {}; report in {}/report.md, report.json, chart.svg",
        report.requests,
        if report.warm { "warm" } else { "cold caches" },
        a.out.display()
    );
    Ok(())
}
