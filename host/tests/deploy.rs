//! Running across hosts: workers found by DNS and in a watched file, a worker's identity
//! being its reported id rather than its address, and SIGTERM draining the `locus worker`
//! and `locus router` processes (real processes, real signals, real HTTP on loopback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locus::api::sglang::GenerateResponse;
use locus::router::{self, Discover, Gateway, RouterOptions};
use locus::worker::{self, WorkerHandle, WorkerOptions};
use locus_engine::{Engine, EngineOptions, ModelSource};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn engines(n: usize) -> Vec<Arc<Engine>> {
    let opts = EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() };
    locus::cluster::load_engines(&ModelSource::Synthetic, n, opts).await.unwrap()
}

async fn worker_on(engine: &Arc<Engine>, id: &str) -> WorkerHandle {
    let opts = WorkerOptions { worker_id: id.into(), ..WorkerOptions::default() };
    worker::spawn(engine.clone(), opts, any()).await.unwrap()
}

async fn router_with(discover: Vec<Discover>, workers: Vec<String>) -> (SocketAddr, Arc<Gateway>) {
    let opts = RouterOptions {
        workers,
        discover,
        discover_interval: Duration::from_millis(50),
        health_interval: Duration::from_millis(100),
        load_interval: Duration::from_millis(50),
        ..RouterOptions::default()
    };
    let (addr, _, gw) = router::spawn(opts, any(), any()).await.unwrap();
    (addr, gw)
}

/// The registry's URLs, sorted.
fn urls(gw: &Gateway) -> Vec<String> {
    let mut u: Vec<String> = gw.registry().all().iter().map(|b| b.url.clone()).collect();
    u.sort();
    u
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn generate(router: SocketAddr, text: &str) -> GenerateResponse {
    let r = reqwest::Client::new()
        .post(format!("http://{router}/generate"))
        .json(&json!({"text": text, "sampling_params": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Which worker (by reported id) serves each of `n` prompts.
async fn placement(router: SocketAddr, n: usize) -> BTreeMap<usize, String> {
    let mut m = BTreeMap::new();
    for k in 0..n {
        let a = generate(router, &format!("Tenant {k:03} asks about the weather")).await;
        m.insert(k, a.meta_info.worker_id);
    }
    m
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_at_a_new_address_gets_its_prompts_back_and_only_a_lost_workers_move() {
    let e = engines(3).await;
    let mut ws = vec![
        worker_on(&e[0], "w1").await,
        worker_on(&e[1], "w2").await,
        worker_on(&e[2], "w3").await,
    ];
    let dir = std::env::temp_dir().join(format!("locus-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workers.txt");
    let list = |ws: &[WorkerHandle]| -> String {
        ws.iter().map(|w| format!("http://{}\n", w.addr)).collect::<String>()
    };
    write_atomically(&file, &format!("# three workers\n{}", list(&ws)));
    let (router, gw) = router_with(vec![Discover::File(file.clone())], Vec::new()).await;
    until("the file's three workers are added and identified", || {
        let all = gw.registry().all();
        all.len() == 3 && all.iter().all(|b| b.name().is_some())
    })
    .await;
    let before = placement(router, 48).await;
    let on_w2 = before.values().filter(|w| *w == "w2").count();
    assert!(on_w2 > 0 && on_w2 < 48, "w2 holds {on_w2} of 48 prompts");

    // w2 goes away: only its prompts move.
    let lost = ws.remove(1);
    let lost_url = format!("http://{}", lost.addr);
    lost.stop().await.unwrap();
    write_atomically(&file, &list(&ws));
    until("w2 is removed", || gw.registry().all().len() == 2).await;
    let during = placement(router, 48).await;
    for (k, w) in &before {
        if w == "w2" {
            assert_ne!(during[k], "w2");
        } else {
            assert_eq!(&during[k], w, "prompt {k} moved though its worker stayed");
        }
    }

    // w2 comes back on another port (a new address): every prompt is where it was.
    let back = worker_on(&e[1], "w2").await;
    ws.push(back);
    write_atomically(&file, &list(&ws));
    until("w2 is back", || gw.registry().all().len() == 3).await;
    assert!(!urls(&gw).contains(&lost_url), "w2's old address is still listed");
    let after = placement(router, 48).await;
    assert_eq!(after, before, "prompts did not return to the worker that came back");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_adds_workers_once_they_answer_and_keeps_hand_listed_ones() {
    let e = engines(1).await;
    // A port nothing listens on yet, then a worker bound to it.
    let probe = std::net::TcpListener::bind(any()).unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let listed = worker_on(&e[0], "listed").await;
    let listed_url = format!("http://{}", listed.addr);
    let (router, gw) = router_with(
        vec![Discover::Dns { name: "localhost".into(), port }],
        vec![listed_url.clone()],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        urls(&gw),
        vec![listed_url.clone()],
        "a name whose address does not answer adds nothing"
    );

    let opts = WorkerOptions { worker_id: "found".into(), ..WorkerOptions::default() };
    let found =
        worker::spawn(e[0].clone(), opts, SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    until("the worker behind the name is added", || gw.registry().all().len() == 2).await;
    let b = gw.registry().all().iter().find(|b| b.url != listed_url).cloned().unwrap();
    assert_eq!(b.url, format!("http://127.0.0.1:{port}"));
    assert_eq!(b.name().as_deref().map(String::as_str), Some("found"), "identified on arrival");
    assert_eq!(b.id(), router::worker_id("found"));
    // Both serve.
    let mut served = std::collections::BTreeSet::new();
    for k in 0..24 {
        served
            .insert(generate(router, &format!("prompt {k} for either")).await.meta_info.worker_id);
    }
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["found", "listed"]);
    found.stop().await.unwrap();
    listed.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_file_edit_adds_and_removes_but_never_a_hand_listed_worker() {
    let e = engines(2).await;
    let a = worker_on(&e[0], "a").await;
    let b = worker_on(&e[1], "b").await;
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let dir = std::env::temp_dir().join(format!("locus-wf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workers");
    write_atomically(&file, "not a url\n");
    let (_router, gw) = router_with(vec![Discover::File(file.clone())], vec![ua.clone()]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(urls(&gw), vec![ua.clone()]);
    // The file names both: b is added, a was already there (listed by hand).
    write_atomically(&file, &format!("{ua}\n{ub}/\n"));
    until("b is added", || gw.registry().all().len() == 2).await;
    // Emptied: b (the file's) goes, a (listed by hand) stays.
    write_atomically(&file, "# nobody\n");
    until("b is removed", || gw.registry().all().len() == 1).await;
    assert_eq!(urls(&gw), vec![ua.clone()]);
    // The file disappears: nothing changes.
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(urls(&gw), [ua]);
    std::fs::remove_dir_all(&dir).ok();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A `locus` process, killed if the test ends before it exits.
struct Proc(tokio::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Starts `locus ARGS` and returns it with the address it printed ("... listening on
/// http://ADDR ...").
async fn locus(args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_locus"))
        .args(args)
        .arg("--no-policy-cache")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("it starts")
        .unwrap()
        .expect("it prints its address");
    let addr = line.split("http://").nth(1).unwrap().split([' ', ')']).next().unwrap();
    (Proc(child), addr.parse().unwrap())
}

fn sigterm(p: &Proc) {
    let pid = p.0.id().expect("running") as i32;
    // SAFETY: kill(2) with a child's pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Streams a generation of `tokens` tokens for `text` (each call its own, so that none is
/// a response-cache hit) from `url`, tells `started` at its first event, and returns its
/// events and whether it ended with `[DONE]` (a cut stream did not).
async fn stream(
    url: String,
    text: &str,
    tokens: u32,
    started: tokio::sync::oneshot::Sender<()>,
) -> (usize, bool) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&json!({"text": text, "stream": true,
                      "sampling_params": {"max_new_tokens": tokens, "ignore_eos": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut started = Some(started);
    let (mut events, mut done) = (0, false);
    let mut body = r.bytes_stream();
    use futures_util::StreamExt;
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return (events, false) };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("[DONE]") {
                done = true;
            } else if event.starts_with("data:") {
                events += 1;
            }
            if let Some(s) = started.take() {
                let _ = s.send(());
            }
        }
    }
    (events, done)
}

async fn refused(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_and_a_router_finishing_the_streams_in_flight() {
    let (mut w, waddr) = locus(&["worker", "--port", "0", "--worker-id", "drained"]).await;
    let (mut r, raddr) = locus(&[
        "router",
        "--port",
        "0",
        "--admin-addr",
        "127.0.0.1:0",
        "--workers",
        &format!("http://{waddr}"),
    ])
    .await;

    // A stream through the router; SIGTERM to the router once it has begun.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let through =
        tokio::spawn(stream(format!("http://{raddr}/generate"), "Through the router", 96, tx));
    rx.await.unwrap();
    sigterm(&r);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(refused(raddr).await, "the router still accepts connections after SIGTERM");
    let (events, done) = through.await.unwrap();
    assert!(
        done && events >= 96,
        "the stream through the router was cut: {events} events, done {done}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), r.0.wait()).await.unwrap().unwrap();
    assert!(status.success(), "router exit: {status}");

    // A stream straight from the worker; SIGTERM to the worker once it has begun.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let direct =
        tokio::spawn(stream(format!("http://{waddr}/generate"), "Straight to the worker", 96, tx));
    rx.await.unwrap();
    sigterm(&w);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(refused(waddr).await, "the worker still accepts connections after SIGTERM");
    let (events, done) = direct.await.unwrap();
    assert!(done && events >= 96, "the worker's stream was cut: {events} events, done {done}");
    let status = tokio::time::timeout(Duration::from_secs(10), w.0.wait()).await.unwrap().unwrap();
    assert!(status.success(), "worker exit: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_grace_period_exits_anyway() {
    let (mut w, waddr) =
        locus(&["worker", "--port", "0", "--worker-id", "impatient", "--shutdown-grace-s", "0.3"])
            .await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stream = tokio::spawn(stream(format!("http://{waddr}/generate"), "A long one", 1000, tx));
    rx.await.unwrap();
    let t = Instant::now();
    sigterm(&w);
    let status = tokio::time::timeout(Duration::from_secs(10), w.0.wait()).await.unwrap().unwrap();
    assert!(status.success(), "worker exit: {status}");
    assert!(t.elapsed() < Duration::from_secs(5), "exited after {:?}", t.elapsed());
    let (_, done) = stream.await.unwrap();
    assert!(!done, "a 1000-token stream cannot have finished within the grace period");
}

/// A draining worker is out of rotation at its router's next health check: its 503 says
/// `shutting_down`, which is its own word, so the failure threshold (set far out of reach
/// here) does not apply. A rolling restart shorter than threshold x interval was missed
/// before (the chaos test's c3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_takes_a_draining_worker_out_at_its_first_health_check() {
    let (w, waddr) =
        locus(&["worker", "--port", "0", "--worker-id", "leaving", "--shutdown-delay-s", "30"])
            .await;
    let opts = RouterOptions {
        workers: vec![format!("http://{waddr}")],
        health_interval: Duration::from_millis(50),
        fail_threshold: 1000,
        ..RouterOptions::default()
    };
    let (_, _, gw) = router::spawn(opts, any(), any()).await.unwrap();
    let backend = gw.registry().all()[0].clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(backend.healthy(), "the worker is up before the signal");
    sigterm(&w);
    let t = Instant::now();
    while backend.healthy() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 1000 failed checks 50 ms apart would take 50 s.
    assert!(!backend.healthy(), "the draining worker is still in rotation after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_does_not_slow_the_other_workers_health_checks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A worker that answers its health checks and counts them (only `/health` is served:
    // the router's other polls get 404s and do not count).
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            async { "ok" }
        }),
    );
    let up = tokio::net::TcpListener::bind(any()).await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(up, app).await });
    // A frozen worker: its port accepts connections and never answers (a stopped process
    // whose socket the kernel keeps open), so each check of it waits for the 1 s timeout.
    let frozen = tokio::net::TcpListener::bind(any()).await.unwrap();
    let frozen_addr = frozen.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = frozen.accept().await {
            held.push(sock);
        }
    });
    let opts = RouterOptions {
        workers: vec![format!("http://{frozen_addr}"), format!("http://{up_addr}")],
        health_interval: Duration::from_millis(100),
        ..RouterOptions::default()
    };
    let (_, _, _gw) = router::spawn(opts, any(), any()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = checks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = checks.load(Ordering::Relaxed) - before;
    // Every 100 ms: ~20 checks in 2 s. Checks in rounds that wait for the frozen worker's
    // timeout would be at most 3.
    assert!(during >= 8, "{during} health checks of the live worker in 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_mounted_from_a_configmap_is_swapped_when_kubernetes_updates_it() {
    use locus_policy::PolicySource;
    use std::os::unix::fs::symlink;
    // What the kubelet's atomic writer makes of a ConfigMap volume: the file is a symlink
    // through `..data`, itself a symlink to a timestamped directory; an update writes a
    // new directory and renames a new `..data` over the old one.
    let dir = std::env::temp_dir().join(format!("locus-configmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let version = |name: &str, bytes: &[u8]| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("policy.wasm"), bytes).unwrap();
    };
    version("..2026_11_26_a", &PolicySource::Builtin("hash").bytes().unwrap());
    symlink("..2026_11_26_a", dir.join("..data")).unwrap();
    symlink("..data/policy.wasm", dir.join("policy.wasm")).unwrap();
    let file = dir.join("policy.wasm");
    let opts = RouterOptions {
        workers: vec!["http://127.0.0.1:9".into()],
        policy: PolicySource::File(file.clone()),
        watch: Some(file),
        ..RouterOptions::default()
    };
    let (_, _, gw) = router::spawn(opts, any(), any()).await.unwrap();
    let before = gw.policy().info().sha256;

    version("..2026_11_26_b", &PolicySource::Builtin("random").bytes().unwrap());
    symlink("..2026_11_26_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    until("the updated ConfigMap's policy serves", || gw.policy().info().sha256 != before).await;
    let opts = locus_policy::LoadOptions::with_settings(Vec::new());
    let random = locus_policy::inspect(&PolicySource::Builtin("random"), &opts);
    assert_eq!(gw.policy().info().sha256, random.sha256, "the new version serves");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_moved_in_one_file_edit_is_followed_at_its_new_address_and_counted_once() {
    let e = engines(1).await;
    let dir = std::env::temp_dir().join(format!("locus-move-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("workers");
    let old = worker_on(&e[0], "mover").await;
    write_atomically(&file, &format!("http://{}\n", old.addr));
    let (_router, gw) = router_with(vec![Discover::File(file.clone())], Vec::new()).await;
    until("the worker is added", || gw.registry().all().len() == 1).await;

    // Moved: the old address goes and the new one comes in the same edit.
    let new = worker_on(&e[0], "mover").await;
    old.stop().await.unwrap();
    write_atomically(&file, &format!("http://{}\n", new.addr));
    until("the new address replaces the old", || urls(&gw) == vec![format!("http://{}", new.addr)])
        .await;
    assert_eq!(gw.registry().all()[0].id(), router::worker_id("mover"));
    // Its KV events are followed at the new address: a prompt it stores reaches the index.
    let text = "A prompt long enough to fill a few blocks of sixteen tokens each, so that the \
                worker stores them in its prefix cache and tells the router which it holds.";
    let r = reqwest::Client::new()
        .post(format!("http://{}/generate", new.addr))
        .json(&json!({"text": text, "sampling_params": {"max_new_tokens": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kv = gw.policy().kv().clone();
    until("the router knows the moved worker's blocks", || {
        kv.blocks(router::worker_id("mover")) > 0
    })
    .await;

    // The same worker named a second way (localhost, not 127.0.0.1) is not added twice.
    write_atomically(
        &file,
        &format!("http://{}\nhttp://localhost:{}\n", new.addr, new.addr.port()),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(urls(&gw), vec![format!("http://{}", new.addr)]);
    new.stop().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// What `locus run` prints up to its `try:` lines.
async fn run_banner(token: Option<&str>) -> (Proc, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_locus"));
    cmd.args(["run", "--port", "0", "--admin-addr", "127.0.0.1:0", "--workers", "1"])
        .arg("--no-policy-cache")
        .env("RAYON_NUM_THREADS", "1")
        // A proxy for the user's web traffic, which answers nothing: cluster traffic
        // must not go through it.
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("http_proxy", "http://127.0.0.1:9")
        .env("ALL_PROXY", "http://127.0.0.1:9")
        .env_remove("LOCUS_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("LOCUS_ADMIN_TOKEN", t);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    while !banner.contains("locus swap") {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("it starts")
            .unwrap()
            .expect("it prints its banner");
        banner.push_str(&line);
        banner.push('\n');
    }
    (Proc(child), banner)
}

/// `locus run` never prints the admin token: a given one is not echoed, a made-up one is
/// in a file only the user can read, gone when the cluster stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locus_run_keeps_the_admin_token_off_the_terminal() {
    use std::os::unix::fs::PermissionsExt;
    let (mut p, banner) = run_banner(Some("given-secret-7f3a")).await;
    assert!(!banner.contains("given-secret-7f3a"), "{banner}");
    assert!(banner.contains("token as given"), "{banner}");
    // It serves, with a proxy in its environment (the router reaches its workers itself).
    let router = banner.split("router:  ").nth(1).unwrap().split_whitespace().next().unwrap();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = serde_json::json!({"text": "Hi", "sampling_params": {"max_new_tokens": 2}});
    let mut status = 0;
    for _ in 0..50 {
        let r = c.post(format!("{router}/generate")).json(&body).send().await.unwrap();
        status = r.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "locus run did not answer through its router");
    sigterm(&p);
    p.0.wait().await.unwrap();

    let (mut p, banner) = run_banner(None).await;
    let path = banner.split("token in ").nth(1).unwrap().split(',').next().unwrap().to_string();
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(token.len(), 32, "{token}");
    assert!(!banner.contains(&token), "{banner}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    sigterm(&p);
    p.0.wait().await.unwrap();
    assert!(!std::path::Path::new(&path).exists(), "the token file outlived the cluster");
}
