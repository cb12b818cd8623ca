//! A worker serves many requests at once through its HTTP API: streams run in one batch, a
//! client that leaves frees its place at the next step, stop token ids end a generation with
//! SGLang's finish reason, and prompts too large for the context are refused before they are
//! tokenized.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locus::cluster;
use locus::worker::{self, WorkerHandle, WorkerOptions};
use locus_engine::{Engine, EngineOptions, GenerateRequest, Limits, ModelSource};
use serde_json::{Value, json};

async fn worker_with(limits: Limits) -> (WorkerHandle, Arc<Engine>) {
    let opts = EngineOptions { prefix_cache_bytes: 16 << 20, limits, ..Default::default() };
    let engine = cluster::load_engines(&ModelSource::Synthetic, 1, opts).await.unwrap().remove(0);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let w = worker::spawn(engine.clone(), WorkerOptions::default(), any).await.unwrap();
    (w, engine)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_decode_together_and_leavers_free_their_places() {
    let (w, engine) = worker_with(Limits { max_batch: 4, ..Limits::default() }).await;
    let http = client();
    let url = format!("http://{}/v1/completions", w.addr);
    let mut streams = Vec::new();
    for i in 0..4 {
        let body = json!({"prompt": format!("Story number {i}:"), "max_tokens": 400,
                          "ignore_eos": true, "stream": true});
        let mut r = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.chunk().await.unwrap().expect("a first event");
        streams.push(r);
    }
    // All four have produced text and none has finished: they are decoding side by side.
    // (The gauges are published at the end of each step, so the step that sent the fourth
    // its first text may not have published yet.)
    let mut metrics = String::new();
    for _ in 0..100 {
        let r = http.get(format!("http://{}/metrics", w.addr)).send().await.unwrap();
        metrics = r.text().await.unwrap();
        if metrics.contains("locus_worker_num_requests_running 4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metrics.contains("locus_worker_num_requests_running 4"), "{metrics}");
    assert!(metrics.contains("locus_worker_num_requests_waiting 0"), "{metrics}");
    let info: Value = http
        .get(format!("http://{}/server_info", w.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["scheduler"]["max_batch"], 4);
    assert!(info["scheduler"]["kv_reserved_bytes"].as_u64().unwrap() > 0);
    drop(streams);
    until("the batch to empty", || {
        let s = engine.scheduler_stats();
        s.running == 0 && s.kv_reserved_bytes == 0
    })
    .await;
    assert_eq!(engine.scheduler_stats().cancelled, 4);
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_place_a_dropped_stream_lets_the_next_request_in_at_once() {
    let (w, engine) = worker_with(Limits { max_batch: 1, ..Limits::default() }).await;
    let http = client();
    let url = format!("http://{}/v1/completions", w.addr);
    let body = json!({"prompt": "A very long story:", "max_tokens": 1000, "ignore_eos": true,
                      "stream": true});
    let mut r = http.post(&url).json(&body).send().await.unwrap();
    r.chunk().await.unwrap().expect("a first event");
    let at_drop = engine.scheduler_stats().steps;
    drop(r);
    let body = json!({"prompt": "Next:", "max_tokens": 4, "stream": true});
    let mut r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().expect("a first event");
    let waited = engine.scheduler_stats().steps - at_drop;
    // The abandoned stream had ~1000 steps to go; the worker notices at its next token.
    assert!(waited <= 12, "the next request started {waited} steps after the drop");
    w.stop().await.unwrap();
}

/// The value of a `/metrics` sample, as exposed (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_wait_and_first_token_are_timed_per_priority() {
    let (w, _engine) = worker_with(Limits { max_batch: 1, ..Limits::default() }).await;
    let http = client();
    let url = format!("http://{}/v1/completions", w.addr);
    let body = json!({"prompt": "A long story:", "max_tokens": 64, "ignore_eos": true,
                      "stream": true});
    let mut a = http.post(&url).json(&body).send().await.unwrap();
    a.chunk().await.unwrap().expect("a first event");
    // The only place is taken: a rank-3 request waits for it until the stream ends.
    let sent = Instant::now();
    let b = http
        .post(&url)
        .header("x-locus-priority", "3")
        .json(&json!({"prompt": "Next:", "max_tokens": 1}));
    let b = tokio::spawn(b.send());
    while a.chunk().await.unwrap().is_some() {}
    let a_left = sent.elapsed().as_secs_f64();
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    let m = http.get(format!("http://{}/metrics", w.addr)).send().await.unwrap();
    let m = m.text().await.unwrap();
    let count = |name: &str, p: &str| sample(&m, &format!("{name}_count{{priority=\"{p}\"}}"));
    for name in ["locus_worker_queue_seconds", "locus_worker_time_to_first_token_seconds"] {
        assert_eq!(count(name, "0"), Some(1.0), "{name}: {m}");
        assert_eq!(count(name, "3"), Some(1.0), "{name}: {m}");
    }
    // Its wait covers the rest of the stream's life (less the two requests' way in and out).
    let waited = sample(&m, "locus_worker_queue_seconds_sum{priority=\"3\"}").unwrap();
    assert!(waited >= 0.9 * a_left - 0.05, "waited {waited} s; the stream left after {a_left} s");
    let first = sample(&m, "locus_worker_time_to_first_token_seconds_sum{priority=\"3\"}");
    assert!(first.unwrap() >= waited, "{m}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_token_ids_end_the_answer_with_sglangs_finish_reason() {
    let (w, engine) = worker_with(Limits::default()).await;
    let ids: Vec<u32> = (0..12).map(|i| 2000 + 3 * i).collect();
    let req = GenerateRequest { max_new_tokens: 16, ignore_eos: true, ..Default::default() };
    let free = engine.generate_from_ids(&ids, &req, |_| {}).unwrap().token_ids;
    let stop = free[6];
    let at = free.iter().position(|&t| t == stop).unwrap();
    let url = format!("http://{}/generate", w.addr);
    let http = client();
    // The same prompt without stop ids first: the response cache must not answer the second.
    for (stop_ids, completion, kind) in
        [(json!([]), 16, "length"), (json!([stop, 50_000]), at, "stop")]
    {
        let body = json!({"input_ids": ids, "sampling_params": {"max_new_tokens": 16,
                          "ignore_eos": true, "stop_token_ids": stop_ids}});
        let a: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
        let meta = &a["meta_info"];
        assert_eq!(meta["completion_tokens"], completion, "{a}");
        assert_eq!(meta["finish_reason"]["type"], kind, "{a}");
        if kind == "stop" {
            assert_eq!(meta["finish_reason"]["matched"], stop, "{a}");
        }
    }
    let body = json!({"text": "hi", "sampling_params": {"stop_token_ids": vec![1; 65]}});
    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "sampling_params.stop_token_ids", "{e}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_one_word_prompts_are_refused_without_tokenizing_and_the_worker_goes_on() {
    let (w, _engine) = worker_with(Limits::default()).await;
    let http = client();
    for bytes in [128 << 10, 1536 << 10] {
        let word = "a".repeat(bytes);
        for (path, body, param) in [
            ("/v1/completions", json!({"prompt": word}), "prompt"),
            ("/generate", json!({"text": word}), "text"),
        ] {
            let r = http.post(format!("http://{}{path}", w.addr)).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 400, "{path} with {bytes} bytes");
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["param"], param, "{e}");
            assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
            assert!(e["error"]["message"].as_str().unwrap().contains("bytes"), "{e}");
        }
    }
    let r = http
        .post(format!("http://{}/generate", w.addr))
        .json(&json!({"text": "still serving", "sampling_params": {"max_new_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    w.stop().await.unwrap();
}
