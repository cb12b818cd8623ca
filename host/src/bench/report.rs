//! Summaries of a [`Report`], and the files written for it: `report.json`, `report.md`
//! and `chart.svg` (latency CDF per policy; hit rates against the oracle).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::pacing::pass_rates;
use super::record::Report;

/// One policy's passes at one rate (all rounds), summarized from their records.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The policy.
    pub policy: String,
    /// Offered rate, requests/s (`None`: closed loop).
    pub rate: Option<f64>,
    /// Passes summarized (rounds).
    pub passes: usize,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed or were refused.
    pub errors: usize,
    /// Latency, milliseconds.
    pub mean_ms: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 95th percentile latency.
    pub p95_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Median time to first token.
    pub ttft_p50_ms: f64,
    /// 90th percentile time to first token.
    pub ttft_p90_ms: f64,
    /// 99th percentile time to first token.
    pub ttft_p99_ms: f64,
    /// Median time per output token after the first, ms (generated answers of two or more
    /// tokens; response-cache hits are left out).
    pub tpot_p50_ms: Option<f64>,
    /// Answered requests per second of the passes' wall time.
    pub throughput_rps: f64,
    /// Answers served whole from a response cache.
    pub response_hit_rate: f64,
    /// Prompt tokens served from a cache.
    pub prefix_token_hit_rate: f64,
    /// Prompt tokens whose KV was pulled from another worker (not counted as hits).
    pub prefix_token_transferred_rate: f64,
    /// Requests on the busiest worker.
    pub max_per_worker: usize,
    /// Requests per worker, over all the workers behind the router (over those that served
    /// any when their number is unknown).
    pub mean_per_worker: f64,
    /// Median routing time per request, µs, where the router reports it.
    pub route_p50_us: Option<f64>,
    /// 99th percentile routing time, µs.
    pub route_p99_us: Option<f64>,
}

impl Summary {
    /// Busiest worker's requests over the mean (1.0: perfectly even).
    pub fn max_over_mean(&self) -> f64 {
        if self.mean_per_worker > 0.0 {
            self.max_per_worker as f64 / self.mean_per_worker
        } else {
            0.0
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The summaries, by rate (as swept), then policy (as given).
pub fn summarize(report: &Report) -> Vec<Summary> {
    let mut out = Vec::new();
    for rate in pass_rates(&report.rates) {
        for policy in &report.policies {
            let recs: Vec<_> =
                report.records.iter().filter(|r| &r.policy == policy && r.rate == rate).collect();
            let ok: Vec<_> = recs.iter().filter(|r| r.error.is_none() && r.status == 200).collect();
            let lat = sorted(ok.iter().map(|r| r.latency_ms).collect());
            let ttft = sorted(ok.iter().filter_map(|r| r.ttft_ms).collect());
            let tpot = sorted(
                // A response-cache hit arrives whole: it has no time per token.
                ok.iter()
                    .filter(|r| r.completion_tokens >= 2 && !r.cache_hit)
                    .filter_map(|r| {
                        Some((r.latency_ms - r.ttft_ms?) / (r.completion_tokens - 1) as f64)
                    })
                    .collect(),
            );
            let route = sorted(ok.iter().filter_map(|r| r.route_us.map(|u| u as f64)).collect());
            let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &ok {
                *per_worker.entry(r.worker.as_str()).or_default() += 1;
            }
            let prompt: usize = ok.iter().map(|r| r.prompt_tokens).sum();
            let cached: usize = ok.iter().map(|r| r.cached_tokens).sum();
            let transferred: usize = ok.iter().map(|r| r.transferred_tokens).sum();
            let hits = ok.iter().filter(|r| r.cache_hit).count();
            let passes: Vec<_> =
                report.passes.iter().filter(|p| &p.policy == policy && p.rate == rate).collect();
            let secs: f64 = passes.iter().map(|p| p.seconds).sum();
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let workers = report.workers.max(per_worker.len());
            out.push(Summary {
                policy: policy.clone(),
                rate,
                passes: passes.len(),
                requests: recs.len(),
                errors: recs.len() - ok.len(),
                mean_ms: ratio(lat.iter().sum(), lat.len() as f64),
                p50_ms: pct(&lat, 0.5),
                p95_ms: pct(&lat, 0.95),
                p99_ms: pct(&lat, 0.99),
                ttft_p50_ms: pct(&ttft, 0.5),
                ttft_p90_ms: pct(&ttft, 0.9),
                ttft_p99_ms: pct(&ttft, 0.99),
                tpot_p50_ms: (!tpot.is_empty()).then(|| pct(&tpot, 0.5)),
                throughput_rps: ratio(ok.len() as f64, secs),
                response_hit_rate: ratio(hits as f64, recs.len() as f64),
                prefix_token_hit_rate: ratio(cached as f64, prompt as f64),
                prefix_token_transferred_rate: ratio(transferred as f64, prompt as f64),
                max_per_worker: per_worker.values().copied().max().unwrap_or(0),
                mean_per_worker: ratio(ok.len() as f64, workers as f64),
                route_p50_us: (!route.is_empty()).then(|| pct(&route, 0.5)),
                route_p99_us: (!route.is_empty()).then(|| pct(&route, 0.99)),
            });
        }
    }
    out
}

/// TTFT p90 at or under which a rate counts as sustained, with no failed request.
pub const SUSTAINED_TTFT_P90_MS: f64 = 2000.0;

/// Each policy's highest swept rate that it sustained (TTFT p90 ≤ 2 s, no failed or
/// refused request), `None` if it sustained none; in the order of `report.policies`.
pub fn sustained(report: &Report, summaries: &[Summary]) -> Vec<(String, Option<f64>)> {
    report
        .policies
        .iter()
        .map(|p| {
            let best = summaries
                .iter()
                .filter(|m| &m.policy == p && m.errors == 0 && m.requests > 0)
                .filter(|m| m.ttft_p90_ms <= SUSTAINED_TTFT_P90_MS)
                .filter_map(|m| m.rate)
                .fold(None, |acc: Option<f64>, r| Some(acc.map_or(r, |a| a.max(r))));
            (p.clone(), best)
        })
        .collect()
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The summary table (Markdown, also readable in a terminal).
pub fn table(report: &Report, summaries: &[Summary]) -> String {
    let mut s = String::new();
    let o = &report.oracle;
    let _ = writeln!(
        s,
        "| policy | rate req/s | requests | errors | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | TPOT p50 ms | latency p50 ms | latency p99 ms | req/s | prefix-token hits (oracle {:.1}%) | pulled from another worker | response hits (oracle {:.1}%) | max / mean per worker | route µs p50 / p99 |",
        o.prefix_token_hit_rate * 100.0,
        o.response_hit_rate * 100.0,
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {:.1}% | {:.1}% | {:.1}% | {} / {:.1} ({:.2}) | {} / {} |",
            m.policy,
            opt(m.rate, 2),
            m.requests,
            m.errors,
            m.ttft_p50_ms,
            m.ttft_p90_ms,
            m.ttft_p99_ms,
            opt(m.tpot_p50_ms, 1),
            m.p50_ms,
            m.p99_ms,
            m.throughput_rps,
            m.prefix_token_hit_rate * 100.0,
            m.prefix_token_transferred_rate * 100.0,
            m.response_hit_rate * 100.0,
            m.max_per_worker,
            m.mean_per_worker,
            m.max_over_mean(),
            opt(m.route_p50_us, 0),
            opt(m.route_p99_us, 0),
        );
    }
    if report.rates.len() > 1 {
        let _ = writeln!(
            s,
            "\nHighest sustained rate (TTFT p90 ≤ {:.0} s, no failed or refused request):",
            SUSTAINED_TTFT_P90_MS / 1e3
        );
        for (p, r) in sustained(report, summaries) {
            let _ = writeln!(
                s,
                "- {p}: {}",
                r.map_or("none of the rates".into(), |r| format!("{r} req/s"))
            );
        }
    }
    s
}

/// Writes `report.json`, `report.md` and `chart.svg` into `dir`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<Vec<Summary>> {
    std::fs::create_dir_all(dir)?;
    let summaries = summarize(report);
    let json = serde_json::json!({"summary": summaries, "report": report});
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = String::new();
    let _ = writeln!(md, "# locus bench\n");
    let _ = writeln!(
        md,
        "Workload `{}`, seed {}, {} workers (0: not known), {} requests per pass, {} round(s) with the policies in turn, caches flushed before each pass, {}.\n",
        report.workload,
        report.seed,
        report.workers,
        report.requests,
        report.passes.iter().map(|p| p.round + 1).max().unwrap_or(0),
        if report.warm { "after one unrecorded warm-up pass" } else { "cold (no warm-up)" }
    );
    md.push_str(&table(report, &summaries));
    let _ = writeln!(md, "\n![latency CDF and hit rates](chart.svg)");
    if report.rates.len() > 1 {
        let _ = writeln!(md, "\n![TTFT p90 against offered rate](sweep.svg)");
        sweep_chart(report, &summaries, &dir.join("sweep.svg"))?;
    }
    std::fs::write(dir.join("report.md"), md)?;
    chart(report, &summaries, &dir.join("chart.svg"))?;
    Ok(summaries)
}

fn chart(report: &Report, _summaries: &[Summary], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_ms = report.records.iter().map(|r| r.latency_ms).fold(1.0, f64::max);
    let mut cdf = ChartBuilder::on(&left)
        .caption("latency CDF (all rates and rounds)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(0.0..max_ms * 1.05, 0.0..1.0)?;
    cdf.configure_mesh().x_desc("latency (ms)").y_desc("fraction of requests").draw()?;
    for (i, policy) in report.policies.iter().enumerate() {
        let mut lat: Vec<f64> = report
            .records
            .iter()
            .filter(|r| &r.policy == policy && r.error.is_none())
            .map(|r| r.latency_ms)
            .collect();
        lat.sort_by(f64::total_cmp);
        let n = lat.len().max(1) as f64;
        let color = Palette99::pick(i).to_rgba();
        cdf.draw_series(LineSeries::new(
            lat.iter().enumerate().map(|(k, &x)| (x, (k + 1) as f64 / n)),
            color.stroke_width(2),
        ))?
        .label(policy.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    cdf.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;

    // Prefix-token hit rate per policy, and the oracle's as the last bar.
    // Over all rates: each policy's prompt tokens served from cache.
    let mut bars: Vec<(String, f64)> = report
        .policies
        .iter()
        .map(|p| {
            let ok = report.records.iter().filter(|r| &r.policy == p && r.error.is_none());
            let (c, t) = ok.fold((0, 0), |(c, t), r| (c + r.cached_tokens, t + r.prompt_tokens));
            (p.clone(), if t > 0 { c as f64 / t as f64 } else { 0.0 })
        })
        .collect();
    bars.push(("oracle".into(), report.oracle.prefix_token_hit_rate));
    let mut hit = ChartBuilder::on(&right)
        .caption("prefix-token hit rate", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..1.0)?;
    let names = bars.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    hit.configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    hit.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let color = if i + 1 == bars.len() { BLACK.mix(0.4) } else { Palette99::pick(i).mix(0.8) };
        Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)],
            color.filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// TTFT p90 against offered rate, one line per policy (log scale), with the sustained
/// threshold drawn across.
fn sweep_chart(report: &Report, summaries: &[Summary], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let rates = || report.rates.iter().copied();
    let (lo, hi) = (rates().fold(f64::MAX, f64::min), rates().fold(0.0, f64::max));
    let top = summaries.iter().map(|m| m.ttft_p90_ms).fold(SUSTAINED_TTFT_P90_MS, f64::max);
    let bottom = summaries.iter().map(|m| m.ttft_p90_ms).filter(|v| *v > 0.0).fold(top, f64::min);
    let mut c = ChartBuilder::on(&root)
        .caption("TTFT p90 against offered rate", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (lo * 0.9)..(hi * 1.05),
            ((bottom * 0.8).max(1.0)..(top * 1.3)).log_scale(),
        )?;
    c.configure_mesh().x_desc("offered rate (requests/s)").y_desc("TTFT p90 (ms)").draw()?;
    c.draw_series(LineSeries::new(
        [(lo * 0.9, SUSTAINED_TTFT_P90_MS), (hi * 1.05, SUSTAINED_TTFT_P90_MS)],
        BLACK.mix(0.4).stroke_width(1),
    ))?
    .label("sustained limit")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.4)));
    for (i, policy) in report.policies.iter().enumerate() {
        let pts: Vec<(f64, f64)> = summaries
            .iter()
            .filter(|m| &m.policy == policy && m.requests > 0)
            .filter_map(|m| Some((m.rate?, m.ttft_p90_ms.max(1.0))))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(policy.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        c.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
