//! The typed API end to end, through a real router and real workers: every malformed or
//! unsupported request answered with 400 (or 413/408) in the one JSON error shape naming
//! its param, each endpoint's answer and stream shape, stop sequences, request ids,
//! cancellation, admin tokens, upload limits and slow clients.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use locus::api::ErrorBody;
use locus::api::openai::{ChatCompletion, Completion};
use locus::api::sglang::GenerateResponse;
use locus::cluster::{self, Cluster, ClusterOptions};
use locus::serve::ServeLimits;
use locus::worker::{self, WorkerOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-token";

async fn start(limits: ServeLimits) -> Cluster {
    let mut o = ClusterOptions::local();
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.workers = 1;
    o.engine.prefix_cache_bytes = 64 << 20;
    o.worker.admin_token = Some(TOKEN.into());
    o.worker.limits = limits.clone();
    o.router.admin_token = Some(TOKEN.into());
    o.router.limits = limits;
    o.router.health_interval = Duration::from_millis(100);
    cluster::start(o).await.expect("cluster starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

async fn post(http: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The data lines of an event stream, `[DONE]` included.
async fn events(http: &reqwest::Client, url: &str, body: Value) -> Vec<String> {
    let r = http.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{body}");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Sends only a request head announcing `len` body bytes and expects a 413 at once, in
/// the one error shape.
async fn head_only(addr: &str, request_line: &str, headers: &str, len: usize) -> ErrorBody {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("{request_line} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..])
        .expect("the one error shape")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_in_one_shape_naming_the_param_on_router_and_worker() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let long = "word ".repeat(1500);
    let huge = "x".repeat(300_000);
    let cases: Vec<(&str, String, Option<&str>, Option<&str>)> = vec![
        ("/generate", "{not json".into(), None, None),
        ("/generate", r#"{"text": "a"} trailing"#.into(), None, None),
        ("/generate", r#"{"text": "a"}{"text": "b"}"#.into(), None, None),
        ("/generate", r#"{"text": 42}"#.into(), Some("text"), None),
        ("/generate", r#"{"text": ""}"#.into(), Some("text"), None),
        ("/generate", r#"{"sampling_params": {"max_new_tokens": 4}}"#.into(), Some("text"), None),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"temperature": -1}}"#.into(),
            Some("sampling_params.temperature"),
            None,
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"top_p": 0}}"#.into(),
            Some("sampling_params.top_p"),
            None,
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"max_new_tokens": "many"}}"#.into(),
            Some("sampling_params.max_new_tokens"),
            None,
        ),
        (
            "/generate",
            r#"{"text": "hi", "return_logprob": true}"#.into(),
            Some("return_logprob"),
            Some("unsupported_parameter"),
        ),
        (
            "/generate",
            json!({"text": long}).to_string(),
            Some("text"),
            Some("context_length_exceeded"),
        ),
        (
            "/generate",
            json!({"text": long, "stream": true}).to_string(),
            Some("text"),
            Some("context_length_exceeded"),
        ),
        (
            "/generate",
            json!({"text": huge}).to_string(),
            Some("text"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "n": 2}"#.into(),
            Some("n"),
            Some("unsupported_parameter"),
        ),
        ("/v1/completions", r#"{"prompt": "a", "logprobs": 1}"#.into(), Some("logprobs"), None),
        ("/v1/completions", r#"{"prompt": "a", "echo": true}"#.into(), Some("echo"), None),
        ("/v1/completions", r#"{"prompt": "a", "best_of": 3}"#.into(), Some("best_of"), None),
        ("/v1/completions", r#"{"prompt": "a", "suffix": "b"}"#.into(), Some("suffix"), None),
        ("/v1/completions", r#"{"max_tokens": 2}"#.into(), Some("prompt"), None),
        (
            "/v1/completions",
            json!({"prompt": long, "stream": true}).to_string(),
            Some("prompt"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": -3}"#.into(),
            Some("max_tokens"),
            None,
        ),
        ("/v1/chat/completions", r#"{"messages": []}"#.into(), Some("messages"), None),
        // More new tokens than the context holds beside the prompt: refused, not clamped.
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": {"max_new_tokens": 1000000}}"#.into(),
            Some("sampling_params.max_new_tokens"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "max_tokens": 1024}"#.into(),
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 1000000}"#.into(),
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        // A list where one request's object belongs is a batch: refused, not read in order.
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": []}"#.into(),
            Some("sampling_params"),
            None,
        ),
        (
            "/generate",
            r#"{"text": "hi", "sampling_params": [1000]}"#.into(),
            Some("sampling_params"),
            None,
        ),
        (
            "/v1/completions",
            r#"{"prompt": "a", "stream_options": [true]}"#.into(),
            Some("stream_options"),
            None,
        ),
        ("/generate", r#"["hi"]"#.into(), None, None),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "bot", "content": "a"}]}"#.into(),
            Some("messages[0].role"),
            None,
        ),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "a"}], "n": 4}"#.into(),
            Some("n"),
            None,
        ),
    ];
    for base in [format!("http://{}", c.router_addr), format!("http://{}", c.worker_addrs[0])] {
        for (path, body, param, code) in &cases {
            let started = Instant::now();
            let (status, v) = post(&http, &format!("{base}{path}"), body.clone()).await;
            let what = format!("{base}{path} {}", &body[..body.len().min(80)]);
            assert_eq!(status, 400, "{what}: {v}");
            let e: ErrorBody = serde_json::from_value(v.clone()).expect("the one error shape");
            assert_eq!(e.error.kind, "invalid_request_error", "{what}");
            assert_eq!(e.error.param.as_deref(), *param, "{what}: {}", e.error.message);
            if let Some(code) = code {
                assert_eq!(e.error.code.as_deref(), Some(*code), "{what}");
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{what}: slow refusal");
        }
        // Over the body limit: 413 in the same shape, sent before the body is.
        let e = head_only(base.trim_start_matches("http://"), "POST /generate", "", 5 << 20).await;
        assert_eq!(e.error.kind, "invalid_request_error");
    }
    // A session id longer than the router hands a routing policy: 400 naming the header;
    // one at the limit is served.
    for (len, status) in
        [(locus_policy::SESSION_BYTES_MAX + 1, 400), (locus_policy::SESSION_BYTES_MAX, 200)]
    {
        let r = http
            .post(format!("http://{}/generate", c.router_addr))
            .header("x-session-id", "s".repeat(len))
            .json(&json!({"text": "hi", "sampling_params": {"max_new_tokens": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "session id of {len} bytes");
        if status == 400 {
            let e: ErrorBody = r.json().await.expect("the one error shape");
            assert_eq!(e.error.param.as_deref(), Some("x-session-id"));
        }
    }
    // Still serving.
    let (status, v) =
        post(&http, &format!("http://{}/generate", c.router_addr), r#"{"text": "still here"}"#)
            .await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_peer_routers_and_clients_add_is_accepted_and_request_ids_travel() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let url = format!("http://{}/generate", c.router_addr);
    // sglang-router adds `model`, vllm-router `return_logprob`; SGLang clients send `rid`
    // and sampling knobs at their neutral values.
    let body = json!({"text": "The capital of France is", "model": "distilgpt2", "rid": "my-rid",
        "return_logprob": false, "logprob_start_len": -1, "some_future_field": {"x": 1},
        "sampling_params": {"max_new_tokens": 3, "top_k": -1, "min_p": 0.0,
            "repetition_penalty": 1.0, "skip_special_tokens": true}});
    let r = http.post(&url).header("x-request-id", "abc-123").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let a: GenerateResponse = r.json().await.unwrap();
    assert_eq!(a.meta_info.id, "my-rid");
    assert_eq!(a.meta_info.prompt_tokens, 5);
    assert_eq!(a.meta_info.completion_tokens, 3);
    let f = a.meta_info.finish_reason.unwrap();
    assert_eq!((f.kind.as_str(), f.length), ("length", Some(3)));
    // The router passes the id on: the worker answers with it.
    let r = http
        .post(&url)
        .header("x-request-id", "abc-456")
        .json(&json!({"text": "hello", "sampling_params": {"max_new_tokens": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-456");
    assert_eq!(r.json::<GenerateResponse>().await.unwrap().meta_info.id, "abc-456");
    // Without an id, one is made and returned, and it is the completion's id.
    let r = http
        .post(format!("http://{}/v1/completions", c.router_addr))
        .json(&json!({"model": "x", "prompt": [464, 3139, 286], "max_tokens": 2, "user": "u"}))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    let cmpl: Completion = r.json().await.unwrap();
    assert_eq!(cmpl.id, format!("cmpl-{id}"));
    let usage = cmpl.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), (3, 2, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_answers_and_streams_in_its_own_shape() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let base = format!("http://{}", c.router_addr);
    let whole: GenerateResponse = http
        .post(format!("{base}/generate"))
        .json(&json!({"text": "Once upon a time", "sampling_params": {"max_new_tokens": 12}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // SGLang: every event has the whole text so far and the counts so far; the last has
    // all of them. (Flushed, so that the stream is generated, not answered from the cache.)
    let flush = || async {
        let r = http.post(format!("http://{}/flush_cache", c.worker_addrs[0])).bearer_auth(TOKEN);
        assert_eq!(r.send().await.unwrap().status(), 200);
    };
    flush().await;
    let ev = events(&http, &format!("{base}/generate"),
        json!({"text": "Once upon a time", "sampling_params": {"max_new_tokens": 12}, "stream": true})).await;
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> =
        ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(parsed.len() >= 3, "{ev:?}");
    let texts: Vec<&str> = parsed.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert!(texts.windows(2).all(|w| w[1].starts_with(w[0])), "not cumulative: {texts:?}");
    let last: GenerateResponse = serde_json::from_value(parsed.last().unwrap().clone()).unwrap();
    assert_eq!(last.text, whole.text);
    assert_eq!(last.meta_info.completion_tokens, 12);
    assert!(parsed[0]["meta_info"]["finish_reason"].is_null());
    let counts: Vec<u64> =
        parsed.iter().map(|v| v["meta_info"]["completion_tokens"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts[0] >= 1, "{counts:?}");
    assert!(parsed.iter().all(|v| v["meta_info"]["prompt_tokens"] == 4));

    // OpenAI completions: chunks of new text, the finish reason, then usage when asked.
    let ev = events(
        &http,
        &format!("{base}/v1/completions"),
        json!({"prompt": "Once upon a time",
        "max_tokens": 12, "stream": true, "seed": 2, "stream_options": {"include_usage": true}}),
    )
    .await;
    let chunks: Vec<Completion> =
        ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String =
        chunks.iter().flat_map(|c| c.choices.iter().map(|c| c.text.clone())).collect();
    assert_eq!(text, whole.text, "streamed text differs from the whole answer");
    let usage_chunk = chunks.last().unwrap();
    assert!(usage_chunk.choices.is_empty());
    assert_eq!(usage_chunk.usage.unwrap().completion_tokens, 12);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish.choices[0].finish_reason.as_deref(), Some("length"));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.usage.is_none()));

    // Chat: the role first, then content deltas, then the finish reason.
    let body = json!({"messages": [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a story."}], "max_tokens": 8});
    let whole: ChatCompletion = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole.object, "chat.completion");
    let message = whole.choices[0].message.clone().unwrap();
    assert_eq!(message.role, "assistant");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    flush().await;
    let ev = events(&http, &format!("{base}/v1/chat/completions"), sbody).await;
    let chunks: Vec<ChatCompletion> =
        ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
    assert_eq!(chunks[0].choices[0].delta.as_ref().unwrap().role.as_deref(), Some("assistant"));
    let content: String =
        chunks.iter().filter_map(|c| c.choices.first()?.delta.as_ref()?.content.clone()).collect();
    assert_eq!(content, message.content);
    assert!(chunks.last().unwrap().choices[0].finish_reason.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_end_the_text_before_them_streamed_or_not() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let url = format!("http://{}/v1/completions", c.router_addr);
    let free: Completion = http
        .post(&url)
        .json(&json!({"prompt": "In the beginning", "max_tokens": 24}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = free.choices[0].text.clone();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    // A stop taken from the middle of the free text: the answer ends just before its first
    // occurrence.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    let cut: Completion = http
        .post(&url)
        .json(&json!({"prompt": "In the beginning", "max_tokens": 24, "stop": [stop]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cut.choices[0].text, want);
    assert_eq!(cut.choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(cut.usage.unwrap().completion_tokens < 24);
    let ev = events(
        &http,
        &url,
        json!({"prompt": "In the beginning", "max_tokens": 24, "stop": stop,
        "stream": true, "seed": 1}),
    )
    .await;
    let streamed: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Completion>(e).unwrap())
        .flat_map(|c| c.choices.into_iter().map(|c| c.text))
        .collect();
    assert_eq!(streamed, want, "the stop sequence leaked into the stream");
    let sgl: GenerateResponse = http.post(format!("http://{}/generate", c.router_addr))
        .json(&json!({"text": "In the beginning", "sampling_params": {"max_new_tokens": 24, "stop": stop, "no_stop_trim": true}}))
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(sgl.text, format!("{want}{stop}"));
    assert_eq!(sgl.meta_info.finish_reason.unwrap().matched, Some(Value::from(stop)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_next_turn_reuses_the_cached_prefix() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let url = format!("http://{}/v1/chat/completions", c.router_addr);
    let mut messages = vec![
        json!({"role": "system", "content": "You are a helpful assistant who answers questions about the history of European railways in detail."}),
        json!({"role": "user", "content": "When did the first public railway open?"}),
    ];
    let first: ChatCompletion = http
        .post(&url)
        .json(&json!({"messages": messages, "max_tokens": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reply = first.choices[0].message.clone().unwrap().content;
    messages.push(json!({"role": "assistant", "content": reply}));
    messages.push(json!({"role": "user", "content": "And the second?"}));
    let second: ChatCompletion = http
        .post(&url)
        .json(&json!({"messages": messages, "max_tokens": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_prompt = first.usage.unwrap().prompt_tokens;
    let cached = second.usage.unwrap().prompt_tokens_details.unwrap().cached_tokens;
    assert!(
        cached >= 16 && cached <= first_prompt,
        "cached {cached} of a {first_prompt}-token first turn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stream_frees_its_generation() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let worker = format!("http://{}", c.worker_addrs[0]);
    let mut r = http.post(format!("{worker}/v1/completions"))
        .json(&json!({"prompt": "A very long story:", "max_tokens": 1000, "ignore_eos": true, "stream": true}))
        .send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().expect("a first event");
    let left = Instant::now();
    drop(r);
    // The worker notices at its next piece and counts it; a new request is served at once.
    let metrics = || async {
        http.get(format!("{worker}/metrics")).send().await.unwrap().text().await.unwrap()
    };
    loop {
        if metrics().await.contains("locus_worker_cancelled_total 1") {
            break;
        }
        assert!(left.elapsed() < Duration::from_secs(20), "the generation was not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(&http, &format!("{worker}/generate"), r#"{"text": "next"}"#).await;
    assert_eq!(status, 200);
    // A non-streamed request abandoned by its client (a client timeout) is stopped too.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let body = json!({"prompt": "Another long story:", "max_tokens": 1000, "ignore_eos": true});
    assert!(impatient.post(format!("{worker}/v1/completions")).json(&body).send().await.is_err());
    let left = Instant::now();
    loop {
        let m = metrics().await;
        if m.contains("locus_worker_cancelled_total 2") {
            assert!(
                m.contains(r#"locus_worker_requests_total{endpoint="completions",status="499"} 2"#),
                "{m}"
            );
            break;
        }
        assert!(left.elapsed() < Duration::from_secs(20), "the abandoned request ran on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token_and_uploads_have_a_json_limit() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    let worker = format!("http://{}", c.worker_addrs[0]);
    for (method, path) in [
        ("POST", "/flush_cache"),
        ("GET", "/admin/cache-policy"),
        ("PUT", "/admin/cache-policy?name=lru"),
    ] {
        let req = http.request(method.parse().unwrap(), format!("{worker}{path}"));
        let r = req.try_clone().unwrap().send().await.unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without the token");
        let r = req.bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{method} {path} with the token");
    }
    // A component a few MB large (here: garbage) is read and judged, not refused for size.
    let admin = format!("http://{}/admin/policy", c.admin_addr);
    let r = http.put(&admin).bearer_auth(TOKEN).body(vec![0u8; 3 << 20]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: ErrorBody = r.json().await.unwrap();
    assert_eq!(e.error.code.as_deref(), Some("policy_rejected"), "{}", e.error.message);
    // Over the upload limit: JSON 413, before the body is sent.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let e = head_only(&c.admin_addr.to_string(), "PUT /admin/policy", &auth, 65 << 20).await;
    assert!(e.error.message.contains("67108864"), "{}", e.error.message);
    // A worker is scheme, host and port: a path, query or credentials would aim the
    // router elsewhere or leak in headers and metric labels.
    let workers = format!("http://{}/admin/workers", c.admin_addr);
    for url in ["http://u:p@127.0.0.1:9", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/?a=b"] {
        let r = http.post(&workers).bearer_auth(TOKEN).json(&json!({"url": url})).send().await;
        let r = r.unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let e: ErrorBody = r.json().await.unwrap();
        assert_eq!(e.error.param.as_deref(), Some("url"), "{url}");
    }
    let r = http.post(&workers).bearer_auth(TOKEN).json(&json!({"url": "http://127.0.0.1:9/"}));
    let v: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(v["url"], "http://127.0.0.1:9", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_dropped_and_do_not_hold_the_worker() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_millis(400),
        body_read_timeout: Duration::from_millis(400),
        ..ServeLimits::default()
    };
    let engines = cluster::load_engines(
        &locus_engine::ModelSource::Synthetic,
        1,
        locus_engine::EngineOptions { prefix_cache_bytes: 16 << 20, ..Default::default() },
    )
    .await
    .unwrap();
    let opts = WorkerOptions { limits, max_queue: 1, ..WorkerOptions::default() };
    let w = worker::spawn(engines[0].clone(), opts, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    // A head that never ends: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    // A body that never ends: 408 in the one shape.
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    s.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\"")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"invalid_request_error\""), "{answer}");
    // The queue (one place) was never taken by the slow clients.
    let (status, _) =
        post(&client(), &format!("http://{}/generate", w.addr), r#"{"text": "hi"}"#).await;
    assert_eq!(status, 200);
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_methods_and_tokenless_uploads_answer_at_once_in_the_one_shape() {
    let c = start(ServeLimits::default()).await;
    let http = client();
    for base in [format!("http://{}", c.router_addr), format!("http://{}", c.worker_addrs[0])] {
        let r = http.get(format!("{base}/no/such/path")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.json::<ErrorBody>().await.is_ok());
        let r = http.get(format!("{base}/v1/completions")).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert!(r.json::<ErrorBody>().await.unwrap().error.message.contains("GET"));
    }
    // Without the token, a 60 MB upload is refused from its head alone.
    let worker = c.worker_addrs[0].to_string();
    let mut s = tokio::net::TcpStream::connect(&worker).await.unwrap();
    let head = format!(
        "PUT /admin/cache-policy HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        60 << 20
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 401"));
    // The scheme is case-insensitive.
    let r = http
        .get(format!("http://{worker}/admin/cache-policy"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
