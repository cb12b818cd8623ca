//! The accept loop: connections served with hyper under the head deadline, until a graceful
//! shutdown; and the signals that start one.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::limits::ServeLimits;
use super::write_deadline::WriteDeadline;

/// Serves `app` over HTTP/1.1 on `listener` under `limits` until `shutdown` resolves.
///
/// A client that trickles its head, or leaves a keep-alive connection idle, is dropped
/// after `header_read_timeout` (hyper's own timer); one that stops reading an answer, after
/// `write_timeout`. At most `max_connections` are served at once: past it, the loop stops
/// accepting until one closes. Bodies are limited by the routes' own
/// [`limit_bodies`](super::limit_bodies) (this applies none): there a trickled body gets 408 after
/// `body_read_timeout` and one over the limit 413 (at once when `Content-Length` says so),
/// and handlers see the whole body, buffered.
///
/// On `shutdown`: stops accepting, closes idle connections, lets requests in flight
/// finish and returns when every connection is gone. Accept errors are logged and
/// retried, as `axum::serve` does.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1) as usize));
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some to free up.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        // Without it, each piece of an answer after the first (SSE events) waits for the
        // client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(WriteDeadline::new(tcp, limits.write_timeout));
        let conn = graceful.watch(http.serve_connection(io, app.clone()));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM (what `docker stop` and Kubernetes send) or SIGINT (Ctrl-C) and
/// names the one that came.
pub async fn shutdown_signal() -> io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
