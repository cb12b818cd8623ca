//! The flags of the commands that serve a model: `locus worker`, `locus run` (workers and
//! a router in one process), and the model flags `locus bench` shares with them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use locus::cluster::ClusterOptions;
use locus::router::RouterOptions;
use locus::worker::WorkerOptions;
use locus_engine::{EngineOptions, Limits, ModelSource, WeightFormat};
use locus_policy::PolicySource;

use super::router::RoutingArgs;
use super::shared::{AdminTokenArg, ClusterTokenArg, ServeArgs, ShutdownArgs, ThreadsArg};

/// The model and its engine. `EngineOptions` belongs to the engine crate, which knows
/// nothing of command lines, so these flags are here (their defaults are the engine's) and
/// [`ModelArgs::engine_options`] builds it: the one place options are copied from flags.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// The model: `synthetic-distilgpt2` (offline, deterministic weights), a Hugging Face
    /// id such as `distilgpt2` (from the local hf-hub cache, downloaded where a network
    /// exists), or a directory with config.json and model.safetensors.
    #[arg(long, env = "LOCUS_MODEL", default_value_t = ClusterOptions::local().model.to_string())]
    pub model: String,
    /// A local model directory (same as `--model DIR`).
    #[arg(long, env = "LOCUS_MODEL_DIR", conflicts_with = "model")]
    pub model_dir: Option<PathBuf>,
    /// How a worker holds the model's projection weights: `f32` (exact, as in the
    /// checkpoint) or `q8_0` (8-bit, GGUF's Q8_0: about 3.8x fewer bytes to read per decoded
    /// token, close to f32 but not equal; see BENCHMARKS.md for speed and fidelity).
    /// Workers with different formats never exchange KV blocks.
    #[arg(long, env = "LOCUS_WEIGHT_FORMAT", default_value_t = WeightFormat::default(), value_parser = parse_weight_format)]
    pub weight_format: WeightFormat,
    /// Byte budget of each worker's prefix KV store (finished prompts' blocks, for reuse).
    #[arg(long, env = "LOCUS_PREFIX_CACHE_BYTES", default_value_t = EngineOptions::default().prefix_cache_bytes)]
    pub prefix_cache_bytes: u64,
    /// Most sequences a worker decodes together (continuous batching); 1 runs one
    /// generation at a time.
    #[arg(long, env = "LOCUS_MAX_BATCH", default_value_t = Limits::default().max_batch, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_batch: usize,
    /// Most prompt tokens a worker runs in one step: longer prompts are prefilled in chunks
    /// so that running streams keep producing tokens meanwhile.
    #[arg(long, default_value_t = Limits::default().prefill_chunk, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub prefill_chunk: usize,
    /// Most prompt tokens a worker runs in one step while a request of a higher priority
    /// band is at the worker (or was, within --prefill-yield-window): a lower band's
    /// prompts then move in smaller chunks, so that a higher band's prompt finds a short
    /// step in its way and its tokens keep coming.
    #[arg(long, default_value_t = Limits::default().yield_chunk, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub prefill_chunk_yield: usize,
    /// Seconds a higher band keeps the lower bands' prompt chunks at --prefill-chunk-yield
    /// after its last request left the worker (0: only while one is there).
    #[arg(long, default_value_t = Limits::default().yield_window.as_secs_f64())]
    pub prefill_yield_window: f64,
    /// Byte budget of the running sequences' KV memory per worker, apart from the prefix
    /// store: each request reserves prompt + max tokens at admission and waits while it
    /// does not fit.
    #[arg(long, env = "LOCUS_KV_CACHE_BYTES", default_value_t = Limits::default().kv_bytes)]
    pub kv_cache_bytes: u64,
    // Checked when the engine's options are built, not by clap, so that a negative one
    // fails as it always has (an error and exit code 1, not a usage error).
    /// Seconds a request may wait for admission to the batch before it fails with 503.
    #[arg(long, default_value_t = Limits::default().queue_timeout.as_secs_f64())]
    pub queue_timeout: f64,
}

fn parse_weight_format(s: &str) -> Result<WeightFormat, String> {
    s.parse().map_err(|_| format!("one of {}", WeightFormat::NAMES))
}

impl ModelArgs {
    /// These flags as `locus worker` arguments, for workers started as processes (by `locus
    /// bench`, the only command that does).
    #[cfg(feature = "bench")]
    pub fn to_args(&self) -> Vec<String> {
        let mut a = match &self.model_dir {
            Some(d) => vec!["--model-dir".into(), d.display().to_string()],
            None => vec!["--model".into(), self.model.clone()],
        };
        for (k, v) in [
            ("--weight-format", self.weight_format.to_string()),
            ("--prefix-cache-bytes", self.prefix_cache_bytes.to_string()),
            ("--max-batch", self.max_batch.to_string()),
            ("--prefill-chunk", self.prefill_chunk.to_string()),
            ("--prefill-chunk-yield", self.prefill_chunk_yield.to_string()),
            ("--prefill-yield-window", self.prefill_yield_window.to_string()),
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
        let yield_window =
            Duration::try_from_secs_f64(self.prefill_yield_window).map_err(|_| {
                anyhow::anyhow!("--prefill-yield-window must be a non-negative number of seconds")
            })?;
        Ok(EngineOptions {
            prefix_cache_bytes: self.prefix_cache_bytes,
            limits: Limits {
                max_batch: self.max_batch,
                prefill_chunk: self.prefill_chunk,
                yield_chunk: self.prefill_chunk_yield,
                yield_window,
                kv_bytes: self.kv_cache_bytes,
                queue_timeout,
            },
            weights: self.weight_format,
        })
    }

    /// The model these flags name.
    pub fn source(&self) -> anyhow::Result<ModelSource> {
        match &self.model_dir {
            Some(d) => Ok(ModelSource::Dir(d.clone())),
            None => Ok(self.model.parse()?),
        }
    }
}

/// A worker's caches: the cache policy, and the worker's own options with their flags.
#[derive(Args, Clone)]
pub struct CacheArgs {
    // Named here rather than parsed by clap so that an unknown policy fails as it always
    // has (an error and exit code 1, after `locus worker` has loaded its model).
    /// Cache policy of both cache levels: a built-in (`locus policy list`) or a .wasm
    /// component.
    #[arg(long, env = "LOCUS_CACHE_POLICY", default_value_t = WorkerOptions::default().cache_policy.name())]
    pub cache_policy: String,
    #[command(flatten)]
    pub worker: WorkerOptions,
}

impl CacheArgs {
    /// The worker's options: its own flags', with the cache policy these flags name, the
    /// admin `token` and the limits of `serve`, which the command shares with others.
    pub fn options(
        &self,
        token: Option<String>,
        serve: &ServeArgs,
    ) -> anyhow::Result<WorkerOptions> {
        Ok(WorkerOptions {
            cache_policy: PolicySource::parse(&self.cache_policy)?,
            admin_token: token,
            limits: serve.limits.clone(),
            max_upload_bytes: serve.max_upload_bytes,
            ..self.worker.clone()
        })
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Number of workers.
    #[arg(long, default_value_t = ClusterOptions::local().workers)]
    pub workers: usize,
    /// Router port; workers listen on the next ports (8001, 8002, ...).
    #[arg(long, default_value_t = ClusterOptions::local().port)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = ClusterOptions::local().host)]
    pub host: IpAddr,
    /// Admin listener of the router.
    #[arg(long, default_value_t = ClusterOptions::local().admin_addr)]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    #[command(flatten)]
    pub cluster_token: ClusterTokenArg,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl RunArgs {
    /// The local cluster these flags describe; `token` is the admin token of the router
    /// and the workers alike (the router reads the workers' KV events with it).
    pub fn options(&self, token: &str) -> anyhow::Result<ClusterOptions> {
        let token = Some(token.to_string());
        let cluster_token = self.cluster_token.cluster_token.clone();
        Ok(ClusterOptions {
            host: self.host,
            port: self.port,
            // Port 0 asks for free ports: each worker then gets its own.
            worker_port: if self.port == 0 { 0 } else { self.port + 1 },
            admin_addr: self.admin_addr,
            workers: self.workers.max(1),
            model: self.model.source()?,
            engine: self.model.engine_options()?,
            worker: WorkerOptions {
                cluster_token: cluster_token.clone(),
                cluster_over_http: self.cluster_token.over_http,
                ..self.cache.options(token.clone(), &self.serve)?
            },
            router: RouterOptions {
                cluster_token,
                cluster_over_http: self.cluster_token.over_http,
                ..self.routing.options(token, &self.serve)?
            },
        })
    }
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = ClusterOptions::local().worker_port)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = ClusterOptions::local().host)]
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
    pub cluster_token: ClusterTokenArg,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub threads: ThreadsArg,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl WorkerArgs {
    /// The worker's options; `host` names it when `--worker-id` does not (asked only
    /// then).
    pub fn options(&self, host: impl FnOnce() -> String) -> anyhow::Result<WorkerOptions> {
        Ok(WorkerOptions {
            worker_id: self
                .worker_id
                .clone()
                .unwrap_or_else(|| format!("{}:{}", host(), self.port)),
            audit_log: self.audit_log.clone(),
            cluster_token: self.cluster_token.cluster_token.clone(),
            cluster_over_http: self.cluster_token.over_http,
            ..self.cache.options(self.admin_token.token.clone(), &self.serve)?
        })
    }
}
