//! `locus worker`: one model served over HTTP until a signal, then drained.

use std::net::SocketAddr;

use crate::cli::WorkerArgs;
use crate::commands::ids::host_name;
use locus::{cluster, worker};

/// Loads the model, serves it, and drains on SIGTERM or Ctrl-C.
pub async fn serve(a: WorkerArgs) -> anyhow::Result<()> {
    let source = a.model.source()?;
    let engines = cluster::load_engines(&source, 1, a.model.engine_options()?).await?;
    let engine = engines.into_iter().next().expect("one engine");
    tracing::info!(model = %engine.describe(), "model loaded");
    let (delay, grace) = a.shutdown.times()?;
    let options = a.options(host_name)?;
    let handle = worker::spawn(engine, options, SocketAddr::new(a.host, a.port)).await?;
    println!(
        "locus worker {} listening on http://{}",
        handle.worker.options().worker_id,
        handle.addr
    );
    handle.until_signal(delay, grace).await?;
    Ok(())
}
