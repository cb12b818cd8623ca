//! The best any router could do on a request sequence: the hit rates of one unbounded
//! cache that sees every request, with the workers' own rules (a response is reused for
//! the same prompt and token budget; prompt K/V is reused in whole 16-token blocks, and
//! never for the prompt's last token, whose logits must be computed).

use std::collections::HashSet;

use locus_tokens::{BLOCK_TOKENS, Tokenizer};
use serde::Serialize;

use super::workload::BenchRequest;

/// Hit rates of the ideal single cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Oracle {
    /// Requests whose whole answer was cached.
    pub response_hit_rate: f64,
    /// Prompt tokens served from cache, over all prompt tokens (a response hit counts
    /// all of its prompt tokens, as the workers report it).
    pub prefix_token_hit_rate: f64,
}

/// The oracle of `requests`, in order. All requests are taken as cacheable (greedy).
pub fn oracle(requests: &[BenchRequest]) -> Oracle {
    let tok = Tokenizer::new();
    let mut answers: HashSet<(&str, u32)> = HashSet::new();
    let mut blocks: HashSet<&[u32]> = HashSet::new();
    let encoded: Vec<Vec<u32>> = requests.iter().map(|r| tok.encode(&r.prompt)).collect();
    let (mut hits, mut cached, mut total) = (0usize, 0usize, 0usize);
    for (r, ids) in requests.iter().zip(&encoded) {
        total += ids.len();
        if !answers.insert((r.prompt.as_str(), r.max_tokens)) {
            hits += 1;
            cached += ids.len();
            continue;
        }
        // A block is identified by all tokens up to its end (the chained hash's meaning).
        let usable = ids.len().saturating_sub(1) / BLOCK_TOKENS;
        let reused =
            (1..=usable).take_while(|&b| blocks.contains(&ids[..b * BLOCK_TOKENS])).count();
        cached += reused * BLOCK_TOKENS;
        for b in 1..=ids.len() / BLOCK_TOKENS {
            blocks.insert(&ids[..b * BLOCK_TOKENS]);
        }
    }
    let rate = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Oracle {
        response_hit_rate: rate(hits, requests.len()),
        prefix_token_hit_rate: rate(cached, total),
    }
}
