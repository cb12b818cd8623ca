//! `locus policy report`'s table: a trial's two sides, row by row, from the JSON of
//! `GET /admin/policy/trial` (so the CLI reads what any other client of the API reads).

use std::fmt::Write as _;

use serde_json::Value;

/// Renders a trial report (the `trial` member of `GET /admin/policy/trial`). A value the
/// report does not have is shown as `-`.
pub fn render_trial(t: &Value) -> String {
    let mut out = String::new();
    let mode = match t["mode"].as_str() {
        Some("canary") => format!("canary, {}% of requests", t["percent"].as_f64().unwrap_or(0.0)),
        Some(m) => m.to_string(),
        None => "trial".into(),
    };
    let secs = t["running_s"].as_f64().unwrap_or(0.0);
    match t.get("ended").filter(|e| !e.is_null()) {
        Some(e) => {
            let _ = writeln!(
                out,
                "{mode}: {} by {} after {secs:.1} s: {}",
                e["how"].as_str().unwrap_or("ended"),
                e["who"].as_str().unwrap_or("?"),
                e["why"].as_str().unwrap_or("")
            );
        }
        None => {
            let _ = writeln!(out, "{mode}: running for {secs:.1} s");
        }
    }
    let policy = |p: &Value| {
        let sha = p["sha256"].as_str().unwrap_or("");
        format!("{} ({})", p["name"].as_str().unwrap_or("?"), &sha[..sha.len().min(12)])
    };
    let pct = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{:.1}%", x * 100.0));
    let num = |v: &Value| v.as_u64().map_or("-".into(), |x| x.to_string());
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    let ratio = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let (l, c) = (&t["live"], &t["candidate"]);
    let shadow = t["mode"] == "shadow";
    let mut rows: Vec<(&str, String, String)> = vec![
        ("policy", policy(&t["live_policy"]), policy(&t["candidate_policy"])),
        ("decisions", num(&l["decisions"]), num(&c["decisions"])),
    ];
    if shadow {
        rows.push(("agreement", String::new(), pct(&t["agreement"])));
        rows.push((
            "predicted prefix-block hits",
            pct(&l["predicted_hit_rate"]),
            pct(&c["predicted_hit_rate"]),
        ));
    }
    rows.extend([
        ("load max / mean", ratio(&l["load_max_over_mean"]), ratio(&c["load_max_over_mean"])),
        (
            "fallbacks",
            format!("{} ({})", num(&l["fallbacks"]), pct(&l["fallback_rate"])),
            format!("{} ({})", num(&c["fallbacks"]), pct(&c["fallback_rate"])),
        ),
        ("requests", num(&l["requests"]), num(&c["requests"])),
        ("errors", num(&l["errors"]), num(&c["errors"])),
        ("prefix-token hits", pct(&l["hit_rate"]), pct(&c["hit_rate"])),
        ("window: requests", num(&l["window_requests"]), num(&c["window_requests"])),
        ("window: error rate", pct(&l["window_error_rate"]), pct(&c["window_error_rate"])),
        ("window: fallback rate", pct(&l["window_fallback_rate"]), pct(&c["window_fallback_rate"])),
        ("window: TTFT p50 ms", ms(&l["ttft_p50_ms"]), ms(&c["ttft_p50_ms"])),
        ("window: TTFT p90 ms", ms(&l["ttft_p90_ms"]), ms(&c["ttft_p90_ms"])),
    ]);
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let _ = writeln!(out, "{:w0$}  {:w1$}  candidate", "", "live");
    for (name, a, b) in rows {
        let _ = writeln!(out, "{name:w0$}  {a:w1$}  {b}");
    }
    if shadow {
        let _ =
            writeln!(out, "route calls the shadow skipped (queue full): {}", num(&t["skipped"]));
    }
    out
}
