//! Starting a router: the listeners, the health checks, the signals, the file watch and
//! discovery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::admin::admin_router;
use super::gateway::Gateway;
use super::options::RouterOptions;
use super::{discovery, signals, watch};
use crate::serve::serve;

/// Binds the public and admin listeners and starts serving, health checks and the file
/// watch. Returns the bound addresses.
pub async fn spawn(
    options: RouterOptions,
    addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, SocketAddr, Arc<Gateway>)> {
    let gw = Gateway::new(options)?;
    // Workers down now are identified by their first load report later.
    signals::identify(&gw, Duration::from_secs(1)).await;
    let listener = TcpListener::bind(addr).await?;
    let admin = TcpListener::bind(admin_addr).await?;
    let (local, admin_local) = (listener.local_addr()?, admin.local_addr()?);
    let limits = gw.options.limits.clone();
    let public = tokio::spawn(serve(listener, gw.router(), limits.clone(), gw.stopped()));
    let admin = tokio::spawn(serve(admin, admin_router(gw.clone()), limits, gw.stopped()));
    gw.served.lock().extend([public, admin]);
    if gw.queueing() {
        let weak = Arc::downgrade(&gw);
        gw.queue.spawn_dispatcher(move || weak.upgrade().map(|g| g.slots()).unwrap_or_default());
    }
    crate::serve::spawn_lag_probe(gw.metrics.runtime_lag.clone(), Arc::downgrade(&gw));
    let interval = gw.options.health_interval.max(Duration::from_millis(10));
    tokio::spawn(gw.registry.clone().health_loop(gw.client.clone(), interval));
    let load_interval = gw.options.load_interval.max(Duration::from_millis(10));
    tokio::spawn(signals::run(Arc::downgrade(&gw), load_interval));
    if let Some(path) = gw.options.watch.clone() {
        watch::watch(gw.clone(), path);
    }
    let discover_interval = gw.options.discover_interval.max(Duration::from_millis(10));
    for source in gw.options.discover.clone() {
        discovery::spawn(&gw, source, discover_interval);
    }
    Ok((local, admin_local, gw))
}
