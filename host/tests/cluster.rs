//! The cluster end to end: real workers (synthetic distilgpt2 on candle), a real router,
//! real HTTP on loopback with ephemeral ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use locus::api::sglang::GenerateResponse;
use locus::cluster::{self, Cluster, ClusterOptions};
use locus::worker::{self, WorkerOptions};
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

async fn start(workers: usize, policy: &str) -> Cluster {
    let mut o = ClusterOptions::local();
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.workers = workers;
    o.engine.prefix_cache_bytes = 64 << 20;
    o.worker.admin_token = Some(TOKEN.into());
    o.router.admin_token = Some(TOKEN.into());
    o.router.policy = locus_policy::PolicySource::parse(policy).unwrap();
    o.router.health_interval = Duration::from_millis(100);
    cluster::start(o).await.expect("cluster starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

async fn generate(c: &reqwest::Client, router: SocketAddr, text: &str) -> GenerateResponse {
    let r = c
        .post(format!("http://{router}/generate"))
        .json(&json!({"text": text, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}))
        .send()
        .await
        .expect("router answers");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.json().await.unwrap()
}

/// Clients sending `/generate` in a loop until stopped; counts answers by outcome.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        router: SocketAddr,
        clients: usize,
        max_new_tokens: u32,
        prompt: fn(usize, usize) -> String,
    ) -> Self {
        let http = client();
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..clients)
            .map(|t| {
                let (http, stop, ok, failed) = (http.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let body = json!({"text": prompt(t, i), "sampling_params": {"max_new_tokens": max_new_tokens}});
                        i += 1;
                        let r = http.post(format!("http://{router}/generate")).json(&body).send().await;
                        match r {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Self { stop, ok, failed, tasks }
    }

    /// Stops the clients; returns (answered, failed).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a client task panicked");
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_hash_hits_the_response_cache_on_every_repeat() {
    let c = start(3, "hash").await;
    let http = client();
    let phrases = ["What is the capital of France?", "Explain cache-aware routing in one line."];
    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(generate(&http, c.router_addr, phrases[i % 2]).await);
    }
    let hits: Vec<bool> = answers.iter().map(|a| a.meta_info.cache_hit).collect();
    assert_eq!(hits, [false, false, true, true, true, true]);
    for i in 2..6 {
        let first = &answers[i % 2];
        assert_eq!(answers[i].meta_info.worker_id, first.meta_info.worker_id);
        assert_eq!(answers[i].text, first.text, "a cached answer equals the computed one");
        assert_eq!(answers[i].meta_info.cached_tokens, first.meta_info.prompt_tokens);
    }
    assert!(answers[0].meta_info.worker_id.starts_with("worker-"));
    assert!(answers[0].meta_info.completion_tokens > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_token_and_rejects_bad_modules_keeping_the_old_policy() {
    let c = start(1, "hash").await;
    let http = client();
    let admin = format!("http://{}/admin/policy", c.admin_addr);

    let r = http.put(&admin).query(&[("name", "random")]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(&admin).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let r =
        http.put(&admin).bearer_auth(TOKEN).body(b"not wasm at all".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("compile") && msg.contains("not a WebAssembly component"), "{msg}");

    let lru = locus_policy::PolicySource::Builtin("lru").bytes().unwrap();
    let r = http.put(&admin).bearer_auth(TOKEN).body(lru).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("router world"), "{body}");

    let r = http.get(&admin).bearer_auth(TOKEN).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["policy"]["name"], "hash");
    // And it still serves.
    generate(&http, c.router_addr, "still serving").await;

    let r = http
        .put(&admin)
        .bearer_auth(TOKEN)
        .query(&[("name", "random"), ("seed", "3")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(&admin).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["policy"]["name"], "random");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_completion_arrives_as_several_events_before_generation_ends() {
    let c = start(1, "hash").await;
    let started = Instant::now();
    let mut r = client()
        .post(format!("http://{}/v1/completions", c.router_addr))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 24, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut first = None;
    let mut body = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        first.get_or_insert(started.elapsed());
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let total = started.elapsed();
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert!(events.len() >= 4, "{events:?}");
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!text.is_empty());
    let first = first.unwrap();
    assert!(first * 2 < total, "first event at {first:?} of {total:?}: not streamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_under_load_fails_no_request_and_serves_again_after_restart() {
    let mut c = start(3, "hash").await;
    let http = client();
    let router = c.router_addr;
    let load =
        Load::start(router, 3, 2, |t, i| format!("client {t} request {i}: tell me about routing"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = c.workers[1].take().unwrap();
    let addr = victim.addr;
    victim.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let url = format!("http://{addr}");
    let down = c.gateway.registry().all().iter().find(|b| b.url == url).map(|b| !b.healthy());
    assert_eq!(down, Some(true), "the stopped worker is marked down");

    let opts = WorkerOptions { worker_id: "worker-2".into(), ..WorkerOptions::default() };
    let back = worker::spawn(c.engines[1].clone(), opts, addr).await.expect("rebinds its port");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let up = c.gateway.registry().all().iter().find(|b| b.url == url).map(|b| b.healthy());
    assert_eq!(up, Some(true), "the restarted worker is marked up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "client requests failed");
    assert!(ok > 10, "only {ok} requests answered");
    // The restarted worker takes its share of requests again.
    let mut served = 0;
    for i in 0..30 {
        let a = generate(&http, router, &format!("prompt {i:03} after the restart")).await;
        served += usize::from(a.meta_info.worker_id == "worker-2");
    }
    assert!(served > 0, "the restarted worker got none of 30 requests");
    back.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_no_request_and_keep_cached_entries() {
    let c = start(3, "hash").await;
    let http = client();
    let router = c.router_addr;
    // Warm one answer per worker-to-be, to check that cache-policy swaps keep them.
    let warm = generate(&http, router, "a cached answer that must survive swaps").await;

    let load = Load::start(router, 2, 1, |t, i| format!("load {t}/{} keeps going", i % 7));

    let admin = format!("http://{}/admin/policy", c.admin_addr);
    for i in 0..20 {
        let name = if i % 2 == 0 { "random" } else { "hash" };
        let r = http.put(&admin).bearer_auth(TOKEN).query(&[("name", name)]).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let info: Value =
            http.get(&admin).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        assert_eq!(info["policy"]["name"], name, "the swap took effect");
        if name == "hash" {
            // Routing follows hash again: one prompt, one worker.
            let a = generate(&http, router, "route me the same way twice").await;
            let b = generate(&http, router, "route me the same way twice").await;
            assert_eq!(a.meta_info.worker_id, b.meta_info.worker_id);
        }
    }
    for i in 0..5 {
        for w in &c.worker_addrs {
            let r = http
                .put(format!("http://{w}/admin/cache-policy"))
                .bearer_auth(TOKEN)
                .query(&[("name", "lru")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "cache swap {i}: {}", r.text().await.unwrap());
        }
    }
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "client requests failed during the swaps");
    assert!(ok > 0);
    // hash is serving (the last swap): the warm answer is still cached where it was.
    let again = generate(&http, router, "a cached answer that must survive swaps").await;
    assert!(again.meta_info.cache_hit, "the cached answer was lost by the cache-policy swaps");
    assert_eq!(again.meta_info.worker_id, warm.meta_info.worker_id);
    assert_eq!(again.text, warm.text);
}

async fn one_worker(max_queue: usize) -> worker::WorkerHandle {
    let engines = cluster::load_engines(
        &locus_engine::ModelSource::Synthetic,
        1,
        locus_engine::EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() },
    )
    .await
    .unwrap();
    let opts = WorkerOptions { max_queue, ..WorkerOptions::default() };
    worker::spawn(engines[0].clone(), opts, SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_without_a_seed_are_never_answered_from_the_cache() {
    let w = one_worker(8).await;
    let http = client();
    let ask = |body: Value| {
        let http = http.clone();
        let url = format!("http://{}/generate", w.addr);
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<GenerateResponse>().await.unwrap().meta_info.cache_hit
        }
    };
    let unseeded =
        json!({"text": "sample me", "sampling_params": {"max_new_tokens": 2, "temperature": 0.8}});
    assert!(!ask(unseeded.clone()).await);
    assert!(!ask(unseeded).await, "an unseeded sample was served from the cache");
    let seeded = json!({"text": "sample me", "sampling_params": {"max_new_tokens": 2, "temperature": 0.8, "seed": 5}});
    assert!(!ask(seeded.clone()).await);
    assert!(ask(seeded).await, "a seeded sample is reproducible, so it is cached");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_beyond_max_queue_gets_429_with_retry_after() {
    let w = one_worker(1).await;
    let http = client();
    let url = format!("http://{}/generate", w.addr);
    let reqs = (0..6).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"text": format!("{i} a long enough generation"), "sampling_params": {"max_new_tokens": 24}});
            let r = http.post(url).json(&body).send().await.unwrap();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry)
        }
    });
    let results = futures_util::future::join_all(reqs).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(!refused.is_empty(), "no request was refused: {results:?}");
    assert!(refused.iter().all(|(_, r)| r.as_deref() == Some("1")), "{results:?}");
    assert_eq!(ok + refused.len(), 6, "{results:?}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_swaps_the_policy_when_its_file_changes_and_ignores_a_bad_file() {
    use locus_policy::PolicySource;
    let dir = std::env::temp_dir().join(format!("locus-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.wasm");
    let hash = PolicySource::Builtin("hash").bytes().unwrap();
    let random = PolicySource::Builtin("random").bytes().unwrap();
    std::fs::write(&file, &hash).unwrap();
    let opts = locus::router::RouterOptions {
        workers: vec!["http://127.0.0.1:9".into()],
        policy: PolicySource::File(file.clone()),
        watch: Some(file.clone()),
        ..Default::default()
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (_, _, gw) = locus::router::spawn(opts, any, any).await.unwrap();
    let sha = || gw.policy().info().sha256;
    let before = sha();

    std::fs::write(&file, b"garbage, not a component").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sha(), before, "a bad file must not replace the serving policy");

    std::fs::write(&file, &random).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sha() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(sha(), before, "the changed file was not swapped in");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_policy_swaps_under_load_lose_no_entry_and_fail_no_request() {
    let engines = cluster::load_engines(
        &locus_engine::ModelSource::Synthetic,
        1,
        locus_engine::EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() },
    )
    .await
    .unwrap();
    let opts = WorkerOptions { admin_token: Some(TOKEN.into()), ..WorkerOptions::default() };
    let w = worker::spawn(engines[0].clone(), opts, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let http = client();
    // Twelve cached answers before the swaps.
    let mut warm = Vec::new();
    for i in 0..12 {
        warm.push(generate(&http, w.addr, &format!("cached answer number {i}")).await);
    }
    let entries = |w: &worker::WorkerHandle| w.worker.caches().response_stats().0;
    assert_eq!(entries(&w), 12);
    let load = Load::start(w.addr, 2, 1, |t, i| format!("load {t} request {}", i % 5));
    let url = format!("http://{}/admin/cache-policy", w.addr);
    for i in 0..10 {
        // Alternate between two configurations so that every swap installs a new instance.
        let cap = if i % 2 == 0 { "67108864" } else { "33554432" };
        let r = http
            .put(&url)
            .bearer_auth(TOKEN)
            .query(&[("name", "lru"), ("capacity-bytes", cap)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "swap {i}: {}", r.text().await.unwrap());
        let info: Value = r.json().await.unwrap();
        // Both levels changed in the one swap.
        let (resp, prefix) = (&info["policy"]["response"], &info["policy"]["prefix"]);
        assert_eq!(resp["sha256"], prefix["sha256"]);
        assert!(resp["settings"].to_string().contains(cap), "{resp}");
        assert!(prefix["settings"].to_string().contains(cap), "{prefix}");
    }
    // A candidate that fails changes neither level.
    let before = w.worker.caches().info();
    let r =
        http.put(&url).bearer_auth(TOKEN).body(b"not a component".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let after = w.worker.caches().info();
    assert_eq!(
        (after.response.sha256, after.prefix.sha256),
        (before.response.sha256, before.prefix.sha256)
    );
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "requests failed during the swaps");
    assert!(ok > 0);
    // Every warm answer is still there, and the new policy knows every stored entry.
    for (i, a) in warm.iter().enumerate() {
        let again = generate(&http, w.addr, &format!("cached answer number {i}")).await;
        assert!(again.meta_info.cache_hit, "entry {i} was lost by a swap");
        assert_eq!(again.text, a.text);
    }
    assert_eq!(w.worker.caches().response_residents().len(), entries(&w));
    // Each swap is in the audit log (the rejected one is not), with who asked.
    let r =
        http.get(format!("http://{}/admin/audit", w.addr)).bearer_auth(TOKEN).send().await.unwrap();
    let audit: Value = r.json().await.unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let events: Vec<&str> = entries.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events.len(), 11, "{events:?}");
    assert_eq!(events[0], "load");
    assert!(events[1..].iter().all(|e| *e == "swap"), "{events:?}");
    assert!(entries.iter().all(|e| e["world"] == "cache"));
    assert_eq!(entries[1]["who"], "admin-api");
    assert_eq!(entries[1]["from_sha256"], entries[0]["sha256"]);
    w.stop().await.unwrap();
}
