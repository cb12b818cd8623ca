//! What a worker tells routers, read by both servers: its load (`GET /load`,
//! [`LoadReport`]) and its prefix KV store as a stream of Server-Sent Events
//! (`GET /kv_events`, [`KvEvent`]), so that a router can keep an exact picture of which
//! block hashes (see `locus_tokens::blocks`) each worker holds.
//!
//! Each event's `data:` line is one JSON object ([`KvEvent`]):
//!
//! ```text
//! {"seq":N,"type":"stored","hashes":[u64,...],"ts_us":T}    blocks now resident, parents first
//! {"seq":N,"type":"removed","hashes":[u64,...],"ts_us":T}   blocks dropped (evictions and their descendants)
//! {"seq":N,"type":"cleared","hashes":[],"ts_us":T}          every block dropped (a flush)
//! ```
//!
//! `seq` counts the store's operations from 1 in this worker process, without gaps; `ts_us` is
//! when the store reported the operation (Unix microseconds, wall clock). A stream starts with
//! a snapshot: a `cleared` event, then one `stored` event listing every resident hash (parents
//! first; possibly empty), both with `"snapshot":true`, the worker's `"worker_id"` and its
//! `"started_at_us"` (which changes on a restart), and `seq` equal to the last operation's
//! before the snapshot (0 if none). Live events follow, from `seq + 1` on. A subscriber that
//! falls more than the worker's channel capacity (4096 events) behind gets a fresh snapshot instead of the
//! events it missed; the stream never ends because of it. It ends when the worker stops.

use serde::{Deserialize, Serialize};

/// A worker's load, as `GET /load` answers it (one JSON object with these fields).
///
/// KV figures are in blocks of 16 tokens (`locus_tokens::BLOCK_TOKENS`), each
/// `block_bytes(n_layer, n_embd)` bytes (the worker's engine), so that they compare with the
/// block hashes of `/kv_events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The worker's id (`--worker-id`).
    pub worker_id: String,
    /// Requests waiting for admission to the batch.
    pub waiting: u32,
    /// Sequences in the batch (prefilling or decoding).
    pub running: u32,
    /// Running KV budget reserved by the batch, in blocks, rounded up.
    pub kv_blocks_used: u64,
    /// Running KV budget, in whole blocks.
    pub kv_blocks_total: u64,
    /// Blocks resident in the prefix store.
    pub prefix_blocks: u64,
    /// The prefix store's budget, in whole blocks.
    pub prefix_blocks_total: u64,
    /// Tokens generated per second over about the last 2 s (measured, not estimated).
    pub tokens_per_second: f64,
    /// Tokens generated since the engine started.
    pub generated_tokens: u64,
    /// Requests waiting or running beyond which new ones get 429.
    pub max_queue: usize,
    /// Places left in that queue.
    pub queue_available: usize,
    /// Sequences the worker's engine runs in one batch at most: what a router dispatches
    /// to it at once by default. Absent from workers older than flow control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// The worker's KV fingerprint (hex): present only when it exports KV (it has a
    /// cluster token). Workers with equal fingerprints can exchange prefix KV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_fingerprint: Option<String>,
    /// Prompt tokens per second of the worker's own prefills (a moving average); absent
    /// before it measured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_second: Option<f64>,
    /// Bytes per second of the worker's KV pulls that completed or hit their deadline (a
    /// moving average); absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_pull_bytes_per_second: Option<f64>,
    /// Bytes of one KV block's K and V (every layer) as stored; a transfer adds 16 per block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_block_bytes: Option<u64>,
    /// When this report was made, Unix microseconds.
    pub ts_us: u64,
}

/// What happened in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvEventKind {
    /// Blocks became resident.
    Stored,
    /// Blocks were dropped.
    Removed,
    /// Every block was dropped.
    Cleared,
    /// A type this build does not know (from a newer worker): readers skip it. Never sent.
    #[serde(other)]
    Unknown,
}

impl KvEventKind {
    /// Its name on the wire, and as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Removed => "removed",
            Self::Cleared => "cleared",
            Self::Unknown => "unknown",
        }
    }
}

/// One event of `GET /kv_events` (see the module documentation for the protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// The store operation's number, from 1 per worker process; a snapshot carries the last
    /// operation's number before it.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: KvEventKind,
    /// Block hashes, parents before children (empty for `cleared`).
    pub hashes: Vec<u64>,
    /// When the store reported it (or the snapshot was taken), Unix microseconds.
    pub ts_us: u64,
    /// Part of the snapshot a stream starts with (or restarts with after lagging).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// Snapshot events only: the worker's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Snapshot events only: when the worker started, Unix microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_us: Option<u64>,
}
