//! KV on the move between real workers over HTTP: a worker told (with the cluster token) to
//! pull a prompt's prefix from the worker that holds it answers as if it had computed it,
//! reports the tokens transferred apart from the cached ones, and loses no request when the
//! source refuses, lies or dies mid-stream; a client cannot name a source, and `/kv/export`
//! gives nothing without the token or to another model.

use std::net::SocketAddr;
use std::sync::Arc;

use locus::cluster;
use locus::worker::{self, CLUSTER_TOKEN, KV_SOURCE, KV_SOURCE_USED, WorkerHandle, WorkerOptions};
use locus_engine::transfer::KvFingerprint;
use locus_engine::{Engine, EngineOptions, ModelSource};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "cluster-secret";

/// About 100 tokens: at least 5 full blocks before its last token.
const PROMPT: &str = "The committee met on a cold morning in the old hall by the river, and after \
     the minutes of the last meeting were read and approved, the treasurer reported that the \
     accounts for the year showed a modest surplus, most of it from the autumn fair, which had \
     drawn more visitors than any year since the bridge was rebuilt. The secretary then read \
     letters from the mill, the school and the lending library, each asking for a share of \
     it, and the chairman proposed that the question wait until the spring.";

async fn engine() -> Arc<Engine> {
    let opts = EngineOptions { prefix_cache_bytes: 32 << 20, ..Default::default() };
    cluster::load_engines(&ModelSource::Synthetic, 1, opts).await.unwrap().remove(0)
}

async fn worker(token: Option<&str>) -> WorkerHandle {
    worker_and_engine(token).await.0
}

async fn worker_and_engine(token: Option<&str>) -> (WorkerHandle, Arc<Engine>) {
    spawn_worker(pull_options(token)).await
}

/// A worker's options with `token` as its cluster token and pulls of a block or more.
fn pull_options(token: Option<&str>) -> WorkerOptions {
    WorkerOptions {
        cluster_token: token.map(str::to_string),
        kv_pull_min_tokens: 16,
        // A fixed deadline: what is asserted must not depend on this machine's speed.
        kv_pull_timeout_ms: Some(20_000),
        ..Default::default()
    }
}

async fn spawn_worker(options: WorkerOptions) -> (WorkerHandle, Arc<Engine>) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let engine = engine().await;
    (worker::spawn(engine.clone(), options, any).await.unwrap(), engine)
}

fn base(w: &WorkerHandle) -> String {
    format!("http://{}", w.addr)
}

/// `/generate` of `PROMPT`, greedy, with `headers`: the answer's JSON and headers.
async fn generate(url: &str, headers: &[(&str, &str)]) -> (Value, reqwest::header::HeaderMap) {
    generate_n(url, headers, 12).await
}

/// [`generate`] of `max_new_tokens` (another count is another response-cache key).
async fn generate_n(
    url: &str,
    headers: &[(&str, &str)],
    max_new_tokens: usize,
) -> (Value, reqwest::header::HeaderMap) {
    let params = json!({"max_new_tokens": max_new_tokens, "temperature": 0});
    let body = json!({"text": PROMPT, "sampling_params": params});
    let mut req = reqwest::Client::new().post(format!("{url}/generate")).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    (r.json().await.unwrap(), headers)
}

/// `POST /kv/export` on `url` for `ids` as a worker of fingerprint `fp` (any string) asks,
/// with `token` in the cluster token header.
async fn export(url: &str, token: Option<&str>, fp: &str, ids: &[u32]) -> reqwest::Response {
    let body = json!({"fingerprint": fp, "token_ids": ids});
    let mut r = reqwest::Client::new().post(format!("{url}/kv/export")).json(&body);
    if let Some(t) = token {
        r = r.header(CLUSTER_TOKEN, t);
    }
    r.send().await.unwrap()
}

async fn metric(url: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_prefix_answers_as_the_computed_one_and_is_reported_apart() {
    let (holder, importer) = (worker(Some(TOKEN)).await, worker(Some(TOKEN)).await);
    let (computed, _) = generate(&base(&holder), &[]).await;
    let source = base(&holder);
    let (pulled, headers) =
        generate(&base(&importer), &[(KV_SOURCE, &source), (CLUSTER_TOKEN, TOKEN)]).await;
    assert_eq!(pulled["text"], computed["text"]);
    let meta = &pulled["meta_info"];
    let prompt_tokens = meta["prompt_tokens"].as_u64().unwrap();
    let blocks = (prompt_tokens - 1) / 16;
    assert!(blocks >= 5, "{prompt_tokens} prompt tokens");
    assert_eq!(meta["transferred_tokens"], blocks * 16);
    assert_eq!(meta["cached_tokens"], 0);
    assert_eq!(headers[KV_SOURCE_USED], source.as_str());
    let url = base(&importer);
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "complete").await, 1.0);
    let pulled_blocks = metric(&url, "locus_worker_kv_transfer_blocks_total", "pulled").await;
    assert_eq!(pulled_blocks, blocks as f64);
    let served = metric(&source, "locus_worker_kv_transfer_blocks_total", "served").await;
    assert_eq!(served, blocks as f64);

    // The blocks are now the importer's own: the next request finds them cached, pulls none.
    let headers = [(KV_SOURCE, source.as_str()), (CLUSTER_TOKEN, TOKEN)];
    let (again, _) = generate_n(&base(&importer), &headers, 13).await;
    assert_eq!(again["text"], generate_n(&source, &[], 13).await.0["text"]);
    assert_eq!(again["meta_info"]["cached_tokens"], blocks * 16);
    assert_eq!(again["meta_info"]["transferred_tokens"], 0);
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "skipped_resident").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_name_a_source() {
    let (holder, importer) = (worker(Some(TOKEN)).await, worker(Some(TOKEN)).await);
    let (computed, _) = generate(&base(&holder), &[]).await;
    let source = base(&holder);
    for headers in
        [vec![(KV_SOURCE, source.as_str())], vec![(KV_SOURCE, &source), (CLUSTER_TOKEN, "guess")]]
    {
        let (answer, h) = generate(&base(&importer), &headers).await;
        assert_eq!(answer["text"], computed["text"]);
        assert_eq!(answer["meta_info"].get("transferred_tokens"), None);
        assert!(h.get(KV_SOURCE_USED).is_none());
        // Both cache levels emptied: the next request runs the model again.
        reqwest::Client::new()
            .post(format!("{}/flush_cache", base(&importer)))
            .send()
            .await
            .unwrap();
    }
    let url = base(&importer);
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "ignored_unauthorized").await, 2.0);
    assert_eq!(metric(&source, "locus_worker_kv_transfer_blocks_total", "served").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_gives_nothing_without_the_token_or_to_another_model() {
    let ((holder, engine), closed) = (worker_and_engine(Some(TOKEN)).await, worker(None).await);
    generate(&base(&holder), &[]).await;
    let fp = engine.kv_fingerprint();
    let ids: Vec<u32> = engine.tokenizer().encode(PROMPT);
    let (url, good) = (base(&holder), fp.to_string());
    assert_eq!(export(&url, None, &good, &ids).await.status(), 401);
    assert_eq!(export(&url, Some("guess"), &good, &ids).await.status(), 401);
    assert_eq!(export(&base(&closed), Some(TOKEN), &good, &ids).await.status(), 403);
    let other = KvFingerprint { weights_digest: fp.weights_digest ^ 1, ..fp };
    let r = export(&url, Some(TOKEN), &other.to_string(), &ids).await;
    assert_eq!(r.status(), 409);
    let err: Value = r.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("weights digest"), "{err}");
    let r = export(&url, Some(TOKEN), "zz", &ids).await;
    assert_eq!(r.status(), 400);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["param"], "fingerprint");

    // Token ids that differ from the stored ones in the first block: a header, no block.
    let mut wrong = ids.clone();
    wrong[3] += 1;
    let r = export(&url, Some(TOKEN), &good, &wrong).await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), 4 + 4 + locus_engine::transfer::FINGERPRINT_BYTES + 4);
    assert_eq!(&bytes[bytes.len() - 4..], &0u32.to_le_bytes());
}

/// A source that answers every request with `head` (an HTTP status line and headers) and
/// `body`, then holds the connection for `hold` before dropping it: a misbehaving holder,
/// at the boundary these tests cannot make a real worker misbehave.
async fn scripted_source(head: String, body: Vec<u8>, hold: std::time::Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 << 10];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(format!("{head}\r\n").as_bytes()).await;
            let _ = conn.write_all(&body).await;
            tokio::time::sleep(hold).await;
        }
    });
    format!("http://{addr}")
}

/// The head of a 200 answer announcing `len` bytes of KV.
fn ok_head(len: usize) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {len}\r\n"
    )
}

/// A source that answers with the first `keep` bytes of a real export and then drops the
/// connection: a worker dying mid-stream.
async fn dying_source(real: Vec<u8>, keep: usize) -> String {
    scripted_source(ok_head(real.len()), real[..keep].to_vec(), std::time::Duration::ZERO).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dying_mid_stream_costs_no_request() {
    let ((holder, engine), importer) =
        (worker_and_engine(Some(TOKEN)).await, worker(Some(TOKEN)).await);
    let (computed, _) = generate(&base(&holder), &[]).await;
    let fp = engine.kv_fingerprint();
    let ids: Vec<u32> = engine.tokenizer().encode(PROMPT);
    let usable = (ids.len() - 1) / 16 * 16;
    let real = export(&base(&holder), Some(TOKEN), &fp.to_string(), &ids[..usable])
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let frame = 4 + 4 + fp.block_payload_bytes() + 8;
    let header = real.len() - usable / 16 * frame;
    // Two whole blocks, then half of the third.
    let source = dying_source(real, header + 2 * frame + frame / 2).await;
    let (answer, _) =
        generate(&base(&importer), &[(KV_SOURCE, &source), (CLUSTER_TOKEN, TOKEN)]).await;
    assert_eq!(answer["text"], computed["text"]);
    assert_eq!(answer["meta_info"]["transferred_tokens"], 32);
    let url = base(&importer);
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "truncated").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_cut_off_by_its_deadline_counts_in_the_link_speed() {
    // A source that sends 3 bytes of a long answer (not even a whole frame length: nothing
    // the importer could refuse yet) and then stalls.
    let hold = std::time::Duration::from_secs(30);
    let source = scripted_source(ok_head(100_000_000), vec![0; 3], hold).await;
    let options = WorkerOptions { kv_pull_timeout_ms: Some(300), ..pull_options(Some(TOKEN)) };
    let (importer, _) = spawn_worker(options).await;
    let url = base(&importer);
    let (answer, _) = generate(&url, &[(KV_SOURCE, &source), (CLUSTER_TOKEN, TOKEN)]).await;
    assert_eq!(answer["meta_info"]["transferred_tokens"], 0);
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "deadline").await, 1.0);
    let load: Value = reqwest::get(format!("{url}/load")).await.unwrap().json().await.unwrap();
    // 3 bytes in about 0.3 s.
    let speed = load["kv_pull_bytes_per_second"].as_f64().expect("a measured link speed");
    assert!(speed > 0.0 && speed < 100.0, "{speed} B/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_never_follows_a_redirect_with_the_cluster_token() {
    // Where the redirect points: it counts every connection made to it.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = format!("http://{}", elsewhere.local_addr().unwrap());
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = elsewhere.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let head = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}/kv/export\r\ncontent-length: 0\r\n"
    );
    let source = scripted_source(head, Vec::new(), std::time::Duration::ZERO).await;
    let importer = worker(Some(TOKEN)).await;
    let url = base(&importer);
    let (answer, headers) = generate(&url, &[(KV_SOURCE, &source), (CLUSTER_TOKEN, TOKEN)]).await;
    assert_eq!(answer["meta_info"]["transferred_tokens"], 0);
    assert!(headers.get(KV_SOURCE_USED).is_none());
    assert_eq!(metric(&url, "locus_worker_kv_pulls_total", "source_refused").await, 1.0);
    assert_eq!(reached.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect was followed");
}

/// A cluster of two workers behind a router with the `probe` policy (routes by session:
/// `pin:N`, `source:N:M`); `token` is the cluster token of all three.
async fn probed_cluster(token: Option<&str>) -> cluster::Cluster {
    probed_cluster_limited(token, None).await
}

/// [`probed_cluster`] with each worker's dispatch limit at `limit` (the router's default
/// when `None`: what the worker can batch).
async fn probed_cluster_limited(token: Option<&str>, limit: Option<u32>) -> cluster::Cluster {
    let probe = locus_policy::PolicySource::File(locus::guests::PROBE_PATH.into());
    cluster_with(token, limit, probe, &[]).await
}

/// Two workers behind a router with `policy` and its `settings`, all three with `token` as
/// the cluster token, each worker's dispatch limit at `limit`.
async fn cluster_with(
    token: Option<&str>,
    limit: Option<u32>,
    policy: locus_policy::PolicySource,
    settings: &[(&str, &str)],
) -> cluster::Cluster {
    use std::time::Duration;
    let mut o = cluster::ClusterOptions::local();
    o.router.flow.dispatch_limit = limit;
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.workers = 2;
    o.engine.prefix_cache_bytes = 32 << 20;
    o.worker.cluster_token = token.map(str::to_string);
    o.worker.kv_pull_min_tokens = 16;
    o.worker.kv_pull_timeout_ms = Some(20_000);
    o.router.cluster_token = token.map(str::to_string);
    o.router.policy = policy;
    o.router.settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    o.router.health_interval = Duration::from_millis(100);
    o.router.load_interval = Duration::from_millis(50);
    cluster::start(o).await.expect("cluster starts")
}

/// `/generate` of `PROMPT` through the router with `session` and extra `headers`: the
/// worker that answered and the body.
async fn through(
    c: &cluster::Cluster,
    session: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> (String, Value) {
    let params = json!({"max_new_tokens": n, "temperature": 0});
    let body = json!({"text": PROMPT, "sampling_params": params});
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/generate", c.router_addr))
        .header("x-session-id", session)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let worker = r.headers()["x-locus-worker"].to_str().unwrap().to_string();
    (worker, r.json().await.unwrap())
}

/// Waits until the router has every worker's load report, KV fingerprint included when
/// `fingerprint`.
async fn loads_known(c: &cluster::Cluster, fingerprint: bool) {
    let t0 = std::time::Instant::now();
    loop {
        let healthy = c.gateway.registry().healthy();
        let known = healthy
            .iter()
            .filter_map(|b| b.load())
            .filter(|r| !fingerprint || r.load.kv_fingerprint.is_some());
        if healthy.len() == c.worker_addrs.len() && known.count() == healthy.len() {
            return;
        }
        assert!(t0.elapsed().as_secs() < 10, "the router never heard the workers' loads");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_passes_the_source_its_policy_names_and_clients_cannot() {
    let c = probed_cluster(Some(TOKEN)).await;
    loads_known(&c, true).await;
    let urls: Vec<String> = c.worker_addrs.iter().map(|a| format!("http://{a}")).collect();
    let (on, computed) = through(&c, "pin:0", &[], 12).await;
    assert_eq!(on, urls[0]);
    // A client naming a source (with a token, even the right one) is not passed on.
    let forged = [(KV_SOURCE, urls[0].as_str()), (CLUSTER_TOKEN, TOKEN)];
    let (on, body) = through(&c, "pin:1", &forged, 11).await;
    assert_eq!(on, urls[1]);
    assert_eq!(body["meta_info"].get("transferred_tokens"), None, "{body}");
    assert_eq!(metric(&urls[1], "locus_worker_kv_pulls_total", "").await, 0.0);

    // The policy's source is: worker 1 pulls from worker 0 what it did not compute itself.
    let c2 = probed_cluster(Some(TOKEN)).await;
    loads_known(&c2, true).await;
    let urls: Vec<String> = c2.worker_addrs.iter().map(|a| format!("http://{a}")).collect();
    through(&c2, "pin:0", &[], 12).await;
    let (on, pulled) = through(&c2, "source:1:0", &[], 12).await;
    assert_eq!(on, urls[1]);
    assert_eq!(pulled["text"], computed["text"]);
    let prompt_tokens = pulled["meta_info"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(pulled["meta_info"]["transferred_tokens"], (prompt_tokens - 1) / 16 * 16);
    let router = format!("http://{}", c2.router_addr);
    assert_eq!(metric(&router, "locus_router_kv_sources_total", "named").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_without_the_cluster_token_names_no_source() {
    let c = probed_cluster(None).await;
    loads_known(&c, false).await;
    through(&c, "pin:0", &[], 12).await;
    let (_, body) = through(&c, "source:1:0", &[], 12).await;
    assert_eq!(body["meta_info"].get("transferred_tokens"), None, "{body}");
    let router = format!("http://{}", c.router_addr);
    assert_eq!(metric(&router, "locus_router_kv_sources_total", "incompatible").await, 1.0);
    assert_eq!(metric(&router, "locus_router_kv_sources_total", "named").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_holder_can_be_the_source_and_a_full_choice_is_asked_again() {
    // One dispatch slot per worker; worker 0 computes the prompt, then a long generation
    // holds its slot.
    let c = probed_cluster_limited(Some(TOKEN), Some(1)).await;
    loads_known(&c, true).await;
    let urls: Vec<String> = c.worker_addrs.iter().map(|a| format!("http://{a}")).collect();
    let (_, computed) = through(&c, "pin:0", &[], 12).await;
    let url = format!("http://{}/generate", c.router_addr);
    let long = json!({"text": "Hold the slot.",
                      "sampling_params": {"max_new_tokens": 900, "ignore_eos": true}});
    let blocker = tokio::spawn(async move {
        let r = reqwest::Client::new().post(url).header("x-session-id", "pin:0").json(&long);
        let _ = r.send().await;
    });
    let t0 = std::time::Instant::now();
    while c.gateway.registry().healthy()[0].in_flight() == 0 {
        assert!(t0.elapsed().as_secs() < 10, "the blocker never reached worker 0");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The policy still sees worker 0 (full) and names it as the source for worker 1.
    let (on, pulled) = through(&c, "source:1:0", &[], 12).await;
    assert_eq!(on, urls[1]);
    assert_eq!(pulled["text"], computed["text"]);
    let prompt_tokens = pulled["meta_info"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(pulled["meta_info"]["transferred_tokens"], (prompt_tokens - 1) / 16 * 16);
    // Choosing the full worker while another has room is asked again among those with room.
    while c.gateway.registry().healthy()[1].in_flight() > 0 {
        assert!(t0.elapsed().as_secs() < 20, "worker 1 never came free");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (on, _) = through(&c, "pin:0", &[], 13).await;
    assert_eq!(on, urls[1]);
    let router = format!("http://{}", c.router_addr);
    assert_eq!(metric(&router, "locus_router_full_choices_total", "").await, 1.0);
    blocker.abort();
}

/// Contract 0.5.0 end to end: the built-in `prefix-aware` sees the room each worker has
/// under its dispatch limit (2 here), so it keeps a prompt on its holder while the holder
/// has a free slot, busy or not, and once the holder is full sends it to the worker with
/// room, naming the holder as the source (no second ask). Costs count only uncached blocks
/// (load and KV weights 0), so each step has one right answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_aware_pulls_from_its_holder_only_once_the_holder_is_full() {
    use std::time::{Duration, Instant};
    let policy = locus_policy::PolicySource::Builtin("prefix-aware");
    let weights = [("load-weight", "0"), ("kv-weight", "0")];
    let c = cluster_with(Some(TOKEN), Some(2), policy, &weights).await;
    loads_known(&c, true).await;
    let router = format!("http://{}", c.router_addr);
    let t0 = Instant::now();
    // A worker pulls only once it has measured its own prefill speed: distinct prompts
    // (misses everywhere, ties at random) until both have.
    for i in 0.. {
        let measured = c
            .gateway
            .registry()
            .healthy()
            .iter()
            .all(|b| b.load().is_some_and(|r| r.load.prefill_tokens_per_second.is_some()));
        if measured {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the workers never measured prefill");
        let text = format!("Warm-up {i}: a prompt long enough for a block of its own, {PROMPT}");
        through_text(&c, &text, 4).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let (holder, computed) = through_text(&c, PROMPT, 12).await;
    let backend = || {
        let healthy = c.gateway.registry().healthy();
        healthy.into_iter().find(|b| b.url == holder).expect("the holder is registered")
    };
    // The router hears the holder's blocks.
    while c.gateway.policy().kv().leading(backend().id(), &prompt_blocks()) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no KV events from the holder");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long generations on the same prefix take the holder's slots, one at a time.
    let block = |tail: &str| {
        let url = format!("{router}/generate");
        let long = json!({"text": format!("{PROMPT} {tail}"),
                          "sampling_params": {"max_new_tokens": 900, "ignore_eos": true}});
        tokio::spawn(async move {
            let _ = reqwest::Client::new().post(url).json(&long).send().await;
        })
    };
    let first = block("And so");
    while backend().in_flight() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "a blocker never reached the holder");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Busy, with one slot left: the prompt stays on its holder, read from its store (13
    // tokens: not the answer cached for 12).
    let (on, body) = through_text(&c, PROMPT, 13).await;
    assert_eq!(on, holder, "a holder with room lent its prefix instead of serving it");
    assert_eq!(body["meta_info"].get("transferred_tokens"), None, "{body}");
    assert!(body["meta_info"]["cached_tokens"].as_u64().unwrap() > 0, "{body}");
    let second = block("Then");
    while backend().in_flight() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "a blocker never reached the holder");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Full: the other worker, which pulls the prefix from the holder.
    let (on, pulled) = through_text(&c, PROMPT, 12).await;
    assert_ne!(on, holder, "a full holder took the request");
    assert_eq!(pulled["text"], computed["text"]);
    let prompt_tokens = pulled["meta_info"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(pulled["meta_info"]["transferred_tokens"], (prompt_tokens - 1) / 16 * 16);
    assert_eq!(metric(&router, "locus_router_kv_sources_total", "named").await, 1.0);
    assert_eq!(metric(&router, "locus_router_full_choices_total", "").await, 0.0);
    first.abort();
    second.abort();
}

/// `text` through the router with no session: the worker that answered and the body.
async fn through_text(c: &cluster::Cluster, text: &str, n: usize) -> (String, Value) {
    let params = json!({"max_new_tokens": n, "temperature": 0});
    let r = reqwest::Client::new()
        .post(format!("http://{}/generate", c.router_addr))
        .json(&json!({"text": text, "sampling_params": params}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let worker = r.headers()["x-locus-worker"].to_str().unwrap().to_string();
    (worker, r.json().await.unwrap())
}

/// `PROMPT`'s block hashes, as the workers name them in their KV events.
fn prompt_blocks() -> Vec<u64> {
    let ids = locus_tokens::Tokenizer::new().encode(PROMPT);
    locus_tokens::block_hashes(&ids[..ids.len() / 16 * 16])
}

/// `/kv_events` tells which prompts are hot: with a cluster token it needs that token (as
/// the header or a bearer token) or the admin token; a worker with neither keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_need_the_cluster_token_or_the_admin_token() {
    let opts =
        WorkerOptions { admin_token: Some("admin-secret".into()), ..pull_options(Some(TOKEN)) };
    let (guarded, _) = spawn_worker(opts).await;
    let open = worker(None).await;
    let status = |url: String, headers: Vec<(&'static str, String)>| async move {
        let mut req = reqwest::Client::new().get(format!("{url}/kv_events"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send().await.unwrap().status().as_u16()
    };
    let url = base(&guarded);
    assert_eq!(status(url.clone(), vec![]).await, 401);
    assert_eq!(status(url.clone(), vec![(CLUSTER_TOKEN, "guess".into())]).await, 401);
    assert_eq!(status(url.clone(), vec![("authorization", "Bearer guess".into())]).await, 401);
    assert_eq!(status(url.clone(), vec![(CLUSTER_TOKEN, TOKEN.into())]).await, 200);
    assert_eq!(status(url.clone(), vec![("authorization", format!("Bearer {TOKEN}"))]).await, 200);
    assert_eq!(status(url, vec![("authorization", "Bearer admin-secret".into())]).await, 200);
    assert_eq!(status(base(&open), vec![]).await, 200);
}

/// This machine's address on its default route, if it has one that is not loopback.
fn own_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // A UDP connect sends nothing: it only picks the route.
    s.connect("10.255.255.255:9").ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// A server on this machine's non-loopback address that answers every request 200 with an
/// empty body and keeps the header lines of each one it gets.
async fn recording_server(ip: std::net::IpAddr) -> (String, Arc<parking_lot::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 << 10];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                log.lock().push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

/// Over plain HTTP, neither the router (following a worker's KV events) nor a worker
/// (pulling KV) sends the cluster token to a host that is not loopback unless the operator
/// says the network is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_goes_over_plain_http_to_another_host_unless_allowed() {
    let Some(ip) = own_ip() else {
        eprintln!("skipped: this machine has no non-loopback address");
        return;
    };
    for allowed in [false, true] {
        // The router follows a worker on a non-loopback address.
        let (fake, seen) = recording_server(ip).await;
        let opts = locus::router::RouterOptions {
            workers: vec![fake.clone()],
            cluster_token: Some(TOKEN.into()),
            worker_token: Some("worker-secret".into()),
            cluster_over_http: allowed,
            load_interval: std::time::Duration::from_millis(50),
            ..Default::default()
        };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (_addr, _admin, _gw) = locus::router::spawn(opts, any, any).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !seen.lock().iter().any(|r| r.starts_with("get /kv_events")) {
            assert!(std::time::Instant::now() < deadline, "the router never asked for events");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let events: Vec<String> =
            seen.lock().iter().filter(|r| r.starts_with("get /kv_events")).cloned().collect();
        for r in &events {
            assert_eq!(r.contains(TOKEN), allowed, "allowed {allowed}: {r}");
            assert_eq!(r.contains("worker-secret"), allowed, "allowed {allowed}: {r}");
        }

        // A worker told to pull from a source on a non-loopback address.
        let (source, asked) = recording_server(ip).await;
        let opts = WorkerOptions { cluster_over_http: allowed, ..pull_options(Some(TOKEN)) };
        let (importer, _) = spawn_worker(opts).await;
        let url = base(&importer);
        let (answer, _) = generate(&url, &[(KV_SOURCE, &source), (CLUSTER_TOKEN, TOKEN)]).await;
        assert_eq!(answer["meta_info"]["transferred_tokens"], 0);
        let skipped = metric(&url, "locus_worker_kv_pulls_total", "skipped_plain_http").await;
        assert_eq!((skipped, asked.lock().len()), if allowed { (0.0, 1) } else { (1.0, 0) });
    }
}
