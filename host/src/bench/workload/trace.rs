//! Trace replay: a JSON-lines file of timed requests, each with its prompt or a seeded
//! prefix and suffix of given lengths.

use std::path::Path;

use serde::Deserialize;

use super::kinds::BenchRequest;
use super::words::{rng_for, text};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceRecord {
    timestamp_ms: u64,
    prompt: Option<String>,
    prefix_id: Option<u64>,
    prefix_tokens: Option<usize>,
    suffix_tokens: Option<usize>,
    max_tokens: u32,
}

/// The requests of the trace at `path`; `seed` makes the prefixes and suffixes of records
/// that give lengths, not text.
pub(super) fn read_trace(path: &Path, seed: u64) -> Result<Vec<BenchRequest>, String> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
    let mut rng = rng_for(seed, 1);
    let mut out = Vec::new();
    for (n, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: TraceRecord =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let (prompt, group) = match (r.prompt, r.prefix_id, r.prefix_tokens) {
            (Some(p), _, _) => (p, 0),
            (None, Some(id), Some(len)) => {
                let prefix = text(&mut rng_for(seed, id.wrapping_add(2)), len);
                (format!("{prefix}{}", text(&mut rng, r.suffix_tokens.unwrap_or(0))), id as usize)
            }
            _ => {
                return Err(format!(
                    "{}:{}: a record needs `prompt`, or `prefix_id` and `prefix_tokens`",
                    path.display(),
                    n + 1
                ));
            }
        };
        out.push(BenchRequest {
            at_ms: Some(r.timestamp_ms),
            prompt,
            max_tokens: r.max_tokens,
            group,
            session: None,
        });
    }
    Ok(out)
}
