//! A running worker: start serving one on an address, stop it, or drain it on a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use locus_engine::Engine;
use tokio::net::TcpListener;

use super::options::WorkerOptions;
use super::state::Worker;
use crate::serve::serve;

/// A running worker.
pub struct WorkerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Its state.
    pub worker: Arc<Worker>,
}

impl WorkerHandle {
    /// Stops accepting connections, lets in-flight requests finish, closes idle
    /// connections, and waits until the listener is gone.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Serves until SIGTERM or Ctrl-C, then drains: `/health` fails at once while the
    /// worker goes on serving for `delay` (time for load balancers and DNS to take it out
    /// of rotation), then it stops accepting connections, refuses requests that still
    /// arrive on open ones (503, which a router retries elsewhere) and gives those in
    /// flight up to `grace` to finish. A second signal ends it at once.
    pub async fn until_signal(mut self, delay: Duration, grace: Duration) -> std::io::Result<()> {
        let signal = tokio::select! {
            r = &mut self.task => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            s = crate::serve::shutdown_signal() => s?,
        };
        let in_flight = self
            .worker
            .options
            .max_queue
            .max(1)
            .saturating_sub(self.worker.queue.available_permits());
        tracing::info!(%signal, in_flight, delay_s = delay.as_secs_f64(), grace_s = grace.as_secs_f64(), "draining");
        self.worker.draining.store(true, Ordering::Relaxed);
        let worker = self.worker.clone();
        let drain = async move {
            tokio::time::sleep(delay).await;
            worker.refusing.store(true, Ordering::Relaxed);
            match tokio::time::timeout(grace, self.stop()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("requests still in flight after the grace period; exiting");
                    Ok(())
                }
            }
        };
        tokio::select! {
            r = drain => r,
            s = crate::serve::shutdown_signal() => {
                tracing::warn!(signal = %s?, "second signal; exiting without waiting");
                Ok(())
            }
        }
    }
}

/// Serves a worker for `engine` on `addr` (port 0 picks one).
pub async fn spawn(
    engine: Arc<Engine>,
    options: WorkerOptions,
    addr: SocketAddr,
) -> anyhow::Result<WorkerHandle> {
    let limits = options.limits.clone();
    let worker = Worker::new(engine, options)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let closing = worker.clone();
    crate::serve::spawn_lag_probe(worker.metrics.runtime_lag.clone(), Arc::downgrade(&worker));
    let task = tokio::spawn(serve(listener, worker.router(), limits, async move {
        let _ = stopped.await;
        closing.close_streams();
    }));
    Ok(WorkerHandle { addr: local, stop: Some(stop), task, worker })
}
