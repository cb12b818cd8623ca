//! `locus policy report`'s table: a trial's two sides, row by row, from the report that
//! `GET /admin/policy/trial` answers (so the CLI reads what any other client of the API
//! reads).

use std::fmt::Write as _;

use super::report::{SideReport, TrialReport};
use super::rules::TrialMode;
use crate::info::PolicyInfo;

/// Renders a trial report. A value the report does not have is shown as `-`.
pub fn render_trial(t: &TrialReport) -> String {
    let mut out = String::new();
    let mode = match t.mode {
        TrialMode::Canary { percent } => format!("canary, {percent}% of requests"),
        TrialMode::Shadow => "shadow".into(),
    };
    let secs = t.running_s;
    let _ = match &t.ended {
        Some(e) => {
            writeln!(out, "{mode}: {} by {} after {secs:.1} s: {}", e.how.name(), e.who, e.why)
        }
        None => writeln!(out, "{mode}: running for {secs:.1} s"),
    };
    let policy = |p: &PolicyInfo| format!("{} ({})", p.name, &p.sha256[..p.sha256.len().min(12)]);
    let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
    let ratio = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
    let (l, c) = (&t.live, &t.candidate);
    let both = |f: &dyn Fn(&SideReport) -> String| (f(l), f(c));
    let row = |name, f: &dyn Fn(&SideReport) -> String| {
        let (a, b) = both(f);
        (name, a, b)
    };
    let shadow = t.mode == TrialMode::Shadow;
    let mut rows: Vec<(&str, String, String)> = vec![
        ("policy", policy(&t.live_policy), policy(&t.candidate_policy)),
        row("decisions", &|s| s.decisions.to_string()),
    ];
    if shadow {
        rows.push(("agreement", String::new(), pct(t.agreement)));
        rows.push(row("predicted prefix-block hits", &|s| pct(s.predicted_hit_rate)));
    }
    rows.extend([
        row("load max / mean", &|s| ratio(s.load_max_over_mean)),
        row("fallbacks", &|s| format!("{} ({})", s.fallbacks, pct(s.fallback_rate))),
        row("requests", &|s| s.requests.to_string()),
        row("errors", &|s| s.errors.to_string()),
        row("prefix-token hits", &|s| pct(s.hit_rate)),
        row("window: requests", &|s| s.window_requests.to_string()),
        row("window: error rate", &|s| pct(s.window_error_rate)),
        row("window: fallback rate", &|s| pct(s.window_fallback_rate)),
        row("window: TTFT p50 ms", &|s| ms(s.ttft_p50_ms)),
        row("window: TTFT p90 ms", &|s| ms(s.ttft_p90_ms)),
    ]);
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let _ = writeln!(out, "{:w0$}  {:w1$}  candidate", "", "live");
    for (name, a, b) in rows {
        let _ = writeln!(out, "{name:w0$}  {a:w1$}  {b}");
    }
    if shadow {
        let _ = writeln!(out, "route calls the shadow skipped (queue full): {}", t.skipped);
    }
    out
}
