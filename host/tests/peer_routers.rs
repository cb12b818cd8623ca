//! Locus workers behind the peer routers users run today: SGLang's `sglang-router`
//! and vLLM's `vllm-router` (pinned in `scripts/peer-routers.sh`), each started as a child
//! process in front of two in-process workers (synthetic distilgpt2), real HTTP on loopback.
//!
//! Skips (passes, printing "skipping: ...") when the script cannot install the routers,
//! e.g. with no route to PyPI.
//!
//! What the routers do to a request, measured with a capture server (sglang-router 0.3.2,
//! vllm-router 0.1.17), that a worker must accept:
//! - `/generate`: both re-serialize the body through their own typed struct. sglang-router
//!   adds `model: null, return_text_in_logprobs, stream, log_metrics, return_hidden_states,
//!   background, no_logs, return_bytes, return_entropy`; vllm-router adds `stream,
//!   return_logprob, return_hidden_states`. Both drop `sampling_params.seed` (sglang keeps
//!   `sampling_seed`); sglang-router also drops a top-level `prompt` (only `text` survives).
//! - `/v1/completions`: both add `echo, no_stop_trim, ignore_eos, skip_special_tokens,
//!   return_hidden_states` and keep unknown fields. sglang-router answers 422 itself when
//!   `model` is missing. vllm-router with the cache_aware policy first POSTs
//!   `/v1/completions/render` and `/tokenize` to every worker (404 is tolerated).
//! - `/v1/chat/completions`: sglang-router renames `max_tokens` to `max_completion_tokens`;
//!   both add `logprobs, no_stop_trim, ignore_eos, continue_final_message,
//!   skip_special_tokens, separate_reasoning, stream_reasoning, return_hidden_states`
//!   (vllm also `include_reasoning`).
//! - Answers are passed through unparsed (no `meta_info`/`usage`/`[DONE]` needed), so the
//!   values asserted below are the worker's own.
//! - sglang-router counts 4xx answers as circuit-breaker failures: 10 per worker and it
//!   answers 503 "no_available_workers" for 60 s. A worker that rejects the fields above
//!   takes the whole router down.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use locus::cluster;
use locus::worker::{self, WorkerHandle, WorkerOptions};
use serde_json::{Value, json};

/// Runs `scripts/peer-routers.sh` once per test binary (the two tests would otherwise pip
/// into one venv at the same time); `None` means skip.
fn peer_bin_dir() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/peer-routers.sh");
        let out = match Command::new("bash").arg(&script).stderr(Stdio::inherit()).output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipping: cannot run {}: {e}", script.display());
                return None;
            }
        };
        if !out.status.success() {
            eprintln!("skipping: {} failed ({})", script.display(), out.status);
            return None;
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout.lines().last().map(|l| PathBuf::from(l.trim()));
        if !bin.as_ref().is_some_and(|b| b.is_dir()) {
            eprintln!("skipping: {} printed no bin dir: {stdout:?}", script.display());
            return None;
        }
        bin
    })
    .clone()
}

/// A port nobody listens on right now (the router binds it a moment later).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[derive(Clone, Copy, Debug)]
enum Peer {
    Sglang,
    Vllm,
}

/// A peer router child process; killed on drop.
struct PeerRouter {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl PeerRouter {
    fn start(peer: Peer, bin: &Path, workers: &[SocketAddr]) -> Self {
        let port = free_port();
        let mut cmd = match peer {
            Peer::Sglang => {
                let mut c = Command::new(bin.join("python"));
                c.args(["-m", "sglang_router.launch_router"]);
                c
            }
            Peer::Vllm => Command::new(bin.join("vllm-router")),
        };
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        cmd.arg("--worker-urls").args(workers.iter().map(|a| format!("http://{a}")));
        // Both bind a Prometheus listener on 29000 by default (vllm cannot turn it off):
        // a free port each, so the two tests can run side by side.
        cmd.args(["--prometheus-port", &free_port().to_string()]);
        // round_robin: both workers get requests, deterministically; the default cache_aware
        // would send everything here to one worker.
        cmd.args(["--policy", "round_robin"]);
        // sglang-router fetches a tokenizer from Hugging Face for a worker that reports
        // `model_path`/`tokenizer_path` in /server_info: keep any such fetch on this machine
        // (a dead proxy for https; loopback, where the workers are, exempt).
        cmd.env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("https_proxy", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("HF_HUB_OFFLINE", "1");
        let log = std::env::temp_dir().join(format!("locus-peer-{peer:?}-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{peer:?} router starts: {e}"));
        Self { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The last 40 lines the router logged, for failure messages.
    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until `GET /workers` (both routers have it) lists every worker healthy.
    /// sglang-router opens its port at once and registers workers in the background;
    /// vllm-router opens it only once every worker's /health answered 200. About 1 s
    /// either way on an idle machine.
    async fn wait_ready(&mut self, http: &reqwest::Client, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the router exited ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(self.url("/workers")).send().await
                && let Ok(v) = r.json::<Value>().await
                && let Some(ws) = v["workers"].as_array()
                && ws.len() == workers
                && ws.iter().all(|w| w["is_healthy"] == true)
            {
                return;
            }
            assert!(Instant::now() < deadline, "the router never served:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PeerRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_workers(n: usize) -> Vec<WorkerHandle> {
    let engines = cluster::load_engines(
        &locus_engine::ModelSource::Synthetic,
        n,
        locus_engine::EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() },
    )
    .await
    .unwrap();
    let mut workers = Vec::new();
    for (i, engine) in engines.into_iter().enumerate() {
        let opts = WorkerOptions { worker_id: format!("worker-{}", i + 1), ..Default::default() };
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        workers.push(worker::spawn(engine, opts, addr).await.unwrap());
    }
    workers
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// POSTs `body`, asserts a 200, and returns the answer's content type and text.
async fn post(http: &reqwest::Client, url: &str, body: Value) -> (String, String) {
    let r = http.post(url).json(&body).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status();
    let ctype = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "POST {url} {body}: {text}");
    (ctype, text)
}

/// The JSON events of a Server-Sent Events body, asserting it ends with `data: [DONE]`.
fn sse_events(ctype: &str, body: &str) -> Vec<Value> {
    assert!(ctype.starts_with("text/event-stream"), "not SSE ({ctype}): {body}");
    let data: Vec<&str> =
        body.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "no [DONE] at the end: {body}");
    let events: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d}: {e}")))
        .collect();
    assert!(!events.is_empty(), "no events: {body}");
    for e in &events {
        assert!(e.get("error").is_none(), "error event: {e}");
    }
    events
}

fn positive(v: &Value) -> bool {
    v.as_u64().is_some_and(|n| n > 0)
}

/// Every endpoint through the router, asserting on values, not only on 200.
async fn exercise(http: &reqwest::Client, router: &PeerRouter, model: &str) {
    let prompt = "The capital of France is";

    // /generate, not streamed, twice: round_robin must reach both workers.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let body =
            json!({"text": prompt, "sampling_params": {"max_new_tokens": 4, "temperature": 0}});
        let (_, text) = post(http, &router.url("/generate"), body).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(!v["text"].as_str().unwrap_or("").is_empty(), "{v}");
        assert!(positive(&v["meta_info"]["prompt_tokens"]), "{v}");
        assert!(positive(&v["meta_info"]["completion_tokens"]), "{v}");
        served.insert(v["meta_info"]["worker_id"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(served.len(), 2, "round_robin reached {served:?}");

    // /generate, streamed: each SGLang event carries the whole text so far (not a delta)
    // and meta_info.
    let body = json!({"text": prompt, "sampling_params": {"max_new_tokens": 4}, "stream": true});
    let (ctype, text) = post(http, &router.url("/generate"), body).await;
    let events = sse_events(&ctype, &text);
    for pair in events.windows(2) {
        let (a, b) = (pair[0]["text"].as_str().unwrap(), pair[1]["text"].as_str().unwrap());
        assert!(b.starts_with(a), "the streamed text is not cumulative: {text}");
    }
    let last = events.last().unwrap();
    assert!(!last["text"].as_str().unwrap_or("").is_empty(), "{last}");
    assert!(positive(&last["meta_info"]["completion_tokens"]), "{last}");

    // /v1/completions, not streamed. sglang-router rejects a body without `model`.
    let body = json!({"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0});
    let (_, text) = post(http, &router.url("/v1/completions"), body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(!v["choices"][0]["text"].as_str().unwrap_or("").is_empty(), "{v}");
    assert!(positive(&v["usage"]["prompt_tokens"]), "{v}");
    assert!(positive(&v["usage"]["completion_tokens"]), "{v}");

    // /v1/completions, streamed, with usage in the last chunk.
    let body = json!({"model": model, "prompt": prompt, "max_tokens": 4, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (ctype, text) = post(http, &router.url("/v1/completions"), body).await;
    let events = sse_events(&ctype, &text);
    let joined: String =
        events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect::<String>();
    assert!(!joined.is_empty(), "{text}");
    assert!(events.iter().any(|e| positive(&e["usage"]["completion_tokens"])), "{text}");

    // /v1/chat/completions, not streamed. sglang-router sends `max_completion_tokens`
    // instead of `max_tokens`.
    let messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let body = json!({"model": model, "messages": messages, "max_tokens": 4, "temperature": 0});
    let (_, text) = post(http, &router.url("/v1/chat/completions"), body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
    assert!(!v["choices"][0]["message"]["content"].as_str().unwrap_or("").is_empty(), "{v}");
    assert!(positive(&v["usage"]["completion_tokens"]), "{v}");

    // /v1/chat/completions, streamed.
    let body = json!({"model": model, "messages": messages, "max_tokens": 4, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (ctype, text) = post(http, &router.url("/v1/chat/completions"), body).await;
    let events = sse_events(&ctype, &text);
    let joined: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect::<String>();
    assert!(!joined.is_empty(), "{text}");
    assert!(events.iter().any(|e| positive(&e["usage"]["completion_tokens"])), "{text}");
}

async fn behind(peer: Peer) {
    let Some(bin) = tokio::task::spawn_blocking(peer_bin_dir).await.unwrap() else {
        return;
    };
    let workers = start_workers(2).await;
    let addrs: Vec<SocketAddr> = workers.iter().map(|w| w.addr).collect();
    let http = client();
    // The model name as the worker reports it (sglang-router lists "unknown" unless a
    // worker's /server_info has `served_model_name` or `model_path`).
    let models: Value = http
        .get(format!("http://{}/v1/models", addrs[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = models["data"][0]["id"].as_str().expect("a model id").to_string();

    let mut router = PeerRouter::start(peer, &bin, &addrs);
    router.wait_ready(&http, addrs.len()).await;
    exercise(&http, &router, &model).await;
    // Both routers list the model under the name the workers report.
    let listed: Value =
        http.get(router.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert!(listed.to_string().contains(&model), "{peer:?} lists {listed}");
    drop(router);
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locus_workers_serve_behind_sglang_router() {
    behind(Peer::Sglang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locus_workers_serve_behind_vllm_router() {
    behind(Peer::Vllm).await;
}
