//! `locus router`: the gateway. Routes each request to a worker chosen by the routing
//! policy component, proxies the answer (streams pass through as they arrive), checks
//! worker health, retries a refused or failed request on the policy's next choice, and
//! serves an admin API (on its own listener, bearer token required) to swap the policy
//! and change the worker set at run time.

mod admin;

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::{ApiError, render_metrics};
use crate::policy::{
    Completion, FaultPolicy, LoadOptions, PolicySource, Request, RouterPolicy, workers,
};

pub use admin::admin_router;

/// How a router is set up.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Base URLs of the workers (`http://host:port`).
    pub workers: Vec<String>,
    /// The routing policy.
    pub policy: PolicySource,
    /// Its settings.
    pub settings: Vec<(String, String)>,
    /// Bearer token of the admin API; `None` disables it.
    pub admin_token: Option<String>,
    /// Time between health checks of each worker.
    pub health_interval: Duration,
    /// Failed checks (or refused requests) after which a worker is marked down.
    pub fail_threshold: u32,
    /// Passed checks after which a down worker is marked up again.
    pub success_threshold: u32,
    /// Further workers tried after a refused connection or a 5xx answer.
    pub max_retries: usize,
    /// Limit on one proxied request.
    pub request_timeout: Duration,
    /// When the routing policy is rolled back for faults.
    pub faults: FaultPolicy,
    /// Swap the policy when this file changes.
    pub watch: Option<PathBuf>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            workers: Vec::new(),
            policy: PolicySource::Builtin("hash"),
            settings: Vec::new(),
            admin_token: None,
            health_interval: Duration::from_millis(500),
            fail_threshold: 2,
            success_threshold: 1,
            max_retries: 2,
            request_timeout: Duration::from_secs(120),
            faults: FaultPolicy::default(),
            watch: None,
        }
    }
}

/// A worker as the router sees it.
#[derive(Debug)]
pub struct Backend {
    /// Base URL.
    pub url: String,
    /// Stable id passed to the policy: a hash of the URL.
    pub id: u64,
    healthy: AtomicBool,
    in_flight: AtomicU32,
    fails: AtomicU32,
    passes: AtomicU32,
}

/// Stable 64-bit id of a worker URL (FNV-1a: the same on every router and run).
pub fn worker_id(url: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    url.trim_end_matches('/').hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Backend {
    fn new(url: &str) -> Arc<Self> {
        let url = url.trim_end_matches('/').to_string();
        Arc::new(Self {
            id: worker_id(&url),
            url,
            healthy: AtomicBool::new(true),
            in_flight: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
        })
    }

    /// Whether health checks currently pass.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn failed(&self, threshold: u32, why: &str) {
        self.passes.store(0, Ordering::Relaxed);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(worker = %self.url, %why, "worker marked down");
        }
    }

    fn passed(&self, threshold: u32) {
        self.fails.store(0, Ordering::Relaxed);
        let n = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(worker = %self.url, "worker marked up");
        }
    }
}

/// The worker's entry in `GET /admin/workers`.
#[derive(Serialize)]
pub struct BackendInfo {
    url: String,
    id: String,
    healthy: bool,
    in_flight: u32,
}

struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    fallbacks: IntCounter,
    retries: IntCounter,
    requests: IntCounterVec,
    latency: HistogramVec,
    policy_faults: IntGauge,
    policy_info: IntGaugeVec,
}

impl Metrics {
    fn new() -> Self {
        let decisions = IntCounterVec::new(
            Opts::new("locus_router_decisions_total", "Routing decisions per worker"),
            &["worker"],
        )
        .unwrap();
        let fallbacks = IntCounter::new(
            "locus_router_fallbacks_total",
            "Decisions made by the native fallback because the policy faulted",
        )
        .unwrap();
        let retries =
            IntCounter::new("locus_router_retries_total", "Requests retried on another worker")
                .unwrap();
        let requests = IntCounterVec::new(
            Opts::new("locus_router_requests_total", "Proxied requests by endpoint and status"),
            &["endpoint", "status"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("locus_router_request_seconds", "Latency through the router")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18).unwrap()),
            &["endpoint"],
        )
        .unwrap();
        let policy_faults =
            IntGauge::new("locus_router_policy_faults", "Routing policy faults so far").unwrap();
        let policy_info = IntGaugeVec::new(
            Opts::new("locus_router_policy_info", "The serving routing policy (value 1)"),
            &["name", "sha256"],
        )
        .unwrap();
        let registry = crate::http::registry(vec![
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(retries.clone()),
            Box::new(requests.clone()),
            Box::new(latency.clone()),
            Box::new(policy_faults.clone()),
            Box::new(policy_info.clone()),
        ]);
        Self {
            registry,
            decisions,
            fallbacks,
            retries,
            requests,
            latency,
            policy_faults,
            policy_info,
        }
    }
}

/// The router's state, shared by its handlers.
pub struct Gateway {
    policy: RouterPolicy,
    backends: ArcSwap<Vec<Arc<Backend>>>,
    client: reqwest::Client,
    metrics: Metrics,
    next_id: AtomicU64,
    options: RouterOptions,
}

impl Gateway {
    /// Loads the policy and sets up the workers (all assumed up until a check fails).
    pub fn new(options: RouterOptions) -> anyhow::Result<Arc<Self>> {
        let opts = LoadOptions::with_settings(options.settings.clone());
        let policy = RouterPolicy::load(&options.policy, &opts, options.faults)?;
        let backends = options.workers.iter().map(|u| Backend::new(u)).collect();
        let client = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Arc::new(Self {
            policy,
            backends: ArcSwap::from_pointee(backends),
            client,
            metrics: Metrics::new(),
            next_id: AtomicU64::new(1),
            options,
        }))
    }

    /// The routing policy slot.
    pub fn policy(&self) -> &RouterPolicy {
        &self.policy
    }

    /// The workers, in registration order.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.load_full()
    }

    /// Adds a worker; false if it is already there.
    pub fn add_backend(&self, url: &str) -> bool {
        let b = Backend::new(url);
        let mut added = false;
        self.backends.rcu(|cur| {
            let mut v = (**cur).clone();
            added = !v.iter().any(|x| x.url == b.url);
            if added {
                v.push(b.clone());
            }
            v
        });
        added
    }

    /// Removes a worker; false if it was not there.
    pub fn remove_backend(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        let mut removed = false;
        self.backends.rcu(|cur| {
            let v: Vec<_> = cur.iter().filter(|b| b.url != url).cloned().collect();
            removed = v.len() != cur.len();
            v
        });
        removed
    }

    /// The public HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/generate", post(proxy_generate))
            .route("/v1/completions", post(proxy_completions))
            .route("/v1/models", get(proxy_models))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Checks every worker's `/health` forever.
    pub async fn health_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.options.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let backends = self.backends();
            let checks = backends.iter().cloned().map(|b| {
                let gw = self.clone();
                async move {
                    let r = gw
                        .client
                        .get(format!("{}/health", b.url))
                        .timeout(Duration::from_secs(1))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => b.passed(gw.options.success_threshold),
                        Ok(r) => {
                            b.failed(gw.options.fail_threshold, &format!("health {}", r.status()))
                        }
                        Err(e) => b.failed(gw.options.fail_threshold, &e.to_string()),
                    }
                }
            });
            futures_util::future::join_all(checks).await;
        }
    }

    /// Sends `body` to `path` on a worker chosen by the policy, trying the policy's next
    /// choice when a worker refuses the connection or answers 5xx.
    async fn forward(
        self: &Arc<Self>,
        endpoint: &str,
        path: &str,
        parsed: &serde_json::Value,
        body: Bytes,
    ) -> Response {
        let started = Instant::now();
        let (prompt, max_tokens) = routing_fields(parsed);
        let req = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            prompt,
            max_new_tokens: max_tokens,
        };
        let mut candidates: Vec<Arc<Backend>> =
            self.backends().iter().filter(|b| b.healthy()).cloned().collect();
        let mut last_error = None;
        for attempt in 0..=self.options.max_retries {
            let ws =
                workers(candidates.iter().map(|b| (b.id, b.in_flight.load(Ordering::Relaxed))));
            let Some(decision) = self.policy.route(&req, &ws) else { break };
            if decision.fault.is_some() {
                self.metrics.fallbacks.inc();
            }
            let backend = candidates.remove(decision.index);
            self.metrics.decisions.with_label_values(&[&backend.url]).inc();
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            backend.in_flight.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .client
                .post(format!("{}{path}", backend.url))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if !r.status().is_server_error() => {
                    return self.relay(endpoint, &req, backend, r, started).await;
                }
                Ok(r) => {
                    backend.in_flight.fetch_sub(1, Ordering::Relaxed);
                    last_error = Some(format!("{} answered {}", backend.url, r.status()));
                    if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                        backend.failed(self.options.fail_threshold, "5xx answer");
                    }
                }
                Err(e) => {
                    backend.in_flight.fetch_sub(1, Ordering::Relaxed);
                    // A refused connection is certain: mark it down now, not after N checks.
                    let threshold = if e.is_connect() { 1 } else { self.options.fail_threshold };
                    backend.failed(threshold, &e.to_string());
                    last_error = Some(format!("{}: {e}", backend.url));
                }
            }
        }
        let status = StatusCode::SERVICE_UNAVAILABLE;
        self.metrics.requests.with_label_values(&[endpoint, "503"]).inc();
        let msg = match last_error {
            Some(e) => format!("no worker could serve the request (last error: {e})"),
            None => "no healthy worker".into(),
        };
        ApiError::overloaded(status, msg, 1).into_response()
    }

    /// Passes a worker's answer back: JSON is read whole (to learn its token counts for
    /// `observe`), an event stream is relayed chunk by chunk as it arrives.
    async fn relay(
        self: &Arc<Self>,
        endpoint: &str,
        req: &Request,
        backend: Arc<Backend>,
        r: reqwest::Response,
        started: Instant,
    ) -> Response {
        let status = r.status();
        let content_type = r.headers().get(header::CONTENT_TYPE).cloned();
        let is_stream = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        self.metrics.requests.with_label_values(&[endpoint, status.as_str()]).inc();
        let mut builder = Response::builder().status(status.as_u16());
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder = builder.header("x-locus-worker", backend.url.as_str());
        if is_stream {
            let guard = InFlight { backend, gw: self.clone(), req_id: req.id, started };
            let stream = r.bytes_stream().map(move |chunk| {
                let _keep = &guard;
                chunk
            });
            return builder.body(Body::from_stream(stream)).unwrap_or_else(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            });
        }
        let bytes = r.bytes().await;
        backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        let latency = started.elapsed();
        self.metrics.latency.with_label_values(&[endpoint]).observe(latency.as_secs_f64());
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_GATEWAY, format!("{}: {e}", backend.url))
                    .into_response();
            }
        };
        let (prompt_tokens, cached_tokens) = token_counts(&bytes);
        self.policy.observe(&Completion {
            request_id: req.id,
            worker_id: backend.id,
            ok: status.is_success(),
            latency_us: latency.as_micros() as u64,
            prompt_tokens,
            cached_tokens,
        });
        builder.body(Body::from(bytes)).unwrap_or_else(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        })
    }
}

/// Ends a streamed request's accounting when its body is dropped (finished or cut).
struct InFlight {
    backend: Arc<Backend>,
    gw: Arc<Gateway>,
    req_id: u64,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        let latency = self.started.elapsed();
        self.gw.metrics.latency.with_label_values(&["completions"]).observe(latency.as_secs_f64());
        self.gw.policy.observe(&Completion {
            request_id: self.req_id,
            worker_id: self.backend.id,
            ok: true,
            latency_us: latency.as_micros() as u64,
            prompt_tokens: 0,
            cached_tokens: 0,
        });
    }
}

/// Prompts longer than this are passed to the policy by their leading part only.
const ROUTING_PROMPT_BYTES: usize = 8192;

/// The prompt and token budget of a request, for the policy. A body without them still
/// gets routed; the worker answers its error.
fn routing_fields(v: &serde_json::Value) -> (String, u32) {
    let prompt =
        v.get("text").or_else(|| v.get("prompt")).and_then(|p| p.as_str()).unwrap_or_default();
    let mut end = prompt.len().min(ROUTING_PROMPT_BYTES);
    while !prompt.is_char_boundary(end) {
        end -= 1;
    }
    let max = v
        .pointer("/sampling_params/max_new_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(|m| m.as_u64())
        .unwrap_or(16);
    (prompt[..end].to_string(), max.min(u64::from(u32::MAX)) as u32)
}

fn token_counts(body: &[u8]) -> (u32, u32) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let get = |p: &str| v.pointer(p).and_then(|x| x.as_u64()).unwrap_or(0) as u32;
    (get("/meta_info/prompt_tokens"), get("/meta_info/cached_tokens"))
}

async fn proxy_generate(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    match crate::http::parse_json::<serde_json::Value>(&body) {
        Ok(v) => gw.forward("generate", "/generate", &v, body).await,
        Err(e) => e.into_response(),
    }
}

async fn proxy_completions(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    match crate::http::parse_json::<serde_json::Value>(&body) {
        Ok(v) => gw.forward("completions", "/v1/completions", &v, body).await,
        Err(e) => e.into_response(),
    }
}

async fn proxy_models(State(gw): State<Arc<Gateway>>) -> Response {
    for b in gw.backends().iter().filter(|b| b.healthy()) {
        if let Ok(r) = gw.client.get(format!("{}/v1/models", b.url)).send().await
            && r.status().is_success()
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return Json(v).into_response();
        }
    }
    ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, "no healthy worker", 1).into_response()
}

async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let up = gw.backends().iter().filter(|b| b.healthy()).count();
    let body = json!({"healthy_workers": up, "workers": gw.backends().len()});
    let status = if up > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(gw): State<Arc<Gateway>>, _h: HeaderMap) -> Response {
    let info = gw.policy.info();
    gw.metrics.policy_info.reset();
    gw.metrics.policy_info.with_label_values(&[&info.name, &info.sha256]).set(1);
    gw.metrics.policy_faults.set(gw.policy.total_faults() as i64);
    render_metrics(&gw.metrics.registry)
}

/// Binds the public and admin listeners and starts serving, health checks and the file
/// watch. Returns the bound addresses.
pub async fn spawn(
    options: RouterOptions,
    addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, SocketAddr, Arc<Gateway>)> {
    let gw = Gateway::new(options)?;
    let listener = TcpListener::bind(addr).await?;
    let admin = TcpListener::bind(admin_addr).await?;
    let (local, admin_local) = (listener.local_addr()?, admin.local_addr()?);
    tokio::spawn(axum::serve(crate::http::no_delay(listener), gw.router()).into_future());
    tokio::spawn(axum::serve(crate::http::no_delay(admin), admin_router(gw.clone())).into_future());
    tokio::spawn(gw.clone().health_loop());
    if let Some(path) = gw.options.watch.clone() {
        admin::watch(gw.clone(), path);
    }
    Ok((local, admin_local, gw))
}
