//! `locus swap`: change a running router's routing policy (at once, as a shadow or a
//! canary, or end a trial) or a worker's cache policy, through their admin APIs.

use crate::cli::SwapArgs;
use crate::commands::ids::default_actor;
use locus::admin_client::AdminClient;

/// Asks the router (or worker) to change its policy, and prints its answer.
pub async fn swap(a: SwapArgs) -> anyhow::Result<()> {
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
