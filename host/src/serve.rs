//! Serving a [`Router`] with the limits `axum::serve` lacks: a deadline for the request
//! head, a deadline for the body, an idle timeout for keep-alive connections and a body
//! size limit checked before the body is read.
//!
//! A slow client holds no worker: until its head and body are complete it is only a
//! connection (a socket and a small task), and the handler runs once the whole body is
//! buffered. The timeouts bound how long such a connection may exist.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::http::ApiError;

/// Limits every connection and request of a server gets.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Whole request head (request line + headers) must arrive within this, counted from
    /// the connection's accept, or from the first byte of a later request on a keep-alive
    /// connection. Default 10 s.
    pub header_read_timeout: Duration,
    /// Whole request body must arrive within this once the head is read. Default 30 s.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// Largest request body accepted, in bytes. Default 4 MiB (callers pass a larger one
    /// for admin uploads).
    pub max_body_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 4 << 20,
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` under `limits` until `shutdown` resolves.
///
/// A client that trickles its head is dropped after `header_read_timeout`, and an idle
/// keep-alive connection after `idle_timeout`. Bodies are limited by the routes' own
/// [`limit_bodies`] (this applies none): there a trickled body gets 408 after
/// `body_read_timeout` and one over the limit 413 (at once when `Content-Length` says so),
/// and handlers see the whole body, buffered, so a slow client costs a connection, never
/// a running handler.
///
/// On `shutdown`: stops accepting, closes connections with no request under way, lets
/// requests in flight finish (their connections then close) and returns when every
/// connection is gone. Accept errors are logged and retried, as `axum::serve` does.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's timer starts when a connection goes idle, so it would also cut idle
    // keep-alive connections at `header_read_timeout`; `Clock` keeps the two apart.
    http.header_read_timeout(None);

    // Each connection holds a receiver; `closed()` resolves when the last one is dropped.
    let (stop, _) = watch::channel(());
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
        let clock = Arc::new(Clock::new(&limits));
        let io = TokioIo::new(Watched { tcp, clock: clock.clone() });
        let conn =
            http.serve_connection(io, ConnService { app: app.clone(), clock: clock.clone() });
        tokio::spawn(drive(conn, clock, stop.subscribe(), peer));
    }
    drop(listener);
    stop.send_replace(());
    stop.closed().await;
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

type Conn = hyper::server::conn::http1::Connection<TokioIo<Watched>, ConnService>;

/// Runs one connection until hyper ends it, its `Clock` deadline passes, or shutdown
/// finds it between requests.
async fn drive(
    conn: Conn,
    clock: Arc<Clock>,
    mut stop: watch::Receiver<()>,
    peer: std::net::SocketAddr,
) {
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = clock.lock().deadline;
        let expiry = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if matches!(clock.lock().phase, Phase::Waiting { .. }) {
                    return;
                }
                // hyper finishes the request under way, then closes.
                conn.as_mut().graceful_shutdown();
            }
            () = clock.changed.notified() => {}
            () = expiry => {
                let state = clock.lock();
                if state.deadline.is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(%peer, phase = ?state.phase, "connection timed out");
                    return;
                }
            }
        }
    }
}

/// Where a connection is between requests, and when it must be dropped if it stays there.
///
/// `header_read_timeout` and `idle_timeout` are told apart by watching reads: the first
/// byte read while `Waiting` starts the head deadline. The body deadline is not kept
/// here: it belongs to [`buffer_body`], which can answer 408.
struct Clock {
    state: Mutex<ClockState>,
    /// Wakes [`drive`] when the deadline moves.
    changed: Notify,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

struct ClockState {
    phase: Phase,
    /// `None` while requests are under way.
    deadline: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No byte of the next request yet. A new connection's head deadline runs from its
    /// accept (`fresh`); a kept-alive one waits `idle_timeout` for the first byte.
    Waiting { fresh: bool },
    /// Part of a head has arrived.
    Head,
    /// This many requests are being handled or answered.
    Busy(usize),
}

impl Clock {
    fn new(limits: &ServeLimits) -> Self {
        Self {
            state: Mutex::new(ClockState {
                phase: Phase::Waiting { fresh: true },
                deadline: Some(Instant::now() + limits.header_read_timeout),
            }),
            changed: Notify::new(),
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bytes_read(&self) {
        let mut state = self.lock();
        match state.phase {
            Phase::Waiting { fresh: true } => state.phase = Phase::Head,
            Phase::Waiting { fresh: false } => {
                state.phase = Phase::Head;
                state.deadline = Some(Instant::now() + self.header_read_timeout);
                drop(state);
                self.changed.notify_one();
            }
            // Body bytes, or more of a head whose deadline already runs.
            Phase::Head | Phase::Busy(_) => {}
        }
    }

    /// The head was parsed and the handler is called: no deadline until it is answered.
    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.phase = match state.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        state.deadline = None;
        InFlight(self.clone())
    }

    fn request_finished(&self) {
        let mut state = self.lock();
        match state.phase {
            Phase::Busy(n) if n > 1 => state.phase = Phase::Busy(n - 1),
            _ => {
                state.phase = Phase::Waiting { fresh: false };
                state.deadline = Some(Instant::now() + self.idle_timeout);
                drop(state);
                self.changed.notify_one();
            }
        }
    }
}

/// A request from its head until its answer's last byte is handed to hyper.
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The socket, reporting reads to its [`Clock`].
struct Watched {
    tcp: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The app as one connection sees it: each request holds an [`InFlight`] until its
/// answer's body is done.
#[derive(Clone)]
struct ConnService {
    app: TowerToHyperService<Router>,
    clock: Arc<Clock>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.clock.request_started();
        let answer = self.app.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody { body, _in_flight: in_flight }))
        })
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
    // `declared` is at most `max` here.
    // Grown as bytes arrive, not reserved on the client's word.
    let capacity = declared.map_or(0, |len| (len as usize).min(64 << 10));
    match tokio::time::timeout(limits.body_read_timeout, read_body(body, max, capacity)).await {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const MS: Duration = Duration::from_millis(1);

    fn limits(header: u32, body: u32, idle: u32, max: usize) -> ServeLimits {
        ServeLimits {
            header_read_timeout: header * MS,
            body_read_timeout: body * MS,
            idle_timeout: idle * MS,
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
        let server = start(echo_app(), limits(300, 5000, 5000, 1024)).await;
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
        let server = start(echo_app(), limits(300, 5000, 5000, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        assert!(read_to_close(&mut tcp).await.is_empty());
        let elapsed = started.elapsed();
        assert!(elapsed >= 280 * MS && elapsed < 1500 * MS, "closed after {elapsed:?}");
    }

    #[tokio::test]
    async fn slow_body_gets_408_json() {
        let server = start(echo_app(), limits(5000, 300, 5000, 1024)).await;
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
        let server = start(echo_app(), limits(5000, 5000, 5000, 1024)).await;
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
        let server = start(echo_app(), limits(5000, 5000, 5000, 1024)).await;
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
    async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
        // The head deadline is shorter than the idle one, and must not cut an idle wait.
        let server = start(echo_app(), limits(150, 5000, 500, 1024)).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tcp).await.body, b"ok");
        let idle_since = Instant::now();

        // Still open after twice the head deadline...
        tokio::time::sleep(300 * MS).await;
        tcp.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut tcp).await.body, b"ok");
        let idle_since_second = Instant::now();
        assert!(idle_since.elapsed() >= 300 * MS);

        // ...and closed once idle for `idle_timeout`.
        assert!(read_to_close(&mut tcp).await.is_empty());
        let idle = idle_since_second.elapsed();
        assert!(idle >= 480 * MS && idle < 2000 * MS, "closed after {idle:?} idle");
    }

    #[tokio::test]
    async fn full_body_reaches_the_handler() {
        // Over axum's own 2 MB default, under ours.
        let limit = 3 << 20;
        let server = start(echo_app(), limits(5000, 5000, 5000, limit)).await;
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
        let server = start(app, limits(5000, 5000, 5000, 1024)).await;

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
