//! Serving a [`Router`] with the limits `axum::serve` lacks: a deadline for the request
//! head (which is also how long an idle keep-alive connection is kept), a deadline for the
//! body and a body size limit checked before the body is read.
//!
//! A client that sends slowly holds no worker: until its head and body are complete it is
//! only a connection (a socket and a small task), and the handler runs once the whole body
//! is buffered. The deadlines bound how long such a connection may exist.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::http::ApiError;

/// Limits every connection and request of a server gets.
///
/// Also the servers' flags (`--header-timeout-s`, `--body-timeout-s`, `--max-body-bytes`):
/// their defaults are read from [`Default`], so that each value is written once.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeLimits {
    /// Whole request head (request line + headers) must arrive within this, counted from
    /// the connection's accept or the end of its previous answer: an idle keep-alive
    /// connection is closed after it too (hyper counts the wait and the head as one).
    #[arg(
        long = "header-timeout-s",
        value_name = "HEADER_TIMEOUT_S",
        help = "Seconds a client has to send a request's head (request line and headers), \
                counted from the connection's start or the end of its previous answer: an \
                idle keep-alive connection is closed after this too",
        value_parser = whole_seconds_from_one(),
        default_value = ServeLimits::default().header_read_timeout.as_secs().to_string()
    )]
    pub header_read_timeout: Duration,
    /// Whole request body must arrive within this once the head is read.
    #[arg(
        long = "body-timeout-s",
        value_name = "BODY_TIMEOUT_S",
        help = "Seconds a client has to send a request's body once its head has arrived \
                (slower clients get 408 and the connection is closed)",
        value_parser = whole_seconds_from_one(),
        default_value = ServeLimits::default().body_read_timeout.as_secs().to_string()
    )]
    pub body_read_timeout: Duration,
    /// Largest request body accepted, in bytes (callers pass a larger one for admin
    /// uploads).
    #[arg(
        long,
        help = "Largest request body in bytes (larger ones get 413 before they are read)",
        value_parser = bytes_from_a_kilobyte(),
        default_value_t = ServeLimits::default().max_body_bytes
    )]
    pub max_body_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
        }
    }
}

/// A byte count from a flag, raised to a kilobyte rather than refused: a smaller limit
/// would refuse nearly every request.
fn bytes_from_a_kilobyte() -> impl clap::builder::TypedValueParser<Value = usize> {
    clap::builder::TypedValueParser::map(|s: &str| s.parse::<usize>(), |n| n.max(1024))
}

/// A flag's whole seconds, raised to one: a zero deadline would drop every client.
fn whole_seconds_from_one() -> impl clap::builder::TypedValueParser<Value = Duration> {
    clap::builder::TypedValueParser::map(
        <u64 as clap::builder::ValueParserFactory>::value_parser(),
        |s| Duration::from_secs(s.max(1)),
    )
}

/// Serves `app` over HTTP/1.1 on `listener` under `limits` until `shutdown` resolves.
///
/// A client that trickles its head, or leaves a keep-alive connection idle, is dropped
/// after `header_read_timeout` (hyper's own timer). Bodies are limited by the routes' own
/// [`limit_bodies`] (this applies none): there a trickled body gets 408 after
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
    loop {
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
        let conn = graceful.watch(http.serve_connection(TokioIo::new(tcp), app.clone()));
        tokio::spawn(async move {
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

/// Buffers the body of every request to `router`'s routes under `max` bytes and
/// `limits.body_read_timeout` before its handler runs (see [`serve`]). Applied per group
/// of routes, so that an upload endpoint can take more than the API endpoints.
pub fn limit_bodies<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limits: &ServeLimits,
    max: usize,
) -> Router<S> {
    let limits = ServeLimits { max_body_bytes: max, ..limits.clone() };
    router
        .layer(from_fn_with_state(limits, buffer_body))
        // The body is buffered and limited above; `Bytes` and friends must not apply
        // axum's own 2 MB default on top.
        .layer(DefaultBodyLimit::max(max))
}

/// Reads the whole body under `max_body_bytes` and `body_read_timeout` before the
/// handler runs, so that limits answer in the API's error shape and a slow body never
/// reaches a handler.
async fn buffer_body(State(limits): State<ServeLimits>, req: Request, next: Next) -> Response {
    let max = limits.max_body_bytes;
    let declared = content_length(req.headers());
    if let Some(len) = declared.filter(|&len| len > max as u64) {
        return closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is {len} bytes; the limit is {max} bytes (max_body_bytes)"),
        );
    }
    let (parts, body) = req.into_parts();
    // `declared` is at most `max` here; the buffer grows as bytes arrive rather than being
    // reserved on the client's word.
    let capacity = declared.map_or(0, |len| (len as usize).min(64 << 10));
    // Most bodies arrive with their head: read them without arming a timer.
    let mut read = std::pin::pin!(read_body(body, max, capacity));
    let read = match futures_util::FutureExt::now_or_never(&mut read) {
        Some(done) => Ok(done),
        None => tokio::time::timeout(limits.body_read_timeout, read).await,
    };
    match read {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(BodyError::TooLarge)) => closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {max} bytes (max_body_bytes)"),
        ),
        Ok(Err(BodyError::Read(e))) => {
            closing(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
        }
        Err(_) => closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body did not arrive within {:?} (body_read_timeout)",
                limits.body_read_timeout
            ),
        ),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

async fn read_body(body: Body, max: usize, capacity: usize) -> Result<Bytes, BodyError> {
    let mut chunks = body.into_data_stream();
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// An API error after which the connection closes: the rest of the body is unread, so
/// the connection cannot carry another request. (If the client is already gone, hyper
/// fails to write this and drops the connection.)
fn closing(status: StatusCode, message: String) -> Response {
    let mut response = ApiError::new(status, message).into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use serde_json::Value;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn limits(header: u32, body: u32, max: usize) -> ServeLimits {
        ServeLimits {
            header_read_timeout: header * MS,
            body_read_timeout: body * MS,
            max_body_bytes: max,
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        done: JoinHandle<io::Result<()>>,
    }

    async fn start(app: Router, limits: ServeLimits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = limit_bodies(app, &limits, limits.max_body_bytes);
        let done = tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, done }
    }

    fn echo_app() -> Router {
        Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/ok", get(|| async { "ok" }))
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }
    }

    /// Reads one response with a `Content-Length` body.
    async fn read_reply(tcp: &mut TcpStream) -> Reply {
        let read = async {
            let mut buf = Vec::new();
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed before a response: {buf:?}");
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .expect("content-length");
            let mut body = buf[head_end..].to_vec();
            while body.len() < len {
                let mut chunk = vec![0u8; 65536];
                let n = tcp.read(&mut chunk).await.expect("read");
                assert!(n > 0, "connection closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
            Reply { status, headers, body }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("a response in time")
    }

    /// Waits for the server to close `tcp`, returning the bytes it sent first.
    async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
        let read = async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("closed in time")
    }

    fn assert_api_error(reply: &Reply, status: u16, contains: &[&str]) {
        assert_eq!(reply.status, status);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("connection"), Some("close"));
        let json = reply.json();
        let message = json["error"]["message"].as_str().expect("error.message");
        for part in contains {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["param"].is_null(), "param: {}", json["error"]["param"]);
    }

    #[tokio::test]
    async fn slow_header_is_dropped_after_header_read_timeout() {
        const HEAD: &[u8] =
            b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let server = start(echo_app(), limits(300, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        let (mut rd, mut wr) = tcp.split();
        let trickle = async {
            for byte in HEAD {
                if wr.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(50 * MS).await;
            }
            // Closed: the read below says so.
            std::future::pending::<()>().await;
        };
        let closed = async {
            let mut buf = [0u8; 256];
            let got = rd.read(&mut buf).await;
            (started.elapsed(), got)
        };
        let (elapsed, got) = tokio::select! {
            () = trickle => unreachable!(),
            closed = closed => closed,
        };
        assert!(matches!(got, Ok(0) | Err(_)), "expected a close, got {got:?}");
        assert!(elapsed >= 280 * MS && elapsed < 1500 * MS, "closed after {elapsed:?}");
    }

    #[tokio::test]
    async fn silent_new_connection_is_dropped_after_header_read_timeout() {
        let server = start(echo_app(), limits(300, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        assert!(read_to_close(&mut tcp).await.is_empty());
        let elapsed = started.elapsed();
        assert!(elapsed >= 280 * MS && elapsed < 1500 * MS, "closed after {elapsed:?}");
    }

    #[tokio::test]
    async fn slow_body_gets_408_json() {
        let server = start(echo_app(), limits(5000, 300, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let started = Instant::now();
        let reply = read_reply(&mut tcp).await;
        let elapsed = started.elapsed();
        assert_api_error(&reply, 408, &["body_read_timeout", "300ms"]);
        assert!(elapsed >= 280 * MS && elapsed < 1500 * MS, "answered after {elapsed:?}");
        assert!(read_to_close(&mut tcp).await.is_empty());
    }

    #[tokio::test]
    async fn content_length_over_limit_gets_413_before_any_body_byte() {
        // A long body deadline: the answer must not wait for it.
        let server = start(echo_app(), limits(5000, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let reply = read_reply(&mut tcp).await;
        assert!(started.elapsed() < 1500 * MS, "answered after {:?}", started.elapsed());
        assert_api_error(&reply, 413, &["1000000", "1024 bytes", "max_body_bytes"]);
    }

    #[tokio::test]
    async fn chunked_body_over_limit_gets_413() {
        let server = start(echo_app(), limits(5000, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut request =
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..2 {
            request.extend_from_slice(format!("{:x}\r\n", 600).as_bytes());
            request.extend_from_slice(&[b'a'; 600]);
            request.extend_from_slice(b"\r\n");
        }
        // No last chunk: the answer must come from the size, not the end of the body.
        tcp.write_all(&request).await.unwrap();
        let reply = read_reply(&mut tcp).await;
        assert_api_error(&reply, 413, &["1024 bytes", "max_body_bytes"]);
    }

    #[tokio::test]
    async fn idle_keep_alive_connection_is_closed_after_the_head_deadline() {
        let server = start(echo_app(), limits(300, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tcp).await.body, b"ok");
        // A next request within the deadline is served on the same connection...
        tokio::time::sleep(150 * MS).await;
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tcp).await.body, b"ok");
        let idle_since = Instant::now();
        // ...and the connection is closed once idle for the deadline.
        assert!(read_to_close(&mut tcp).await.is_empty());
        let idle = idle_since.elapsed();
        assert!(idle >= 250 * MS && idle < 2000 * MS, "closed after {idle:?} idle");
    }

    #[tokio::test]
    async fn full_body_reaches_the_handler() {
        // Over axum's own 2 MB default, under ours.
        let limit = 3 << 20;
        let server = start(echo_app(), limits(5000, 5000, limit)).await;
        let body: Vec<u8> = (0..(5 << 19)).map(|i: u32| (i % 251) as u8).collect();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();

        let head =
            format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        let reply = read_reply(&mut tcp).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == body, "echoed {} of {} bytes", reply.body.len(), body.len());

        // A chunked body, in pieces, on the same kept-alive connection.
        tcp.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for piece in [&b"hello, "[..], b"chunked ", b"world"] {
            tcp.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
            tcp.write_all(piece).await.unwrap();
            tcp.write_all(b"\r\n").await.unwrap();
            tokio::time::sleep(20 * MS).await;
        }
        tcp.write_all(b"0\r\n\r\n").await.unwrap();
        let reply = read_reply(&mut tcp).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"hello, chunked world");
    }

    #[tokio::test]
    async fn graceful_shutdown_waits_for_the_request_in_flight() {
        let (entered_tx, entered) = oneshot::channel::<()>();
        let entered_tx = Arc::new(Mutex::new(Some(entered_tx)));
        let app = echo_app().route(
            "/slow",
            get(move || {
                let entered_tx = entered_tx.clone();
                async move {
                    if let Some(tx) = entered_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "done"
                }
            }),
        );
        let server = start(app, limits(5000, 5000, 1024)).await;

        // An idle kept-alive connection, a connection that never spoke, and one in flight.
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut idle).await.body, b"ok");
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        entered.await.unwrap();

        let stop_at = Instant::now();
        server.stop.send(()).unwrap();
        assert!(read_to_close(&mut idle).await.is_empty());
        assert!(read_to_close(&mut silent).await.is_empty());
        assert!(stop_at.elapsed() < 300 * MS, "idle connections closed only after the request");
        assert!(!server.done.is_finished(), "returned with a request in flight");
        assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting");

        let reply = read_reply(&mut busy).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"done");
        assert!(read_to_close(&mut busy).await.is_empty());
        let done = tokio::time::timeout(Duration::from_secs(5), server.done).await;
        done.expect("serve returned").unwrap().unwrap();
    }
}
