//! `locus run`: the one-command local cluster, N workers and a router in one process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use locus_engine::{Engine, EngineOptions, ModelSource};

use crate::router::{self, Gateway, RouterOptions};
use crate::worker::{self, WorkerHandle, WorkerOptions};

/// How the local cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Address every listener binds.
    pub host: IpAddr,
    /// Router port; workers take the ports after it unless `worker_port` says otherwise.
    pub port: u16,
    /// First worker port (workers use consecutive ports; 0 picks free ports).
    pub worker_port: u16,
    /// Admin listener of the router.
    pub admin_addr: SocketAddr,
    /// Number of workers.
    pub workers: usize,
    /// Model every worker loads.
    pub model: ModelSource,
    /// Each worker's engine: prefix KV budget and batching limits.
    pub engine: EngineOptions,
    /// Worker options (cache policy, budgets, token); `worker_id` is set per worker.
    pub worker: WorkerOptions,
    /// Router options; `workers` is filled in.
    pub router: RouterOptions,
}

/// A running cluster.
pub struct Cluster {
    /// The router's public address.
    pub router_addr: SocketAddr,
    /// The router's admin address.
    pub admin_addr: SocketAddr,
    /// The workers' addresses.
    pub worker_addrs: Vec<SocketAddr>,
    /// The router's state.
    pub gateway: Arc<Gateway>,
    /// The running workers (`None` once taken, e.g. to stop one).
    pub workers: Vec<Option<WorkerHandle>>,
    /// The workers' engines, to restart a worker on the same model.
    pub engines: Vec<Arc<Engine>>,
}

/// Loads `n` engines in parallel (each worker has its own caches).
pub async fn load_engines(
    model: &ModelSource,
    n: usize,
    options: EngineOptions,
) -> anyhow::Result<Vec<Arc<Engine>>> {
    let loads = (0..n).map(|_| {
        let (model, options) = (model.clone(), options.clone());
        tokio::task::spawn_blocking(move || Engine::load(&model, options).map(Arc::new))
    });
    let mut engines = Vec::with_capacity(n);
    for l in futures_util::future::join_all(loads).await {
        engines.push(l??);
    }
    Ok(engines)
}

/// Starts the workers, then the router in front of them.
pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
    let engines = load_engines(&opts.model, opts.workers, opts.engine.clone()).await?;
    if let Some(e) = engines.first() {
        tracing::info!(model = %e.describe(), workers = opts.workers, "model loaded");
    }
    let mut worker_addrs = Vec::new();
    let mut workers = Vec::new();
    for (i, engine) in engines.iter().enumerate() {
        let port = if opts.worker_port == 0 { 0 } else { opts.worker_port + i as u16 };
        let wo = WorkerOptions { worker_id: format!("worker-{}", i + 1), ..opts.worker.clone() };
        let handle = worker::spawn(engine.clone(), wo, SocketAddr::new(opts.host, port)).await?;
        worker_addrs.push(handle.addr);
        workers.push(Some(handle));
    }
    let urls: Vec<String> = worker_addrs.iter().map(|a| format!("http://{a}")).collect();
    let (router_addr, admin_addr, gateway) = start_router(
        opts.router.clone(),
        urls,
        opts.worker.admin_token.clone(),
        SocketAddr::new(opts.host, opts.port),
        opts.admin_addr,
    )
    .await?;
    Ok(Cluster { router_addr, admin_addr, worker_addrs, gateway, workers, engines })
}

/// Starts a router in front of `workers` (base URLs) whose admin token is `worker_token`:
/// the router reads their KV events with it unless its options name another. Returns its
/// public and admin addresses and its state.
pub async fn start_router(
    mut router: RouterOptions,
    workers: Vec<String>,
    worker_token: Option<String>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, SocketAddr, Arc<Gateway>)> {
    router.workers = workers;
    if router.worker_token.is_none() {
        router.worker_token = worker_token;
    }
    router::spawn(router, addr, admin_addr).await
}

impl ClusterOptions {
    /// The defaults of `locus run`: 3 workers on the ports after the router's, the router
    /// and its admin API where a standalone router listens ([`router::DEFAULT_ADDR`],
    /// [`router::DEFAULT_ADMIN_ADDR`]), the synthetic distilgpt2, and the engine's, the
    /// workers' and the router's own defaults.
    pub fn local() -> Self {
        Self {
            host: router::DEFAULT_ADDR.ip(),
            port: router::DEFAULT_ADDR.port(),
            worker_port: router::DEFAULT_ADDR.port() + 1,
            admin_addr: router::DEFAULT_ADMIN_ADDR,
            workers: 3,
            model: ModelSource::Synthetic,
            engine: EngineOptions::default(),
            worker: WorkerOptions::default(),
            router: RouterOptions::default(),
        }
    }
}
