//! One request sent and measured: its answer streamed back and read event by event, for
//! the time to first text, the worker and its cache counts, and the router's routing time.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;

use super::options::Target;
use super::record::Record;
use super::workload::BenchRequest;
use crate::api::ErrorBody;
use crate::api::openai::Completion;
use crate::api::sglang::MetaInfo;

/// Sends `r` (request `index` of the workload, under `policy`) and measures its answer.
pub(super) async fn send(
    http: &reqwest::Client,
    target: &Target,
    r: &BenchRequest,
    index: usize,
    policy: &str,
) -> Record {
    let mut rec = Record {
        index,
        policy: policy.to_string(),
        rate: None,
        round: 0,
        status: 0,
        latency_ms: 0.0,
        ttft_ms: None,
        worker: String::new(),
        cache_hit: false,
        cached_tokens: 0,
        transferred_tokens: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        route_us: None,
        error: None,
    };
    let t = Instant::now();
    // `model` because SGLang's router refuses a completion without one (locus ignores it).
    let body = json!({"model": "locus", "prompt": r.prompt, "max_tokens": r.max_tokens,
        "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
    let mut post = http.post(format!("{}/v1/completions", target.router)).json(&body);
    if let Some(s) = &r.session {
        post = post.header(crate::router::DEFAULT_SESSION_HEADER, s);
    }
    let resp = post.send().await;
    let resp = match resp {
        Ok(x) => x,
        Err(e) => {
            rec.error = Some(e.to_string());
            rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
            return rec;
        }
    };
    rec.status = resp.status().as_u16();
    rec.route_us =
        resp.headers().get(crate::router::ROUTE_US).and_then(|v| v.to_str().ok()?.parse().ok());
    if !resp.status().is_success() {
        rec.error = Some(resp.text().await.unwrap_or_default());
        rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
        return rec;
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut meta: Option<MetaInfo> = None;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            rec.error = Some("the stream broke".into());
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    continue;
                }
                if let Ok(e) = serde_json::from_str::<ErrorBody>(data) {
                    rec.error = Some(e.error.message);
                    continue;
                }
                let Ok(c) = serde_json::from_str::<Completion>(data) else { continue };
                let has_text = c.choices.first().is_some_and(|c| !c.text.is_empty());
                if has_text && rec.ttft_ms.is_none() {
                    rec.ttft_ms = Some(t.elapsed().as_secs_f64() * 1e3);
                }
                if c.meta_info.is_some() {
                    meta = c.meta_info;
                }
                if let Some(u) = c.usage {
                    rec.completion_tokens = u.completion_tokens;
                }
            }
        }
    }
    rec.latency_ms = t.elapsed().as_secs_f64() * 1e3;
    if let Some(m) = meta {
        rec.worker = m.worker_id;
        rec.cache_hit = m.cache_hit;
        rec.cached_tokens = m.cached_tokens;
        rec.transferred_tokens = m.transferred_tokens.unwrap_or(0);
        rec.prompt_tokens = m.prompt_tokens;
    }
    if rec.worker.is_empty() && rec.error.is_none() {
        rec.error = Some("the answer had no meta_info".into());
    }
    rec
}
