//! `locus probe`: a container health check that needs no shell or curl.

use crate::cli::ProbeArgs;

/// Succeeds if the URL answers 2xx within the timeout.
pub async fn probe(a: ProbeArgs) -> anyhow::Result<()> {
    let timeout = std::time::Duration::try_from_secs_f64(a.timeout_s)
        .map_err(|_| anyhow::anyhow!("--timeout-s must be a non-negative number of seconds"))?;
    let r = reqwest::Client::new().get(&a.url).timeout(timeout).send().await?;
    anyhow::ensure!(r.status().is_success(), "{} answered {}", a.url, r.status());
    Ok(())
}
