//! Drives a router: for each rate, round and policy, swap the policy in (through locus's
//! admin API; another router serves as it is), flush the workers' caches, optionally warm
//! up, then send the workload and record every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::oracle::oracle;
use super::pacing::pass_rates;
use super::pass::{PassSpec, send_all};
use super::workload::BenchRequest;
use crate::admin_client::AdminClient;

// Defined here until the bench was split by job: their `bench::run::` paths still hold.
pub use super::options::{BenchOptions, Target};
pub use super::pacing::{Arrivals, MIN_RATE, arrival_times};
pub use super::record::{Pass, Record, Report};

fn sequence(opts: &BenchOptions, warm_up: bool) -> anyhow::Result<Vec<BenchRequest>> {
    let base =
        if warm_up { opts.workload.warm_up(opts.seed) } else { opts.workload.generate(opts.seed) };
    let base = base.map_err(anyhow::Error::msg)?;
    if base.is_empty() {
        bail!("the workload has no requests");
    }
    let n = opts.requests.unwrap_or(base.len());
    Ok(base.iter().cycle().take(n).cloned().collect())
}

/// Runs every policy over the same sequence (at every rate, for every round) and returns
/// the report.
pub async fn run(target: &Target, opts: &BenchOptions) -> anyhow::Result<Report> {
    let seq = Arc::new(sequence(opts, false)?);
    let warm_seq = Arc::new(if opts.warm { sequence(opts, true)? } else { Vec::new() });
    if target.admin.is_none() && opts.policies.len() != 1 {
        bail!("a router without locus's admin API cannot swap policies: give one name");
    }
    if !opts.rates.is_empty() && seq.iter().any(|r| r.at_ms.is_some()) {
        bail!("a trace sends on its own schedule: drop --rate");
    }
    if let Some(r) = opts.rates.iter().find(|r| !(r.is_finite() && **r >= MIN_RATE)) {
        bail!("rate {r} is not a number of requests/s of at least {MIN_RATE}");
    }
    for (i, r) in opts.rates.iter().enumerate() {
        if opts.rates[..i].contains(r) {
            bail!("rate {r} is given twice");
        }
    }
    // Settings are read before the first pass, not when a policy's turn comes.
    let specs = opts
        .policies
        .iter()
        .map(|p| policy_with_settings(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin_client = AdminClient::new(target.token.clone());
    let workers = match (&target.admin, target.workers.is_empty()) {
        (Some(admin), true) => admin_client
            .workers(admin)
            .await
            .context("listing the router's workers")?
            .into_iter()
            .map(|w| w.url)
            .collect(),
        _ => target.workers.clone(),
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
    let mut records = Vec::new();
    let mut passes = Vec::new();
    for rate in pass_rates(&opts.rates) {
        for round in 0..opts.rounds.max(1) {
            let n = opts.policies.len();
            for k in 0..n {
                let policy = &opts.policies[(k + round) % n];
                if let Some(admin) = &target.admin {
                    let (name, settings) = &specs[(k + round) % n];
                    admin_client
                        .swap_router_policy(admin, name, settings)
                        .await
                        .with_context(|| format!("swapping in {policy}"))?;
                }
                for w in &workers {
                    admin_client.flush(w).await.context("flushing the workers' caches")?;
                }
                let pass = PassSpec { policy, rate, round };
                if opts.warm {
                    send_all(&http, target, &warm_seq, opts, &pass, "warm-up").await;
                }
                let t = Instant::now();
                records.extend(send_all(&http, target, &seq, opts, &pass, "measure").await);
                passes.push(Pass {
                    policy: policy.clone(),
                    rate,
                    round,
                    seconds: t.elapsed().as_secs_f64(),
                });
            }
        }
    }
    Ok(Report {
        workload: format!("{:?}", opts.workload),
        seed: opts.seed,
        warm: opts.warm,
        requests: seq.len(),
        workers: workers.len(),
        oracle: oracle(&seq),
        passes,
        policies: opts.policies.clone(),
        rates: opts.rates.clone(),
        records,
    })
}

/// Splits `NAME:key=value:key=value` (a policy with settings, so one run can compare a
/// policy's settings side by side) into the policy and its settings. A name with a colon
/// but no `=` after it (a path) is taken whole.
pub fn policy_with_settings(spec: &str) -> anyhow::Result<(&str, Vec<(String, String)>)> {
    match spec.split_once(':') {
        Some((name, rest)) if rest.contains('=') => {
            let settings = rest
                .split(':')
                .map(|kv| locus_policy::parse_setting(kv).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("the settings of `{spec}`"))?;
            Ok((name, settings))
        }
        _ => Ok((spec, Vec::new())),
    }
}
