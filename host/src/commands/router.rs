//! `locus router`: the gateway, serving until a signal, then drained.

use std::net::SocketAddr;

use crate::cli::RouterArgs;
use locus::router;

/// Starts the router and its admin API, and drains on SIGTERM or Ctrl-C; a second signal
/// ends the drain at once.
pub async fn serve(a: RouterArgs) -> anyhow::Result<()> {
    let (delay, grace) = a.shutdown.times()?;
    let options = a.options()?;
    let mut found = options.workers.clone();
    found.extend(options.discover.iter().map(ToString::to_string));
    let (addr, admin, gw) =
        router::spawn(options, SocketAddr::new(a.host, a.port), a.admin_addr).await?;
    println!(
        "locus router listening on http://{addr} (admin http://{admin}), policy {}, workers {}",
        gw.policy().info().name,
        found.join(",")
    );
    let signal = locus::serve::shutdown_signal().await?;
    tracing::info!(%signal, delay_s = delay.as_secs_f64(), grace_s = grace.as_secs_f64(), "draining");
    tokio::select! {
        done = gw.drain(delay, grace) => if !done {
            tracing::warn!("requests still in flight after the grace period; exiting");
        },
        s = locus::serve::shutdown_signal() => {
            tracing::warn!(signal = %s?, "second signal; exiting without waiting");
        }
    }
    Ok(())
}
