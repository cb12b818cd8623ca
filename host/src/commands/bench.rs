//! `locus bench`: compare routing policies on one workload, against a router already
//! running or a local cluster started for the run.

use std::net::SocketAddr;

use crate::cli::BenchArgs;
use crate::commands::ids::random_token;
use locus::cluster::{self, ClusterOptions};

/// Runs the bench against the router named, or a local cluster it starts, and writes the
/// report; `cache_args` are the compiled-policy cache flags, for the workers it starts.
pub async fn bench(a: BenchArgs, cache_args: Vec<String>) -> anyhow::Result<()> {
    use locus::bench::{self, BenchOptions, Target, Workload, procs::WorkerProcs};
    let workload = Workload::parse(&a.workload)?;
    // What the run starts lives until the report is written.
    let mut _cluster = None;
    let mut _procs = None;
    let target = match &a.router {
        Some(r) => Target {
            router: r.trim_end_matches('/').into(),
            admin: a.admin.as_ref().map(|ad| ad.trim_end_matches('/').into()),
            token: a.admin_token.token.clone(),
            workers: a.workers.iter().map(|w| w.trim_end_matches('/').to_string()).collect(),
        },
        None => {
            let token = a.admin_token.token.clone().unwrap_or_else(random_token);
            let n = a.spawn.unwrap_or(ClusterOptions::local().workers).max(1);
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let mut o = ClusterOptions::local();
            (o.port, o.worker_port, o.admin_addr) = (0, 0, any);
            o.worker.admin_token = Some(token.clone());
            o.router.admin_token = Some(token.clone());
            let (router_addr, admin_addr) = if a.in_process {
                o.workers = n;
                o.model = a.model.source()?;
                o.engine = a.model.engine_options()?;
                let c = cluster::start(o).await?;
                let addrs = (c.router_addr, c.admin_addr);
                _cluster = Some(c);
                addrs
            } else {
                // Refused here once, rather than by every worker process.
                a.model.engine_options()?;
                let exe = std::env::current_exe()?;
                let logs = a.out.join("workers");
                let mut args = a.model.to_args();
                args.extend(cache_args);
                let procs =
                    WorkerProcs::start(&exe, n, &args, &token, a.compute_threads, &logs).await?;
                let urls = procs.urls.clone();
                _procs = Some(procs);
                let (addr, admin, _gw) =
                    cluster::start_router(o.router, urls, Some(token.clone()), any, any).await?;
                (addr, admin)
            };
            Target {
                router: format!("http://{router_addr}"),
                admin: Some(format!("http://{admin_addr}")),
                token: Some(token),
                workers: Vec::new(),
            }
        }
    };
    let policies = match (&target.admin, a.policies.is_empty()) {
        (None, true) => vec![a.label.clone()],
        (None, false) => anyhow::bail!(
            "--policies needs locus's admin API (--admin); another router is benched as it serves, under --label"
        ),
        (Some(_), true) => vec!["random".into(), "hash".into()],
        (Some(_), false) => a.policies.clone(),
    };
    if target.admin.is_none() && target.workers.is_empty() {
        eprintln!(
            "note: no --admin or --workers, so the workers' caches are not flushed between passes"
        );
    }
    let opts = BenchOptions {
        workload,
        policies,
        requests: a.requests,
        concurrency: a.concurrency.max(1),
        rates: a.rate.clone(),
        rounds: a.rounds,
        arrivals: a.arrivals,
        seed: a.seed,
        warm: a.warm,
        progress: true,
    };
    // Stopped by a signal, the run returns, so what it started (worker processes) is
    // dropped and stopped rather than left behind.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let report = tokio::select! {
        r = bench::run(&target, &opts) => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    };
    let summaries = bench::report::write(&report, &a.out)?;
    println!("{}", bench::report::table(&report, &summaries));
    println!(
        "{} requests per pass, {}; report in {}/report.md, report.json, chart.svg{}",
        report.requests,
        if report.warm { "warm" } else { "cold caches" },
        a.out.display(),
        if report.rates.len() > 1 { ", sweep.svg" } else { "" }
    );
    Ok(())
}
