//! KV on the move between workers. `POST /kv/export` answers another worker's prompt token
//! ids with the K and V of the blocks this one holds for them, as the engine's wire frames
//! (`locus_engine::transfer::wire`); [`Worker::pull`] asks a source worker for a request's
//! prefix before the request enters the engine. Both sides need the cluster token (in
//! [`CLUSTER_TOKEN`]): a worker without one neither exports nor honours a source.
//!
//! A pull never costs its request anything but time bounded by what computing would cost:
//! its deadline is the time this worker's own measured prefill speed needs for the tokens,
//! and whatever fails (source down, slow, evicted, a bad block, a cut stream) leaves the
//! verified blocks before it, the rest being computed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use locus_engine::BLOCK_TOKENS;
use locus_engine::transfer::wire::{Decoder, KvBlock, block_frame, header_frame};
use locus_engine::transfer::{ImportedPrefix, KvFingerprint};
use locus_tokens::blocks::block_hashes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::auth::{cluster_auth, from_cluster};
use super::state::Worker;
use crate::api::{ApiError, CLUSTER_TOKEN, KV_SOURCE, parse_json};

/// Longest a pull may take, whatever the measured prefill speed says.
const MAX_PULL: Duration = Duration::from_secs(2);

/// What an importer sends to `/kv/export`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The importer's [`KvFingerprint`], hex.
    pub fingerprint: String,
    /// The importer's prompt token ids (its full blocks).
    pub token_ids: Vec<u32>,
}

/// Pulls in flight, by the hash of the last block they ask for: concurrent requests for the
/// same prefix share one.
#[derive(Default)]
pub(super) struct Pulls {
    inflight: Mutex<HashMap<u64, Arc<OnceCell<Option<ImportedPrefix>>>>>,
    /// Prefill tokens per second this worker measured, as an exponential moving average.
    prefill_speed: Mutex<Option<f64>>,
    /// Bytes per second of this worker's pulls that completed or ran out of time, as an
    /// exponential moving average (a pull cut off by its deadline ran at that speed too;
    /// leaving it out would keep the estimate optimistic after the link slowed).
    link_speed: Mutex<Option<f64>>,
}

impl Pulls {
    /// Takes a measured prefill into the speed estimate.
    pub(super) fn measured(&self, computed_tokens: usize, prefill_ms: f64) {
        if computed_tokens < BLOCK_TOKENS || prefill_ms <= 0.0 {
            return;
        }
        ewma(&self.prefill_speed, computed_tokens as f64 / (prefill_ms / 1e3));
    }

    /// Prompt tokens per second this worker computes, once measured.
    pub(super) fn prefill_speed(&self) -> Option<f64> {
        *self.prefill_speed.lock()
    }

    /// Bytes per second its pulls ran at, once one completed or ran out of time.
    pub(super) fn link_speed(&self) -> Option<f64> {
        *self.link_speed.lock()
    }
}

fn ewma(cell: &Mutex<Option<f64>>, x: f64) {
    let mut s = cell.lock();
    *s = Some(s.map_or(x, |old| 0.8 * old + 0.2 * x));
}

impl Worker {
    /// Whether this worker serves `/kv/export` (it has a cluster token).
    pub(super) fn exports_kv(&self) -> bool {
        self.options.cluster_token.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// The KV source a generation request names, if it carries the cluster token too; a
/// client's own [`KV_SOURCE`] is ignored (and counted).
pub(super) fn kv_source(w: &Worker, headers: &HeaderMap) -> Option<String> {
    let source = headers.get(KV_SOURCE)?;
    if !from_cluster(w, headers) {
        w.metrics.kv_pulls.with_label_values(&["ignored_unauthorized"]).inc();
        return None;
    }
    let source = source.to_str().ok()?.trim().trim_end_matches('/');
    let ok =
        (source.starts_with("http://") || source.starts_with("https://")) && source.len() <= 512;
    ok.then(|| source.to_string())
}

/// `POST /kv/export`: the K and V of the longest chain of resident blocks whose tokens equal
/// the body's `token_ids`, streamed as wire frames. 403 without a cluster token configured,
/// 401 without the right one, 409 when the fingerprints differ, 429 when this worker
/// already serves `--max-exports` transfers.
pub(super) async fn export(
    State(w): State<Arc<Worker>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match start_export(&w, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start_export(
    w: &Arc<Worker>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    cluster_auth(w, headers)?;
    let req: ExportRequest = parse_json(body)?;
    let ours = w.engine.kv_fingerprint();
    let theirs = KvFingerprint::parse_hex(&req.fingerprint).ok_or_else(|| {
        ApiError::invalid("fingerprint", "`fingerprint` must be a KV fingerprint in hex")
    })?;
    if let Some(field) = ours.mismatch(&theirs) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("KV fingerprints differ in {field}: this worker cannot serve yours"),
        )
        .with_param("fingerprint"));
    }
    let context = w.engine.model_info().config.n_positions;
    if req.token_ids.len() > context {
        return Err(ApiError::invalid(
            "token_ids",
            format!("`token_ids` holds {} ids; the context is {context}", req.token_ids.len()),
        ));
    }
    let Ok(permit) = w.exports.clone().try_acquire_owned() else {
        return Err(ApiError::overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            format!("this worker already serves {} KV transfers", w.options.max_exports),
            1,
        )
        .with_code("exports_full"));
    };
    let engine = w.engine.clone();
    let ids = req.token_ids;
    // The blocks' handles are the lease: they hold the bytes until the stream ends.
    let blocks = tokio::task::spawn_blocking(move || engine.export_prefix(&ids))
        .await
        .map_err(|e| ApiError::internal(format!("export failed: {e}")))?;
    let header = header_frame(&ours, blocks.len() as u32);
    let (w, fp) = (w.clone(), ours);
    let frames = futures_util::stream::unfold(
        (blocks.into_iter().enumerate(), w, permit),
        move |(mut it, w, permit)| async move {
            let (i, (hash, kv)) = it.next()?;
            let frame = tokio::task::spawn_blocking(move || block_frame(&fp, i as u32, hash, &kv))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            match frame {
                Ok(f) => {
                    w.metrics.kv_transfer_blocks.with_label_values(&["served"]).inc();
                    w.metrics
                        .kv_transfer_bytes
                        .with_label_values(&["served"])
                        .inc_by(f.len() as u64);
                    Some((Ok::<_, std::io::Error>(Bytes::from(f)), (it, w, permit)))
                }
                // Ending the stream short: the importer keeps what came whole and computes
                // the rest.
                Err(e) => {
                    tracing::warn!(error = %e, "encoding a KV block failed; export cut short");
                    None
                }
            }
        },
    );
    let body = futures_util::stream::once(async move { Ok(Bytes::from(header)) }).chain(frames);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(body))
        .into_response())
}

impl Worker {
    /// Pulls the prefix of `ids` from `source`, when it is worth it: the blocks this worker
    /// lacks (before the prompt's last token) are at least `--kv-pull-min-tokens`, and its
    /// prefill speed is known (computing is then the deadline). Returns the verified blocks,
    /// imported and pinned for the request, with the prompt tokens this worker held before
    /// (as blocks of its store); `None` to compute.
    pub(super) async fn pull(
        self: &Arc<Self>,
        source: &str,
        ids: &[u32],
    ) -> Option<(ImportedPrefix, usize)> {
        let usable = ids.len().saturating_sub(1) / BLOCK_TOKENS;
        let local = self.engine.cached_prefix_blocks(&ids[..usable * BLOCK_TOKENS]);
        let missing = usable.saturating_sub(local) * BLOCK_TOKENS;
        let skip = |why: &str| {
            self.metrics.kv_pulls.with_label_values(&[why]).inc();
            None
        };
        if missing == 0 {
            return skip("skipped_resident");
        }
        if !crate::http::may_carry_token(source, self.options.cluster_over_http) {
            crate::http::warn_token_withheld("pulling KV", source);
            return skip("skipped_plain_http");
        }
        if missing < self.options.kv_pull_min_tokens {
            return skip("skipped_short");
        }
        let speed = self.pulls.prefill_speed();
        let deadline = match (self.options.kv_pull_timeout_ms, speed) {
            (Some(ms), _) => Duration::from_millis(ms),
            (None, Some(speed)) => Duration::from_secs_f64(missing as f64 / speed).min(MAX_PULL),
            (None, None) => return skip("skipped_unmeasured"),
        };
        let ids = ids[..usable * BLOCK_TOKENS].to_vec();
        let hashes = block_hashes(&ids);
        let key = *hashes.last()?;
        let cell = self.pulls.inflight.lock().entry(key).or_default().clone();
        let pulled = cell
            .get_or_init(|| async { self.fetch(source, &ids, hashes, deadline).await })
            .await
            .clone();
        let mut inflight = self.pulls.inflight.lock();
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        pulled.map(|p| (p, local * BLOCK_TOKENS))
    }

    /// One pull of `ids` (whose block hashes are `hashes`): asks `source`, verifies the
    /// stream as it comes until `deadline`, imports what verified.
    async fn fetch(
        self: &Arc<Self>,
        source: &str,
        ids: &[u32],
        hashes: Vec<u64>,
        deadline: Duration,
    ) -> Option<ImportedPrefix> {
        let started = Instant::now();
        let fp = self.engine.kv_fingerprint();
        let mut decoder = Decoder::new(fp, hashes);
        let mut blocks: Vec<KvBlock> = Vec::new();
        let mut received = 0usize;
        let body = ExportRequest { fingerprint: fp.to_string(), token_ids: ids.to_vec() };
        let token = self.options.cluster_token.clone().unwrap_or_default();
        let read = async {
            let resp = self
                .http
                .post(format!("{source}/kv/export"))
                .header(CLUSTER_TOKEN, token)
                .json(&body)
                .send()
                .await
                .map_err(|_| "source_unreachable")?;
            if !resp.status().is_success() {
                return Err(match resp.status() {
                    StatusCode::CONFLICT => "fingerprint",
                    StatusCode::TOO_MANY_REQUESTS => "source_busy",
                    _ => "source_refused",
                });
            }
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|_| "truncated")?;
                received += chunk.len();
                self.metrics
                    .kv_transfer_bytes
                    .with_label_values(&["pulled"])
                    .inc_by(chunk.len() as u64);
                let got = decoder.feed(&chunk).map_err(|e| wire_cause(&e))?;
                blocks.extend(got);
            }
            decoder.finish().map_err(|e| wire_cause(&e))
        };
        let outcome = match tokio::time::timeout(deadline, read).await {
            Ok(Ok(())) if blocks.is_empty() => "none_resident",
            Ok(Ok(())) => "complete",
            Ok(Err(cause)) => cause,
            Err(_) => "deadline",
        };
        self.metrics.kv_pulls.with_label_values(&[outcome]).inc();
        let took = started.elapsed().as_secs_f64();
        self.metrics.kv_pull_seconds.observe(took);
        if matches!(outcome, "complete" | "deadline") && took > 0.0 {
            ewma(&self.pulls.link_speed, received as f64 / took);
        }
        if blocks.is_empty() {
            return None;
        }
        self.metrics.kv_transfer_blocks.with_label_values(&["pulled"]).inc_by(blocks.len() as u64);
        let (engine, ids) = (self.engine.clone(), ids.to_vec());
        let imported = tokio::task::spawn_blocking(move || engine.import_prefix(&ids, blocks))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        imported
            .inspect_err(
                |e| tracing::warn!(error = %e, "importing pulled KV failed; computing instead"),
            )
            .ok()
    }
}

/// The metric label of a refused stream.
fn wire_cause(e: &locus_engine::transfer::wire::WireError) -> &'static str {
    use locus_engine::transfer::wire::WireError as W;
    match e {
        W::Checksum(_) => "checksum",
        W::Fingerprint(_) => "fingerprint",
        W::Truncated { .. } => "truncated",
        W::BadHeader | W::FrameLength { .. } | W::Order { .. } | W::BeyondPrompt(_) => "malformed",
    }
}
