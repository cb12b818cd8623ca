//! Drives a router: for each rate, round and policy, swap the policy in (through locus's
//! admin API; another router serves as it is), flush the workers' caches, optionally warm
//! up, then send the workload and record every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::{BenchRequest, Oracle, Workload, oracle};
use crate::admin_client::AdminClient;
use crate::api::ErrorBody;
use crate::api::openai::Completion;
use crate::api::sglang::MetaInfo;

/// The cluster under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The router's public base URL.
    pub router: String,
    /// The router's admin base URL: locus's own, so policies can be swapped. `None` for
    /// any other router (SGLang's, vLLM's, ...): one pass per round under `label`.
    pub admin: Option<String>,
    /// Bearer token of the admin APIs (router and workers).
    pub token: Option<String>,
    /// The workers behind the router, to flush between passes and to count; read from
    /// the admin API when empty.
    pub workers: Vec<String>,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The workload.
    pub workload: Workload,
    /// Policies to compare: built-in names or component paths (with no admin API, the one
    /// name the router's passes are reported under).
    pub policies: Vec<String>,
    /// Requests to send (default: the workload's own length; longer repeats it).
    pub requests: Option<usize>,
    /// Requests in flight at once (closed loop).
    pub concurrency: usize,
    /// Open loop at each of these rates in turn, requests/s (a sweep); empty: closed loop
    /// (traces use their own schedule).
    pub rates: Vec<f64>,
    /// Passes per policy (and rate); policies take turns within a round, in an order
    /// rotated each round, so drift on a shared machine hits them all alike.
    pub rounds: usize,
    /// How open-loop requests are spaced.
    pub arrivals: Arrivals,
    /// Seed of the workload.
    pub seed: u64,
    /// Send the workload once, unrecorded, before measuring.
    pub warm: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// The lowest offered rate, requests/s (one request every ~17 minutes).
pub const MIN_RATE: f64 = 0.001;

/// The spacing of open-loop arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps (a Poisson process), seeded: how independent users arrive.
    #[default]
    Poisson,
    /// Evenly spaced, `1 / rate` apart.
    Even,
}

/// Send times of `n` requests at `rate` per second from the start of a pass.
pub fn arrival_times(n: usize, rate: f64, arrivals: Arrivals, seed: u64) -> Vec<Duration> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xA5A5_5A5A_0F0F_F0F0);
    let mut t = 0.0f64;
    (0..n)
        .map(|i| match arrivals {
            Arrivals::Even => Duration::from_secs_f64(i as f64 / rate),
            Arrivals::Poisson => {
                let at = Duration::from_secs_f64(t);
                // 1 - U is in (0, 1], so the logarithm is finite.
                t += -(1.0 - rng.random::<f64>()).ln() / rate;
                at
            }
        })
        .collect()
}

/// One measured request.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in the workload.
    pub index: usize,
    /// The routing policy serving.
    pub policy: String,
    /// Offered rate of its pass, requests/s (`None`: closed loop or a trace's schedule).
    pub rate: Option<f64>,
    /// Round of its pass, from 0.
    pub round: usize,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// Milliseconds to the end of the answer.
    pub latency_ms: f64,
    /// Milliseconds to the first streamed text.
    pub ttft_ms: Option<f64>,
    /// Worker that answered.
    pub worker: String,
    /// Whether the whole answer came from the response cache.
    pub cache_hit: bool,
    /// Prompt tokens served from a cache.
    pub cached_tokens: usize,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Microseconds the router spent choosing the worker, where it says (locus's
    /// `x-locus-route-us`).
    pub route_us: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The measured passes, one per policy, with the oracle beside them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name and shape.
    pub workload: String,
    /// Workload seed.
    pub seed: u64,
    /// Whether a warm-up pass ran before each measured pass.
    pub warm: bool,
    /// Requests in each pass.
    pub requests: usize,
    /// Workers behind the router.
    pub workers: usize,
    /// The best a single unbounded cache could do on the sequence.
    pub oracle: Oracle,
    /// Every measured pass, in the order run.
    pub passes: Vec<Pass>,
    /// Policies, in the order given.
    pub policies: Vec<String>,
    /// Offered rates, in the order swept (empty: closed loop).
    pub rates: Vec<f64>,
    /// Every request of every measured pass.
    pub records: Vec<Record>,
}

/// One measured pass: a policy at a rate in a round.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// The policy.
    pub policy: String,
    /// Offered rate, requests/s.
    pub rate: Option<f64>,
    /// Round, from 0.
    pub round: usize,
    /// Wall time of the pass, seconds.
    pub seconds: f64,
}

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

/// What a pass is: its policy, rate and round.
struct PassSpec<'a> {
    policy: &'a str,
    rate: Option<f64>,
    round: usize,
}

/// The rate of each sweep step: the given rates, or one closed-loop step (`None`).
pub(super) fn pass_rates(rates: &[f64]) -> Vec<Option<f64>> {
    if rates.is_empty() { vec![None] } else { rates.iter().copied().map(Some).collect() }
}

async fn send_all(
    http: &reqwest::Client,
    target: &Target,
    seq: &Arc<Vec<BenchRequest>>,
    opts: &BenchOptions,
    pass: &PassSpec<'_>,
    phase: &str,
) -> Vec<Record> {
    let policy = pass.policy;
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(seq.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(match pass.rate {
            Some(r) => format!("{policy} {r}/s #{} {phase}", pass.round + 1),
            None => format!("{policy} #{} {phase}", pass.round + 1),
        });
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let start = Instant::now();
    let scheduled = seq.iter().any(|r| r.at_ms.is_some()) || pass.rate.is_some();
    // Each round draws its own arrivals, the same for every policy of the round.
    let arrival_seed = opts.seed.wrapping_add(pass.round as u64);
    let times = Arc::new(match pass.rate {
        Some(r) if r > 0.0 => arrival_times(seq.len(), r, opts.arrivals, arrival_seed),
        _ => Vec::new(),
    });
    let (rate, round) = (pass.rate, pass.round);
    let one = |i: usize| {
        let (http, target, seq, policy, bar) =
            (http.clone(), target.clone(), seq.clone(), policy.to_string(), bar.clone());
        let times = times.clone();
        async move {
            let at = match seq[i].at_ms {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => times.get(i).copied(),
            };
            if let Some(at) = at {
                tokio::time::sleep_until((start + at).into()).await;
            }
            let mut rec = send(&http, &target, &seq[i], i, &policy).await;
            (rec.rate, rec.round) = (rate, round);
            bar.inc(1);
            rec
        }
    };
    // Open loop: every request at its time, however many are in flight. Closed loop:
    // `concurrency` at a time.
    let width = if scheduled { seq.len().max(1) } else { opts.concurrency.max(1) };
    let mut out: Vec<Record> =
        futures_util::stream::iter(0..seq.len()).map(one).buffer_unordered(width).collect().await;
    bar.finish_and_clear();
    out.sort_by_key(|r| r.index);
    out
}

async fn send(
    http: &reqwest::Client,
    target: &Target,
    r: &BenchRequest,
    index: usize,
    policy: &str,
) -> Record {
    let mut rec = Record {
        index,
        policy: policy.to_string(),
        rate: None,
        round: 0,
        status: 0,
        latency_ms: 0.0,
        ttft_ms: None,
        worker: String::new(),
        cache_hit: false,
        cached_tokens: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        route_us: None,
        error: None,
    };
    let t = Instant::now();
    // `model` because SGLang's router refuses a completion without one (locus ignores it).
    let body = json!({"model": "locus", "prompt": r.prompt, "max_tokens": r.max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let mut post = http.post(format!("{}/v1/completions", target.router)).json(&body);
    if let Some(s) = &r.session {
        post = post.header(crate::router::DEFAULT_SESSION_HEADER, s);
    }
    let resp = post.send().await;
    let resp = match resp {
        Ok(x) => x,
        Err(e) => {
            rec.error = Some(e.to_string());
            rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
            return rec;
        }
    };
    rec.status = resp.status().as_u16();
    rec.route_us =
        resp.headers().get(crate::router::ROUTE_US).and_then(|v| v.to_str().ok()?.parse().ok());
    if !resp.status().is_success() {
        rec.error = Some(resp.text().await.unwrap_or_default());
        rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
        return rec;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut meta: Option<MetaInfo> = None;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            rec.error = Some("the stream broke".into());
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                if let Ok(e) = serde_json::from_str::<ErrorBody>(data) {
                    rec.error = Some(e.error.message);
                    continue;
                }
                let Ok(c) = serde_json::from_str::<Completion>(data) else { continue };
                let has_text = c.choices.first().is_some_and(|c| !c.text.is_empty());
                if has_text && rec.ttft_ms.is_none() {
                    rec.ttft_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                }
                if c.meta_info.is_some() {
                    meta = c.meta_info;
                }
                if let Some(u) = c.usage {
                    rec.completion_tokens = u.completion_tokens;
                }
            }
        }
    }
    rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
    if let Some(m) = meta {
        rec.worker = m.worker_id;
        rec.cache_hit = m.cache_hit;
        rec.cached_tokens = m.cached_tokens;
        rec.prompt_tokens = m.prompt_tokens;
    }
    if rec.worker.is_empty() && rec.error.is_none() {
        rec.error = Some("the answer had no meta_info".into());
    }
    rec
}
