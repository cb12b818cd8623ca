//! What a worker tells a router besides answers: `/kv_events` streams its prefix store's
//! changes (a snapshot first, then every store and drop, keyed by the portable block hashes
//! a router computes itself), and `/load` reports its queue, KV budget and measured token
//! rate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locus::api::signals::{KvEvent, KvEventKind, LoadReport};
use locus::cluster;
use locus::worker::{self, WorkerHandle, WorkerOptions};
use locus_engine::prefix::{BLOCK_TOKENS, block_bytes, block_hashes};
use locus_engine::{Engine, EngineOptions, ModelSource, Tokenizer};
use serde_json::{Value, json};

const TOKEN: &str = "signals-token";

async fn worker_with(options: WorkerOptions) -> (WorkerHandle, Arc<Engine>) {
    let opts = EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() };
    let engine = cluster::load_engines(&ModelSource::Synthetic, 1, opts).await.unwrap().remove(0);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let w = worker::spawn(engine.clone(), options, any).await.unwrap();
    (w, engine)
}

/// No overall timeout: event streams stay open; each read below has its own.
fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get_json(http: &reqwest::Client, url: String) -> Value {
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

async fn generate(http: &reqwest::Client, base: &str, prompt: &str) {
    let body = json!({"text": prompt, "sampling_params": {"max_new_tokens": 2}});
    let r = http.post(format!("{base}/generate")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
}

/// Reads the `data:` objects of an event stream one at a time (comments skipped).
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(http: &reqwest::Client, base: &str) -> Self {
        let resp = http.get(format!("{base}/kv_events")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let kind = resp.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Self { resp, buf: String::new() }
    }

    /// The next event, as raw JSON (so that absent fields are checked too).
    async fn next_raw(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Some(serde_json::from_str(data).expect("one JSON object per event"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("an event in time")
                .expect("the stream reads");
            self.buf.push_str(std::str::from_utf8(&chunk?).unwrap());
        }
    }

    async fn next(&mut self) -> KvEvent {
        let raw = self.next_raw().await.expect("the stream is open");
        serde_json::from_value(raw).unwrap()
    }

    /// The snapshot a stream starts with: checks its shape, returns its seq and hashes.
    async fn snapshot(&mut self, worker_id: &str) -> (u64, Vec<u64>) {
        let cleared = self.next_raw().await.unwrap();
        let stored = self.next_raw().await.unwrap();
        assert_eq!(cleared["type"], "cleared", "{cleared}");
        assert_eq!(cleared["hashes"], json!([]), "{cleared}");
        assert_eq!(stored["type"], "stored", "{stored}");
        for e in [&cleared, &stored] {
            assert_eq!(e["snapshot"], true, "{e}");
            assert_eq!(e["worker_id"], worker_id, "{e}");
            assert!(e["started_at_us"].as_u64().unwrap() > 0, "{e}");
            assert!(e["ts_us"].as_u64().unwrap() > 0, "{e}");
        }
        assert_eq!(cleared["seq"], stored["seq"]);
        assert_eq!(cleared["started_at_us"], stored["started_at_us"]);
        let stored: KvEvent = serde_json::from_value(stored).unwrap();
        (stored.seq, stored.hashes)
    }
}

/// Asserts a live event's shape: no snapshot fields.
fn assert_live(e: &Value) {
    for field in ["snapshot", "worker_id", "started_at_us"] {
        assert!(e.get(field).is_none(), "{field} in a live event: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_snapshot_then_every_store_and_flush_by_portable_hash() {
    let opts = WorkerOptions { worker_id: "w-signals".into(), ..WorkerOptions::default() };
    let (w, _engine) = worker_with(opts).await;
    let base = format!("http://{}", w.addr);
    let http = client();
    let mut events = Events::open(&http, &base).await;
    assert_eq!(events.snapshot("w-signals").await, (0, vec![]));

    // The engine keeps every full 16-token block of the prompt (not the partial tail), keyed
    // by the hashes a router computes from the same token ids.
    let prompt = "The quick brown fox jumps over the lazy dog while the cat watches from \
                  the old wooden fence, and the farmer counts his sheep one by one as the \
                  sun goes down behind the distant hills of the quiet valley.";
    let ids = Tokenizer::new().encode(prompt);
    assert!(ids.len() >= 40 && !ids.len().is_multiple_of(BLOCK_TOKENS), "{} tokens", ids.len());
    let first = block_hashes(&ids);
    assert_eq!(first.len(), ids.len() / BLOCK_TOKENS);
    generate(&http, &base, prompt).await;
    let raw = events.next_raw().await.unwrap();
    assert_live(&raw);
    let e: KvEvent = serde_json::from_value(raw).unwrap();
    assert_eq!((e.seq, e.kind, &e.hashes), (1, KvEventKind::Stored, &first));

    // The same prompt with a new ending: only the blocks past the shared prefix are new.
    let longer = format!("{prompt} Then night falls and every animal on the farm goes to sleep.");
    let longer_ids = Tokenizer::new().encode(&longer);
    let shared = ids.iter().zip(&longer_ids).take_while(|(a, b)| a == b).count() / BLOCK_TOKENS;
    assert!(longer_ids.len() / BLOCK_TOKENS > shared, "the longer prompt has a new full block");
    generate(&http, &base, &longer).await;
    let e = events.next().await;
    assert_eq!((e.seq, e.kind), (2, KvEventKind::Stored));
    assert_eq!(e.hashes, block_hashes(&longer_ids)[shared..]);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"locus_worker_kv_events_total{type="stored"} 2"#), "{metrics}");
    assert!(metrics.contains("locus_worker_kv_event_subscribers 1"), "{metrics}");

    let r = http.post(format!("{base}/flush_cache")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let raw = events.next_raw().await.unwrap();
    assert_live(&raw);
    let e: KvEvent = serde_json::from_value(raw).unwrap();
    assert_eq!((e.seq, e.kind, e.hashes.len()), (3, KvEventKind::Cleared, 0));

    // A later subscriber's snapshot lists what is resident, numbered after the last event.
    let other = "Once upon a time in a land far away there lived a king who had three \
                 daughters, each more clever than the last, and a castle full of books.";
    let other_ids = Tokenizer::new().encode(other);
    generate(&http, &base, other).await;
    let e = events.next().await;
    assert_eq!((e.seq, e.kind, &e.hashes), (4, KvEventKind::Stored, &block_hashes(&other_ids)));
    let mut again = Events::open(&http, &base).await;
    assert_eq!(again.snapshot("w-signals").await, (4, block_hashes(&other_ids)));
    drop(events);

    // Stopping the worker ends the stream (a graceful stop must not wait for it forever).
    tokio::time::timeout(Duration::from_secs(10), w.stop())
        .await
        .expect("the worker stops with a subscriber connected")
        .unwrap();
    assert!(again.next_raw().await.is_none(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_kv_subscriber_gets_a_fresh_snapshot_and_stays_connected() {
    let (w, engine) = worker_with(WorkerOptions::default()).await;
    let base = format!("http://{}", w.addr);
    let http = client();
    let mut events = Events::open(&http, &base).await;
    assert_eq!(events.snapshot("worker").await, (0, vec![]));
    // Far more operations than the channel holds while this client reads nothing: once the
    // sockets' buffers are full the worker's side falls behind the channel.
    let n: u64 = 200_000;
    for _ in 0..n {
        engine.flush_cache();
    }
    let (mut last, mut resnapshots) = (0, 0);
    while last < n {
        let raw = events.next_raw().await.expect("the stream stays open");
        let e: KvEvent = serde_json::from_value(raw.clone()).unwrap();
        if e.snapshot {
            // Lagged: a whole snapshot, numbered at or after what was seen.
            assert_eq!(e.kind, KvEventKind::Cleared, "{raw}");
            let stored = events.next().await;
            assert!(stored.snapshot && stored.kind == KvEventKind::Stored && stored.seq == e.seq);
            assert!(e.seq >= last, "{} after {last}", e.seq);
            resnapshots += 1;
        } else {
            assert_eq!(e.seq, last + 1, "no gap without a snapshot");
            assert_eq!(e.kind, KvEventKind::Cleared);
        }
        last = e.seq;
    }
    assert!(resnapshots > 0, "the subscriber never lagged: the test proves nothing");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_queue_kv_blocks_and_the_measured_token_rate() {
    let (w, engine) = worker_with(WorkerOptions::default()).await;
    let base = format!("http://{}", w.addr);
    let http = client();
    let info = get_json(&http, format!("{base}/server_info")).await;
    let model = get_json(&http, format!("{base}/model_info")).await;
    let raw = get_json(&http, format!("{base}/load")).await;
    let load: LoadReport = serde_json::from_value(raw.clone()).unwrap();
    let block = block_bytes(
        model["n_layer"].as_u64().unwrap() as usize,
        model["n_embd"].as_u64().unwrap() as usize,
    );
    let c = &engine.model_info().config;
    assert_eq!(block, block_bytes(c.n_layer, c.n_embd));
    assert_eq!(
        load.kv_blocks_total,
        info["scheduler"]["kv_capacity_bytes"].as_u64().unwrap() / block,
        "{raw}"
    );
    assert_eq!(
        load.prefix_blocks_total,
        info["prefix_cache"]["capacity_bytes"].as_u64().unwrap() / block,
        "{raw}"
    );
    assert_eq!(load.prefix_blocks, info["prefix_cache"]["entries"].as_u64().unwrap());
    assert_eq!(load.worker_id, "worker");
    assert_eq!(load.max_queue as u64, info["max_queue"].as_u64().unwrap());
    assert_eq!(load.max_batch.map(u64::from), info["scheduler"]["max_batch"].as_u64());
    assert_eq!(load.queue_available as u64, info["queue_available"].as_u64().unwrap());
    assert_eq!((load.waiting, load.running, load.kv_blocks_used), (0, 0, 0));
    assert_eq!(load.tokens_per_second, 0.0);
    assert!(load.ts_us > 0);
    // Every field of the wire shape, and no other: the prefill and pull speeds are absent
    // until measured, and the KV fingerprint is absent without a cluster token.
    let mut fields: Vec<&str> = raw.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    let expected = [
        "generated_tokens",
        "kv_block_bytes",
        "kv_blocks_total",
        "kv_blocks_used",
        "max_batch",
        "max_queue",
        "prefix_blocks",
        "prefix_blocks_total",
        "queue_available",
        "running",
        "tokens_per_second",
        "ts_us",
        "waiting",
        "worker_id",
    ];
    assert_eq!(fields, expected);

    // While a long generation streams, the rate is measured above 0 within 2 s.
    let body = json!({"prompt": "Count with me:", "max_tokens": 1000, "ignore_eos": true,
                      "stream": true});
    let mut stream = http.post(format!("{base}/v1/completions")).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap().expect("a first event");
    let started = Instant::now();
    let busy = loop {
        let l: LoadReport =
            serde_json::from_value(get_json(&http, format!("{base}/load")).await).unwrap();
        if l.tokens_per_second > 0.0 {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "no rate within 2 s: {l:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(busy.running, 1, "{busy:?}");
    assert!(busy.kv_blocks_used > 0 && busy.kv_blocks_used <= busy.kv_blocks_total, "{busy:?}");
    assert!(busy.generated_tokens > load.generated_tokens, "{busy:?}");
    assert_eq!(busy.queue_available, busy.max_queue - 1, "{busy:?}");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("locus_worker_tokens_per_second "), "{metrics}");
    let total = format!(r#"locus_worker_kv_blocks{{state="total"}} {}"#, busy.kv_blocks_total);
    assert!(metrics.contains(&total), "{metrics}");
    drop(stream);
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_need_the_admin_token_when_one_is_set() {
    let opts = WorkerOptions { admin_token: Some(TOKEN.into()), ..WorkerOptions::default() };
    let (w, _engine) = worker_with(opts).await;
    let base = format!("http://{}", w.addr);
    let http = client();
    let r = http.get(format!("{base}/kv_events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{base}/kv_events")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{base}/kv_events")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut events = Events { resp: r, buf: String::new() };
    events.snapshot("worker").await;
    // The load report stays open: routers poll it without credentials.
    let r = http.get(format!("{base}/load")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(events);
    w.stop().await.unwrap();
}
