//! Summaries of a [`Report`], and the files written for it: `report.json`, `report.md`
//! and `chart.svg` (latency CDF per policy; hit rates against the oracle).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::run::Report;

/// One policy's pass, summarized from its records.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The policy.
    pub policy: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
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
    /// 99th percentile time to first token.
    pub ttft_p99_ms: f64,
    /// Answered requests per second of the pass.
    pub throughput_rps: f64,
    /// Answers served whole from a response cache.
    pub response_hit_rate: f64,
    /// Prompt tokens served from a cache.
    pub prefix_token_hit_rate: f64,
    /// Requests on the busiest worker.
    pub max_per_worker: usize,
    /// Mean requests per worker that served any.
    pub mean_per_worker: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The per-policy summaries, in the order run.
pub fn summarize(report: &Report) -> Vec<Summary> {
    report
        .policies
        .iter()
        .enumerate()
        .map(|(i, policy)| {
            let recs: Vec<_> = report.records.iter().filter(|r| &r.policy == policy).collect();
            let ok: Vec<_> = recs.iter().filter(|r| r.error.is_none() && r.status == 200).collect();
            let mut lat: Vec<f64> = ok.iter().map(|r| r.latency_ms).collect();
            lat.sort_by(f64::total_cmp);
            let mut ttft: Vec<f64> = ok.iter().filter_map(|r| r.ttft_ms).collect();
            ttft.sort_by(f64::total_cmp);
            let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &ok {
                *per_worker.entry(r.worker.as_str()).or_default() += 1;
            }
            let prompt: usize = ok.iter().map(|r| r.prompt_tokens).sum();
            let cached: usize = ok.iter().map(|r| r.cached_tokens).sum();
            let hits = ok.iter().filter(|r| r.cache_hit).count();
            let secs = report.pass_seconds.get(i).copied().unwrap_or(0.0);
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            Summary {
                policy: policy.clone(),
                requests: recs.len(),
                errors: recs.len() - ok.len(),
                mean_ms: ratio(lat.iter().sum(), lat.len() as f64),
                p50_ms: pct(&lat, 0.5),
                p95_ms: pct(&lat, 0.95),
                p99_ms: pct(&lat, 0.99),
                ttft_p50_ms: pct(&ttft, 0.5),
                ttft_p99_ms: pct(&ttft, 0.99),
                throughput_rps: ratio(ok.len() as f64, secs),
                response_hit_rate: ratio(hits as f64, recs.len() as f64),
                prefix_token_hit_rate: ratio(cached as f64, prompt as f64),
                max_per_worker: per_worker.values().copied().max().unwrap_or(0),
                mean_per_worker: ratio(ok.len() as f64, per_worker.len() as f64),
            }
        })
        .collect()
}

/// The summary table (Markdown, also readable in a terminal).
pub fn table(report: &Report, summaries: &[Summary]) -> String {
    let mut s = String::new();
    let o = &report.oracle;
    let _ = writeln!(
        s,
        "| policy | requests | errors | mean ms | p50 ms | p95 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | req/s | response hits | prefix-token hits | oracle (response / prefix) | max / mean per worker |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1}% | {:.1}% | {:.1}% / {:.1}% | {} / {:.1} |",
            m.policy,
            m.requests,
            m.errors,
            m.mean_ms,
            m.p50_ms,
            m.p95_ms,
            m.p99_ms,
            m.ttft_p50_ms,
            m.ttft_p99_ms,
            m.throughput_rps,
            m.response_hit_rate * 100.0,
            m.prefix_token_hit_rate * 100.0,
            o.response_hit_rate * 100.0,
            o.prefix_token_hit_rate * 100.0,
            m.max_per_worker,
            m.mean_per_worker,
        );
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
        "Workload `{}`, seed {}, {} requests per policy, caches flushed before each policy, {}.\n",
        report.workload,
        report.seed,
        report.requests,
        if report.warm { "after one unrecorded warm-up pass" } else { "cold (no warm-up)" }
    );
    md.push_str(&table(report, &summaries));
    let _ = writeln!(md, "\n![latency CDF and hit rates](chart.svg)");
    std::fs::write(dir.join("report.md"), md)?;
    chart(report, &summaries, &dir.join("chart.svg"))?;
    Ok(summaries)
}

fn chart(report: &Report, summaries: &[Summary], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_ms = report.records.iter().map(|r| r.latency_ms).fold(1.0, f64::max);
    let mut cdf = ChartBuilder::on(&left)
        .caption("latency CDF", ("sans-serif", 18))
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
    let mut bars: Vec<(String, f64)> =
        summaries.iter().map(|m| (m.policy.clone(), m.prefix_token_hit_rate)).collect();
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
