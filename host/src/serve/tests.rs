//! The server against real sockets: slow heads and bodies, size limits, keep-alive, and a
//! graceful shutdown with a request in flight.

use std::io;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use tokio::net::TcpListener;

use super::bodies::limit_bodies;
use super::limits::ServeLimits;
use super::listen::serve;
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
        ..ServeLimits::default()
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
    const HEAD: &[u8] = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
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

    let head = format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
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

#[tokio::test]
async fn past_max_connections_a_new_one_waits_until_one_closes() {
    let server =
        start(echo_app(), ServeLimits { max_connections: 2, ..limits(5000, 5000, 1024) }).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut c).await.body, b"ok");
        held.push(c);
    }
    // The kernel takes the third connection into its backlog, but no one serves it.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let reply = tokio::spawn(async move { read_reply(&mut third).await });
    tokio::time::sleep(300 * MS).await;
    assert!(!reply.is_finished(), "a third connection was served past the cap");
    drop(held.pop());
    let reply = tokio::time::timeout(Duration::from_secs(5), reply).await;
    assert_eq!(reply.expect("served once a connection closed").unwrap().body, b"ok");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    // An answer without end; its stream tells when it is dropped.
    struct Dropped(Arc<Mutex<bool>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = true;
        }
    }
    let dropped = Arc::new(Mutex::new(false));
    let flag = dropped.clone();
    let app = Router::new().route(
        "/flood",
        get(move || {
            let guard = Dropped(flag.clone());
            let chunks = futures_util::stream::unfold(guard, |g| async move {
                tokio::task::yield_now().await;
                Some((Ok::<_, io::Error>(Bytes::from(vec![b'x'; 64 << 10])), g))
            });
            async move { axum::body::Body::from_stream(chunks) }
        }),
    );
    let l = ServeLimits { write_timeout: 300 * MS, ..limits(5000, 5000, 1024) };
    let server = start(app, l).await;
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    c.write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // Never read: the socket buffers fill, and the server's writes stall.
    let t = Instant::now();
    while !*dropped.lock().unwrap() {
        assert!(t.elapsed() < Duration::from_secs(10), "the stalled answer was never dropped");
        tokio::time::sleep(20 * MS).await;
    }
    drop(c);
}
