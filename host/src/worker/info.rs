//! What a worker tells about itself: health, model, server state, metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::state::Worker;
use crate::api::openai::{ModelCard, ModelList};
use crate::clock::unix_secs;
use crate::http::render_metrics;

/// The readiness check: 503 once the worker is shutting down, so that routers and
/// orchestrators stop sending it requests.
pub(super) async fn health(State(w): State<Arc<Worker>>) -> Response {
    if w.draining() {
        return crate::api::ApiError::overloaded(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "worker is shutting down",
            1,
        )
        .with_code(crate::api::SHUTTING_DOWN)
        .into_response();
    }
    "ok".into_response()
}

/// `GET /v1/models`: the one model served.
pub(super) async fn models(State(w): State<Arc<Worker>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: w.model_name(),
            object: "model".into(),
            created: unix_secs(w.started),
            owned_by: "locus".into(),
        }],
    })
}

/// `GET /server_info`: the caches', queue's and scheduler's state now.
pub(super) async fn server_info(State(w): State<Arc<Worker>>) -> Json<Value> {
    let (entries, bytes, capacity) = w.caches.response_stats();
    let prefix = w.engine.cache_stats();
    let sched = w.engine.scheduler_stats();
    let limits = w.engine.limits();
    Json(json!({
        "worker_id": w.options.worker_id,
        "version": env!("CARGO_PKG_VERSION"),
        "served_model_name": w.model_name(),
        "started_at": unix_secs(w.started),
        "max_queue": w.options.max_queue,
        "queue_available": w.queue.available_permits(),
        "response_cache": {"entries": entries, "bytes": bytes, "capacity_bytes": capacity},
        "prefix_cache": {"entries": prefix.entries, "bytes": prefix.bytes,
                          "capacity_bytes": prefix.capacity_bytes, "hit_tokens": prefix.hit_tokens},
        "scheduler": {"max_batch": limits.max_batch, "prefill_chunk": limits.prefill_chunk,
                      "yield_chunk": limits.yield_chunk,
                      "yield_window_s": limits.yield_window.as_secs_f64(),
                      "queue_timeout_s": limits.queue_timeout.as_secs_f64(),
                      "running": sched.running, "waiting": sched.waiting,
                      "kv_reserved_bytes": sched.kv_reserved_bytes,
                      "kv_capacity_bytes": sched.kv_capacity_bytes,
                      "generated_tokens": sched.generated_tokens},
    }))
}

/// `GET /model_info`: the model's name, source and shape.
pub(super) async fn model_info(State(w): State<Arc<Worker>>) -> Json<Value> {
    let info = w.engine.model_info();
    let c = &info.config;
    Json(json!({
        "served_model_name": info.name, "source": info.source, "is_generation": true,
        "parameters": info.parameters,
        "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
        "n_positions": c.n_positions, "vocab_size": c.vocab_size,
        "kv_bytes_per_token": info.kv_bytes_per_token,
        "weight_format": info.weights.name(),
    }))
}

/// `GET /metrics`: Prometheus text; the gauges that follow the engine are read now, at
/// scrape time, rather than kept up to date on every step.
pub(super) async fn metrics(State(w): State<Arc<Worker>>) -> Response {
    let (_, bytes, _) = w.caches.response_stats();
    w.metrics.cache_bytes.with_label_values(&["response"]).set(bytes as i64);
    w.metrics.cache_bytes.with_label_values(&["prefix"]).set(w.engine.cache_stats().bytes as i64);
    w.metrics.policy_faults.set(w.caches.faults() as i64);
    w.metrics.scheduler(&w.engine.scheduler_stats());
    w.metrics.load(&w.load_report(), w.kv_events.subscribers());
    render_metrics(&w.metrics.registry)
}
