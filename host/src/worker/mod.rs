//! `locus worker`: one model behind an HTTP API (SGLang's native `/generate` and
//! OpenAI's `/v1/completions`), with two cache levels governed by a cache policy
//! component: whole responses, and the engine's prefix KV store.

mod responses;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::stream::Stream;
use locus_engine::{Engine, EngineError, GenerateRequest, Generation};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

pub use responses::{Cached, ResponseCache};

use crate::http::{ApiError, check_bearer, parse_json, render_metrics, uploaded_policy};
use crate::policy::{CachePolicy, Entry, EntryKind, FaultPolicy, LoadOptions, PolicySource};

/// Most tokens one request may ask for.
pub const MAX_NEW_TOKENS: u32 = 1024;

/// How a worker is set up.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Name reported in `meta_info.worker_id`.
    pub worker_id: String,
    /// The cache policy for both cache levels.
    pub cache_policy: PolicySource,
    /// Settings for the cache policy.
    pub cache_settings: Vec<(String, String)>,
    /// Byte budget of the response cache.
    pub response_cache_bytes: u64,
    /// Requests waiting or running beyond which new ones get 429.
    pub max_queue: usize,
    /// Bearer token of `PUT /admin/cache-policy`; `None` disables it.
    pub admin_token: Option<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            worker_id: "worker".into(),
            cache_policy: PolicySource::Builtin("lru"),
            cache_settings: Vec::new(),
            response_cache_bytes: 64 << 20,
            max_queue: 64,
            admin_token: None,
        }
    }
}

/// A worker's state, shared by its handlers.
pub struct Worker {
    engine: Arc<Engine>,
    responses: ResponseCache,
    prefix_policy: Arc<CachePolicy>,
    queue: Arc<Semaphore>,
    options: WorkerOptions,
    metrics: Metrics,
    started: SystemTime,
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    response_hits: IntCounter,
    response_misses: IntCounter,
    prefix_tokens: IntCounterVec,
    cache_bytes: IntGaugeVec,
    policy_faults: IntGauge,
}

impl Metrics {
    fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new("locus_worker_requests_total", "Requests by endpoint and status"),
            &["endpoint", "status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("locus_worker_request_seconds", "End-to-end request latency")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).unwrap()),
            &["endpoint", "cache"],
        )
        .unwrap();
        let response_hits =
            IntCounter::new("locus_worker_response_cache_hits_total", "Response cache hits")
                .unwrap();
        let response_misses =
            IntCounter::new("locus_worker_response_cache_misses_total", "Response cache misses")
                .unwrap();
        let prefix_tokens = IntCounterVec::new(
            Opts::new("locus_worker_prefix_tokens_total", "Prompt tokens, cached or computed"),
            &["source"],
        )
        .unwrap();
        let cache_bytes = IntGaugeVec::new(
            Opts::new("locus_worker_cache_bytes", "Bytes held by each cache level"),
            &["level"],
        )
        .unwrap();
        let policy_faults =
            IntGauge::new("locus_worker_cache_policy_faults", "Cache policy faults so far")
                .unwrap();
        let registry = crate::http::registry(vec![
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(response_hits.clone()),
            Box::new(response_misses.clone()),
            Box::new(prefix_tokens.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(policy_faults.clone()),
        ]);
        Self {
            registry,
            requests,
            latency,
            response_hits,
            response_misses,
            prefix_tokens,
            cache_bytes,
            policy_faults,
        }
    }
}

/// The engine's prefix store asks the cache policy component through this adapter.
struct PrefixPolicy(Arc<CachePolicy>);

impl locus_engine::CachePolicy for PrefixPolicy {
    fn admit(&self, key: u64, size: u64) -> bool {
        self.0.admit(Entry { key, kind: EntryKind::Prefix, size })
    }
    fn hit(&self, key: u64) {
        self.0.hit(key)
    }
    fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        self.0.evict(bytes_needed)
    }
    fn removed(&self, key: u64) {
        self.0.removed(key)
    }
}

fn load_cache_policy(
    source: &PolicySource,
    settings: &[(String, String)],
    capacity: u64,
) -> Result<CachePolicy, crate::policy::LoadError> {
    let mut settings = settings.to_vec();
    settings.push(("locus.capacity-bytes".into(), capacity.to_string()));
    CachePolicy::load(source, &LoadOptions::with_settings(settings), FaultPolicy::default())
}

impl Worker {
    /// A worker serving `engine`.
    pub fn new(engine: Arc<Engine>, options: WorkerOptions) -> anyhow::Result<Arc<Self>> {
        let prefix_bytes = engine.cache_stats().capacity_bytes;
        let rpolicy = load_cache_policy(
            &options.cache_policy,
            &options.cache_settings,
            options.response_cache_bytes,
        )?;
        let ppolicy = Arc::new(load_cache_policy(
            &options.cache_policy,
            &options.cache_settings,
            prefix_bytes,
        )?);
        engine.set_cache_policy(Arc::new(PrefixPolicy(ppolicy.clone())));
        Ok(Arc::new(Self {
            responses: ResponseCache::new(Arc::new(rpolicy), options.response_cache_bytes),
            prefix_policy: ppolicy,
            queue: Arc::new(Semaphore::new(options.max_queue.max(1))),
            engine,
            options,
            metrics: Metrics::new(),
            started: SystemTime::now(),
        }))
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/generate", post(generate))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { "ok" }))
            .route("/server_info", get(server_info))
            .route("/model_info", get(model_info))
            .route("/metrics", get(metrics))
            .route("/flush_cache", post(flush_cache))
            .route("/admin/cache-policy", put(swap_cache_policy).get(cache_policy_info))
            .with_state(self.clone())
    }

    fn model_name(&self) -> String {
        self.engine.model_info().source.clone()
    }

    /// Runs one request: the response cache first, then the engine.
    async fn run(
        self: &Arc<Self>,
        p: Params,
        on_text: Option<mpsc::Sender<String>>,
    ) -> Result<Outcome, ApiError> {
        let started = Instant::now();
        let Ok(permit) = self.queue.clone().try_acquire_owned() else {
            return Err(ApiError::overloaded(
                StatusCode::TOO_MANY_REQUESTS,
                format!("worker queue is full ({} requests)", self.options.max_queue),
                1,
            ));
        };
        let key = p.cache_key();
        if let Some(key) = key
            && let Some(hit) = self.responses.get(key)
        {
            self.metrics.response_hits.inc();
            self.metrics
                .prefix_tokens
                .with_label_values(&["cached"])
                .inc_by(hit.prompt_tokens as u64);
            if let Some(tx) = on_text {
                let _ = tx.send(hit.text.clone()).await;
            }
            return Ok(Outcome {
                text: hit.text,
                prompt_tokens: hit.prompt_tokens,
                completion_tokens: hit.completion_tokens,
                cached_tokens: hit.prompt_tokens,
                cache_hit: true,
                latency: started.elapsed().as_secs_f64(),
            });
        }
        self.metrics.response_misses.inc();
        let engine = self.engine.clone();
        let req = GenerateRequest {
            prompt: p.prompt,
            max_new_tokens: p.max_new_tokens as usize,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed,
            truncate_left: p.truncate_left,
        };
        let generation: Result<Generation, EngineError> = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match on_text {
                Some(tx) => engine.generate_stream(&req, |piece| {
                    let _ = tx.blocking_send(piece.to_string());
                }),
                None => engine.generate(&req),
            }
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let g = generation.map_err(engine_error)?;
        let computed = g.prompt_tokens - g.cached_tokens;
        self.metrics.prefix_tokens.with_label_values(&["cached"]).inc_by(g.cached_tokens as u64);
        self.metrics.prefix_tokens.with_label_values(&["computed"]).inc_by(computed as u64);
        if let Some(key) = key {
            let value = Cached {
                text: g.text.clone(),
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
            };
            self.responses.insert(key, value);
        }
        Ok(Outcome {
            text: g.text,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            cached_tokens: g.cached_tokens,
            cache_hit: false,
            latency: started.elapsed().as_secs_f64(),
        })
    }

    fn record(&self, endpoint: &str, result: &Result<Outcome, ApiError>) {
        let status = match result {
            Ok(_) => "200".to_string(),
            Err(e) => e.status.as_u16().to_string(),
        };
        self.metrics.requests.with_label_values(&[endpoint, &status]).inc();
        if let Ok(o) = result {
            let cache = if o.cache_hit { "hit" } else { "miss" };
            self.metrics.latency.with_label_values(&[endpoint, cache]).observe(o.latency);
        }
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match &e {
        EngineError::PromptTooLong { .. } => ApiError {
            field: Some("text".into()),
            ..ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
        },
        EngineError::EmptyPrompt => ApiError::invalid("text", e.to_string()),
        EngineError::InvalidParam { field, .. } => ApiError::invalid(field, e.to_string()),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A validated request, whatever API it came through.
#[derive(Debug, Clone)]
struct Params {
    prompt: String,
    max_new_tokens: u32,
    temperature: f64,
    top_p: f64,
    seed: Option<u64>,
    truncate_left: bool,
}

impl Params {
    /// Requests sampled at temperature > 0 without a seed differ on every call, so they
    /// are never answered from the cache.
    fn cache_key(&self) -> Option<u64> {
        if self.temperature > 0.0 && self.seed.is_none() {
            return None;
        }
        let mut h = DefaultHasher::new();
        (&self.prompt, self.max_new_tokens, self.temperature.to_bits(), self.top_p.to_bits())
            .hash(&mut h);
        (self.seed, self.truncate_left).hash(&mut h);
        Some(h.finish())
    }

    fn validate(
        prompt: Option<String>,
        prompt_field: &str,
        max_new_tokens: Option<u32>,
        max_field: &str,
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<u64>,
    ) -> Result<Self, ApiError> {
        let prompt = prompt.ok_or_else(|| {
            ApiError::invalid(prompt_field, format!("`{prompt_field}` is required"))
        })?;
        if prompt.is_empty() {
            return Err(ApiError::invalid(prompt_field, "the prompt is empty"));
        }
        let max_new_tokens = max_new_tokens.unwrap_or(16);
        if !(1..=MAX_NEW_TOKENS).contains(&max_new_tokens) {
            return Err(ApiError::invalid(
                max_field,
                format!("must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}"),
            ));
        }
        let temperature = temperature.unwrap_or(0.0);
        if !temperature.is_finite() || !(0.0..=100.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature", "must be between 0 and 100"));
        }
        let top_p = top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "must be in (0, 1]"));
        }
        Ok(Self { prompt, max_new_tokens, temperature, top_p, seed, truncate_left: false })
    }
}

struct Outcome {
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    cache_hit: bool,
    latency: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    text: Option<String>,
    prompt: Option<String>,
    #[serde(default)]
    sampling_params: SamplingParams,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SamplingParams {
    max_new_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
}

/// `meta_info` of a `/generate` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetaInfo {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens served from a cache (all of them on a response-cache hit).
    pub cached_tokens: usize,
    /// Whether the whole answer came from the response cache.
    pub cache_hit: bool,
    /// The worker that answered.
    pub worker_id: String,
    /// Seconds from arrival to answer, at the worker.
    pub e2e_latency: f64,
}

/// A `/generate` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GenerateResponse {
    /// Generated text.
    pub text: String,
    /// How it was produced.
    pub meta_info: MetaInfo,
}

async fn generate(State(w): State<Arc<Worker>>, body: Bytes) -> Response {
    let result = async {
        let b: GenerateBody = parse_json(&body)?;
        let field = if b.text.is_some() { "text" } else { "prompt" };
        let sp = b.sampling_params;
        let p = Params::validate(
            b.text.or(b.prompt),
            field,
            sp.max_new_tokens,
            "sampling_params.max_new_tokens",
            sp.temperature,
            sp.top_p,
            sp.seed,
        )?;
        if b.stream {
            return Err(ApiError::invalid("stream", "use /v1/completions for streaming"));
        }
        w.run(p, None).await
    }
    .await;
    w.record("generate", &result);
    match result {
        Ok(o) => Json(GenerateResponse {
            text: o.text,
            meta_info: MetaInfo {
                prompt_tokens: o.prompt_tokens,
                completion_tokens: o.completion_tokens,
                cached_tokens: o.cached_tokens,
                cache_hit: o.cache_hit,
                worker_id: w.options.worker_id.clone(),
                e2e_latency: o.latency,
            },
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    prompt: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

async fn completions(State(w): State<Arc<Worker>>, body: Bytes) -> Response {
    let parsed = parse_json::<CompletionBody>(&body).and_then(|b| {
        let p = Params::validate(
            b.prompt,
            "prompt",
            b.max_tokens,
            "max_tokens",
            b.temperature,
            b.top_p,
            b.seed,
        )?;
        Ok((p, b.stream))
    });
    let (p, stream) = match parsed {
        Ok(x) => x,
        Err(e) => {
            w.record("completions", &Err(e.clone()));
            return e.into_response();
        }
    };
    let id = format!(
        "cmpl-{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    let model = w.model_name();
    if !stream {
        let result = w.run(p, None).await;
        w.record("completions", &result);
        return match result {
            Ok(o) => Json(json!({
                "id": id, "object": "text_completion", "model": model,
                "choices": [{"index": 0, "text": o.text, "finish_reason": "length"}],
                "usage": {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
                          "total_tokens": o.prompt_tokens + o.completion_tokens,
                          "prompt_tokens_details": {"cached_tokens": o.cached_tokens}},
            }))
            .into_response(),
            Err(e) => e.into_response(),
        };
    }
    Sse::new(stream_completion(w, p, id, model)).into_response()
}

/// Streams a completion as Server-Sent Events: a chunk per piece of text as the engine
/// produces it, a final chunk with the finish reason, then `[DONE]`.
fn stream_completion(
    w: Arc<Worker>,
    p: Params,
    id: String,
    model: String,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let (events, rx) = mpsc::channel::<Event>(64);
    let worker_id = w.options.worker_id.clone();
    let chunk = move |text: &str, finish: Option<&str>, done: Option<&Outcome>| {
        let mut v = json!({"id": id, "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish}]});
        // The last chunk carries the usage (as OpenAI's `include_usage` does) and what
        // `/generate` reports in `meta_info`, so streaming clients can see cache effects.
        if let Some(o) = done {
            v["usage"] = json!({"prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens,
                "total_tokens": o.prompt_tokens + o.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": o.cached_tokens}});
            v["meta_info"] = json!({"prompt_tokens": o.prompt_tokens,
                "completion_tokens": o.completion_tokens, "cached_tokens": o.cached_tokens,
                "cache_hit": o.cache_hit, "worker_id": worker_id, "e2e_latency": o.latency});
        }
        Event::default().data(v.to_string())
    };
    tokio::spawn(async move {
        let (pieces, mut piece_rx) = mpsc::channel::<String>(64);
        let runner = w.clone();
        let run = tokio::spawn(async move {
            let r = runner.run(p, Some(pieces)).await;
            runner.record("completions", &r);
            r
        });
        while let Some(piece) = piece_rx.recv().await {
            let _ = events.send(chunk(&piece, None, None)).await;
        }
        let last = match run.await {
            Ok(Ok(o)) => chunk("", Some("length"), Some(&o)),
            Ok(Err(e)) => Event::default()
                .data(json!({"error": {"message": e.message, "field": e.field}}).to_string()),
            Err(e) => {
                Event::default().data(json!({"error": {"message": e.to_string()}}).to_string())
            }
        };
        let _ = events.send(last).await;
        let _ = events.send(Event::default().data("[DONE]")).await;
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

async fn models(State(w): State<Arc<Worker>>) -> Json<serde_json::Value> {
    Json(
        json!({"object": "list", "data": [{"id": w.model_name(), "object": "model", "owned_by": "locus"}]}),
    )
}

async fn server_info(State(w): State<Arc<Worker>>) -> Json<serde_json::Value> {
    let (entries, bytes, capacity) = w.responses.stats();
    let prefix = w.engine.cache_stats();
    Json(json!({
        "worker_id": w.options.worker_id,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": w.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        "max_queue": w.options.max_queue,
        "queue_available": w.queue.available_permits(),
        "response_cache": {"entries": entries, "bytes": bytes, "capacity_bytes": capacity},
        "prefix_cache": {"entries": prefix.entries, "bytes": prefix.bytes,
                          "capacity_bytes": prefix.capacity_bytes, "hit_tokens": prefix.hit_tokens},
        "cache_policy": w.responses.policy().info(),
    }))
}

async fn model_info(State(w): State<Arc<Worker>>) -> Json<serde_json::Value> {
    let info = w.engine.model_info();
    let c = &info.config;
    Json(json!({
        "model": info.source, "parameters": info.parameters,
        "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
        "n_positions": c.n_positions, "vocab_size": c.vocab_size,
        "kv_bytes_per_token": info.kv_bytes_per_token,
    }))
}

async fn metrics(State(w): State<Arc<Worker>>) -> Response {
    let (_, bytes, _) = w.responses.stats();
    w.metrics.cache_bytes.with_label_values(&["response"]).set(bytes as i64);
    w.metrics.cache_bytes.with_label_values(&["prefix"]).set(w.engine.cache_stats().bytes as i64);
    let faults = w.responses.policy().total_faults() + w.prefix_policy.total_faults();
    w.metrics.policy_faults.set(faults as i64);
    render_metrics(&w.metrics.registry)
}

async fn flush_cache(State(w): State<Arc<Worker>>) -> Json<serde_json::Value> {
    w.responses.flush();
    w.engine.flush_cache();
    Json(json!({"flushed": true}))
}

async fn swap_cache_policy(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    Query(mut q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Err(e) = check_bearer(&headers, w.options.admin_token.as_deref()) {
        return e.into_response();
    }
    let source = match uploaded_policy(&body, &mut q) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let settings: Vec<(String, String)> = q.into_iter().collect();
    let worker = w.clone();
    // Compiling takes tens of milliseconds: keep it off the async threads.
    let result = tokio::task::spawn_blocking(move || {
        let (_, _, rcap) = worker.responses.stats();
        let pcap = worker.engine.cache_stats().capacity_bytes;
        let swap = |policy: &CachePolicy, cap: u64| {
            let mut s = settings.clone();
            s.push(("locus.capacity-bytes".into(), cap.to_string()));
            policy.swap(&source, &LoadOptions::with_settings(s))
        };
        swap(worker.responses.policy(), rcap).and_then(|_| swap(&worker.prefix_policy, pcap))
    })
    .await;
    match result {
        Ok(Ok(info)) => Json(json!({"swapped": true, "policy": info})).into_response(),
        Ok(Err(e)) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn cache_policy_info(State(w): State<Arc<Worker>>) -> Json<serde_json::Value> {
    Json(json!({"response": w.responses.policy().info(), "prefix": w.prefix_policy.info()}))
}

/// A running worker.
pub struct WorkerHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl WorkerHandle {
    /// Stops accepting connections, lets in-flight requests finish, closes idle
    /// connections, and waits until the listener is gone.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Serves until Ctrl-C, then stops gracefully.
    pub async fn until_ctrl_c(mut self) -> std::io::Result<()> {
        tokio::select! {
            r = &mut self.task => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            r = tokio::signal::ctrl_c() => r?,
        }
        self.stop().await
    }
}

/// Serves a worker for `engine` on `addr` (port 0 picks one).
pub async fn spawn(
    engine: Arc<Engine>,
    options: WorkerOptions,
    addr: SocketAddr,
) -> anyhow::Result<WorkerHandle> {
    let worker = Worker::new(engine, options)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = axum::serve(crate::http::no_delay(listener), worker.router())
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(serve.into_future());
    Ok(WorkerHandle { addr: local, stop: Some(stop), task })
}
