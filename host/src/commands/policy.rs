//! `locus policy`: list the built-in policies, inspect one, or report on a router's
//! policy trial.

use std::process::ExitCode;

use locus::admin_client::AdminClient;
use locus_policy::{self as policy, LoadOptions, PolicySource};

/// `locus policy list`: the built-in policies' names, one a line.
pub fn list() -> ExitCode {
    for name in policy::builtin_names() {
        println!("{name}");
    }
    ExitCode::SUCCESS
}

/// `locus policy inspect`: loads the policy as a swap would and reports on it. Exits 2 if
/// `policy` names none, 1 if locus cannot use it.
pub fn inspect(policy: &str, settings: Vec<(String, String)>) -> ExitCode {
    let source = match PolicySource::parse(policy) {
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

/// `locus policy report`: the router's trial side by side, then its last policy changes.
pub async fn report(
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
