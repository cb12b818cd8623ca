//! Sending one pass: every request at its time (open loop, or a trace's own schedule) or
//! `concurrency` at a time (closed loop), behind a progress bar; the records come back in
//! the workload's order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::measure::send;
use super::options::{BenchOptions, Target};
use super::pacing::arrival_times;
use super::record::Record;
use super::workload::BenchRequest;

/// What a pass is: its policy, rate and round.
pub(super) struct PassSpec<'a> {
    pub(super) policy: &'a str,
    pub(super) rate: Option<f64>,
    pub(super) round: usize,
}

/// Sends `seq` as pass `pass` (`phase` names it on the progress bar) and returns its
/// records in the workload's order.
pub(super) async fn send_all(
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
