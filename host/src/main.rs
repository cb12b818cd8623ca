//! The `locus` binary: parses the command line ([`cli`]) and runs the command.

mod cli;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use cli::{BenchArgs, Cli, Command, PolicyCommand, ProbeArgs, SwapArgs};
use locus::admin_client::AdminClient;
use locus::cluster::{self, ClusterOptions};
use locus::router;
use locus::worker;
use locus_policy::{self as policy, LoadOptions, PolicySource};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    policy::use_compiled_cache(cli.compiled_cache_dir());
    let cache_args = cli.cache_args();
    let result = match cli.command {
        Command::Policy(PolicyCommand::Report { router, admin_token, json, audit }) => {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(policy_report(&router, admin_token.token, json, audit)))
        }
        Command::Policy(cmd) => return policy_command(cmd),
        other => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(other, cache_args))),
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
        PolicyCommand::Report { .. } => unreachable!("run with a runtime"),
    }
}

/// `locus policy report`: the router's trial side by side, then its last policy changes.
async fn policy_report(
    admin: &str,
    token: Option<String>,
    json: bool,
    audit: usize,
) -> anyhow::Result<()> {
    let client = AdminClient::new(token);
    if json {
        let v = client.get(admin, "/admin/policy/trial").await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match client.trial(admin).await? {
        Some(t) => print!("{}", policy::render_trial(&t)),
        None => println!(
            "no trial has run on this router (start one with `locus swap --shadow` or `--canary`)"
        ),
    }
    if audit > 0 {
        let entries = client.audit(admin).await?;
        println!("\naudit log (last {} of {}):", audit.min(entries.len()), entries.len());
        for e in entries.iter().rev().take(audit).rev() {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(e.at.max(0.0));
            println!(
                "  {}  {:<8} {:<24} {:<12} by {:<20} {}",
                httpdate::fmt_http_date(at),
                e.event.name(),
                e.name,
                &e.sha256[..e.sha256.len().min(12)],
                e.who,
                e.why,
            );
        }
    }
    Ok(())
}

/// Runs `cmd`; `cache_args` are the compiled-policy cache flags, for the `locus`
/// processes it starts.
async fn serve(cmd: Command, cache_args: Vec<String>) -> anyhow::Result<()> {
    match cmd {
        Command::Run(a) => {
            let token = a.admin_token.token.clone().unwrap_or_else(random_token);
            let mut opts = ClusterOptions::local();
            opts.host = a.host;
            opts.port = a.port;
            opts.worker_port = if a.port == 0 { 0 } else { a.port + 1 };
            opts.admin_addr = a.admin_addr;
            opts.workers = a.workers.max(1);
            opts.model = a.model.source()?;
            opts.engine = a.model.engine_options()?;
            opts.worker = a.cache.options(Some(token.clone()), &a.serve)?;
            opts.router = a.routing.options(Some(token.clone()), &a.serve)?;
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
                "  curl -s http://{r}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi!\"}}], \"max_tokens\": 16}}'"
            );
            println!(
                "  locus swap --router http://{} --policy random --admin-token {token}",
                c.admin_addr
            );
            let signal = locus::serve::shutdown_signal().await?;
            println!("stopping ({signal})");
            Ok(())
        }
        Command::Worker(a) => {
            let source = a.model.source()?;
            let engines = cluster::load_engines(&source, 1, a.model.engine_options()?).await?;
            let engine = engines.into_iter().next().expect("one engine");
            tracing::info!(model = %engine.describe(), "model loaded");
            let (delay, grace) = a.shutdown.times()?;
            let mut wo = a.cache.options(a.admin_token.token.clone(), &a.serve)?;
            wo.worker_id = a.worker_id.unwrap_or_else(|| format!("{}:{}", host_name(), a.port));
            wo.audit_log = a.audit_log.filter(|p| !p.as_os_str().is_empty());
            let handle = worker::spawn(engine, wo, SocketAddr::new(a.host, a.port)).await?;
            println!(
                "locus worker {} listening on http://{}",
                handle.worker.options().worker_id,
                handle.addr
            );
            handle.until_signal(delay, grace).await?;
            Ok(())
        }
        Command::Router(a) => {
            let (delay, grace) = a.shutdown.times()?;
            let mut ro = a.routing.options(a.admin_token.token.clone(), &a.serve)?;
            ro.workers = a.workers.clone();
            ro.discover = a.discover.clone();
            ro.discover.extend(a.workers_file.clone().map(router::Discover::File));
            let mut found: Vec<String> = a.workers.clone();
            found.extend(ro.discover.iter().map(ToString::to_string));
            ro.discover_interval = std::time::Duration::from_millis(a.discover_interval_ms);
            let (addr, admin, gw) =
                router::spawn(ro, SocketAddr::new(a.host, a.port), a.admin_addr).await?;
            println!(
                "locus router listening on http://{addr} (admin http://{admin}), policy {}, workers {}",
                gw.policy().info().name,
                found.join(",")
            );
            let signal = locus::serve::shutdown_signal().await?;
            tracing::info!(%signal, delay_s = delay.as_secs_f64(), grace_s = grace.as_secs_f64(), "draining");
            tokio::select! {
                done = gw.drain(delay, grace) => if !done {
                    tracing::warn!("requests still in flight after the grace period; exiting");
                },
                s = locus::serve::shutdown_signal() => {
                    tracing::warn!(signal = %s?, "second signal; exiting without waiting");
                }
            }
            Ok(())
        }
        Command::Swap(a) => swap(a).await,
        Command::Probe(a) => probe(a).await,
        Command::Bench(a) => bench(a, cache_args).await,
        Command::Policy(_) => unreachable!("handled without a runtime"),
    }
}

/// This machine's host name (a container's or pod's name), or `localhost`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the name is NUL-terminated when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".into(),
    }
}

async fn probe(a: ProbeArgs) -> anyhow::Result<()> {
    let timeout = std::time::Duration::try_from_secs_f64(a.timeout_s)
        .map_err(|_| anyhow::anyhow!("--timeout-s must be a non-negative number of seconds"))?;
    let r = reqwest::Client::new().get(&a.url).timeout(timeout).send().await?;
    anyhow::ensure!(r.status().is_success(), "{} answered {}", a.url, r.status());
    Ok(())
}

/// Who runs this command, for the audit log: `$USER@host`.
fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        // SAFETY: getuid cannot fail and touches no memory of ours.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    format!("{user}@{}", host_name())
}

async fn swap(a: SwapArgs) -> anyhow::Result<()> {
    let who = a.actor.clone().filter(|w| !w.is_empty()).unwrap_or_else(default_actor);
    let admin = AdminClient::new(a.admin_token.token.clone())
        .with_actor(who, a.reason.clone().unwrap_or_default());
    let answer = match (&a.router, &a.worker) {
        (Some(r), _) if a.promote => admin.end_trial(r, "promote").await?,
        (Some(r), _) if a.abort => admin.end_trial(r, "abort").await?,
        (Some(r), _) => {
            let mut settings = a.settings.clone();
            let set = |s: &mut Vec<(String, String)>, k: &str, v: String| s.push((k.into(), v));
            let p = if let Some(p) = &a.shadow {
                set(&mut settings, "locus.shadow", "true".into());
                p
            } else if let [percent, p] = a.canary.as_slice() {
                let pct: f64 = percent
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|x: &f64| *x > 0.0 && *x <= 100.0)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--canary PERCENT POLICY: `{percent}` is not a percentage in (0, 100]"
                        )
                    })?;
                set(&mut settings, "locus.canary", pct.to_string());
                for (k, v) in [
                    ("locus.min-requests", a.min_requests.map(|n| n.to_string())),
                    ("locus.window", a.window.map(|n| n.to_string())),
                    ("locus.error-margin", a.error_margin.map(|x| x.to_string())),
                    ("locus.fallback-margin", a.fallback_margin.map(|x| x.to_string())),
                    ("locus.ttft-margin", a.ttft_margin.map(|x| x.to_string())),
                ] {
                    if let Some(v) = v {
                        set(&mut settings, k, v);
                    }
                }
                p
            } else {
                a.policy.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--router needs --policy, --shadow, --canary, --promote or --abort"
                    )
                })?
            };
            admin.swap_router_policy(r, p, &settings).await?
        }
        (None, Some(w)) => {
            let p = a
                .cache_policy
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--worker needs --cache-policy"))?;
            admin.swap_cache_policy(w, p, &a.settings).await?
        }
        (None, None) => anyhow::bail!("give --router URL or --worker URL"),
    };
    println!("{answer}");
    Ok(())
}

async fn bench(a: BenchArgs, cache_args: Vec<String>) -> anyhow::Result<()> {
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
            let n = a.spawn.unwrap_or(3).max(1);
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
