//! The prompt's KV block hashes, as the router computes them for a policy of 0.2.0 or
//! later: the leading part of the prompt tokenized with GPT-2's tokenizer (the workers'
//! own code), then hashed into the same chain the workers publish in their KV events.
//!
//! Tokenizing 1 KB of text costs about 50-100 µs of CPU, which would halve a router's
//! throughput (BENCHMARKS.md); but the prompts worth routing by prefix share their beginnings. So the
//! text is cut into chunks at word ends, where GPT-2's pre-tokenizer always splits (no
//! pre-token holds a non-space character followed by a space), which makes a chunk's tokens
//! the same wherever it appears, and each chunk's tokens are cached.

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;

use locus_tokens::{BLOCK_TOKENS, Tokenizer, block_hashes};
use lru::LruCache;
use parking_lot::Mutex;

use locus_policy::{BlockFill, Blocks, Request};

use crate::api::Prompt;

/// Text bytes tokenized per routed token at most: GPT-2 averages about 4 bytes per token
/// on English, so a prompt within this budget is almost always tokenized whole.
const BYTES_PER_ROUTED_TOKEN: usize = 8;

/// Chunks end at the first word end at or after this many bytes.
const CHUNK_BYTES: usize = 256;

/// Chunks whose tokens are kept (about 1 MB at 256 bytes and ~64 tokens each).
const CACHED_CHUNKS: usize = 4096;

/// A chunk's text and its tokens.
type Chunk = Arc<(String, Vec<u32>)>;

/// Tokenizes prompts into block hashes, caching each chunk's tokens.
pub struct PromptTokens {
    tokenizer: Tokenizer,
    /// FNV hash of a chunk's text -> the text and its tokens (the text is compared on a hit,
    /// so a hash collision can never give wrong tokens). A parking_lot lock, without poisoning:
    /// a get or a put is never left half-done, so a panicked request must not stop routing.
    chunks: Mutex<LruCache<u64, Chunk>>,
}

impl Default for PromptTokens {
    fn default() -> Self {
        Self {
            tokenizer: Tokenizer::new(),
            chunks: Mutex::new(LruCache::new(NonZeroUsize::new(CACHED_CHUNKS).expect("non-zero"))),
        }
    }
}

/// A prompt's block hashes as the policy facade asks for them: made on the request's path,
/// or, when only a shadow reads them, by the shadow's thread from the part of the prompt
/// that is read (so a queue of long prompts stays small).
pub(super) struct PromptBlocks<'a> {
    pub(super) tokens: &'a Arc<PromptTokens>,
    pub(super) prompt: &'a Prompt,
    /// Leading tokens routed on (0: none).
    pub(super) max: usize,
}

impl Blocks for PromptBlocks<'_> {
    fn fill(&self, req: &mut Request) {
        (req.block_hashes, req.prompt_tokens) = self.tokens.prompt_blocks(self.prompt, self.max);
    }

    fn deferred(&self) -> Option<BlockFill> {
        if self.max == 0 {
            return None;
        }
        let (tokens, max) = (self.tokens.clone(), self.max);
        let prompt = PromptTokens::routed_part(self.prompt, max);
        Some(Arc::new(move |r: &mut Request| {
            (r.block_hashes, r.prompt_tokens) = tokens.prompt_blocks(&prompt, max);
        }))
    }
}

impl PromptTokens {
    /// The block hashes of the leading `max_tokens` tokens of `prompt`, and the whole
    /// prompt's token count when it was all tokenized. A text longer than
    /// `max_tokens` × 8 bytes is cut at a word end before that.
    pub fn prompt_blocks(&self, prompt: &Prompt, max_tokens: usize) -> (Vec<u64>, Option<u32>) {
        let count = |n: usize| Some(n.min(u32::MAX as usize) as u32);
        let usable = |ids: &[u32]| {
            let n = ids.len().min(max_tokens) / BLOCK_TOKENS * BLOCK_TOKENS;
            block_hashes(&ids[..n])
        };
        match prompt {
            Prompt::Ids(ids) => (usable(ids), count(ids.len())),
            Prompt::Text(_) if max_tokens == 0 => (Vec::new(), None),
            Prompt::Text(t) => {
                let budget = max_tokens.saturating_mul(BYTES_PER_ROUTED_TOKEN);
                let whole = t.len() <= budget;
                let text = if whole { t.as_str() } else { &t[..word_end_before(t, budget)] };
                let ids = self.encode(text, max_tokens);
                // Tokenizing stops early once `max_tokens` are there; only a prompt
                // tokenized to its end has a known length.
                let n = (whole && ids.len() < max_tokens).then_some(ids.len());
                (usable(&ids), n.and_then(count))
            }
        }
    }

    /// The part of `prompt` that [`PromptTokens::prompt_blocks`] reads for `max_tokens`,
    /// with the same answer: a text longer than the budget keeps a few bytes past it (so
    /// it still reads as cut, at the same word end); token ids are kept whole (their
    /// count is the prompt's length).
    pub fn routed_part(prompt: &Prompt, max_tokens: usize) -> Prompt {
        match prompt {
            Prompt::Text(t) => {
                let mut end = t.len().min(max_tokens.saturating_mul(BYTES_PER_ROUTED_TOKEN) + 8);
                while !t.is_char_boundary(end) {
                    end += 1;
                }
                Prompt::Text(t[..end].to_string())
            }
            Prompt::Ids(ids) => Prompt::Ids(ids.clone()),
        }
    }

    /// The tokens of `text`, chunk by chunk, stopping once `max_tokens` are there.
    fn encode(&self, text: &str, max_tokens: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut start = 0;
        while start < text.len() && ids.len() < max_tokens {
            let end = word_end_after(text, start + CHUNK_BYTES);
            ids.extend_from_slice(&self.chunk(&text[start..end]).1);
            start = end;
        }
        ids
    }

    fn chunk(&self, chunk: &str) -> Chunk {
        let mut h = fnv::FnvHasher::default();
        chunk.hash(&mut h);
        let key = h.finish();
        if let Some(hit) = self.chunks.lock().get(&key).filter(|c| c.0 == chunk) {
            return hit.clone();
        }
        // Tokenized outside the lock: the costly part.
        let entry = Arc::new((chunk.to_string(), self.tokenizer.encode(chunk)));
        self.chunks.lock().put(key, entry.clone());
        entry
    }
}

/// Whether `i` splits `t` where GPT-2's pre-tokenizer always splits: a non-space character
/// before, a space after.
fn is_word_end(t: &str, i: usize) -> bool {
    t[i..].chars().next().is_some_and(char::is_whitespace)
        && t[..i].chars().next_back().is_some_and(|c| !c.is_whitespace())
}

/// The largest `i <= max` where `t[..i]` ends a word (`t.len()` when `max` reaches the end;
/// 0 if there is none).
fn word_end_before(t: &str, max: usize) -> usize {
    if max >= t.len() {
        return t.len();
    }
    let mut i = max;
    while i > 0 && !(t.is_char_boundary(i) && is_word_end(t, i)) {
        i -= 1;
    }
    i
}

/// The smallest `i >= min` where `t[..i]` ends a word, or `t.len()`.
fn word_end_after(t: &str, min: usize) -> usize {
    let mut i = min;
    while i < t.len() && !(t.is_char_boundary(i) && is_word_end(t, i)) {
        i += 1;
    }
    i.min(t.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Endpoint, read_job};

    #[test]
    fn long_prompts_are_cut_where_a_word_ends() {
        let t = "alpha beta  gamma";
        assert_eq!(word_end_before(t, 100), t.len());
        assert_eq!(&t[..word_end_before(t, 8)], "alpha");
        assert_eq!(&t[..word_end_before(t, 10)], "alpha beta");
        assert_eq!(&t[..word_end_before(t, 11)], "alpha beta");
        assert_eq!(word_end_before("nowhitespace", 5), 0);
        assert_eq!(word_end_before("é é", 3), 2, "never inside a character");
        assert_eq!(&t[word_end_after(t, 1)..], " beta  gamma");
        assert_eq!(word_end_after(t, 12), t.len());
    }

    fn job(text: &str) -> crate::api::Job {
        let body = serde_json::json!({"text": text}).to_string();
        read_job(Endpoint::Generate, body.as_bytes()).expect("a valid request")
    }

    #[test]
    fn chunked_tokens_are_the_workers_tokens() {
        let tok = Tokenizer::new();
        let p = PromptTokens::default();
        let texts = [
            "You are a careful assistant.  Answer briefly:\n\n- one\n- two   ".repeat(40),
            format!("{} tail", "x".repeat(1000)),
            "naïve café — «quoted» 123,456.78 isn't it? ".repeat(30),
            "   leading spaces and\ttabs\n\n\nnewlines ".repeat(25),
        ];
        for (i, text) in texts.iter().enumerate() {
            let want = tok.encode(text);
            // Twice: tokenized, then from the cache.
            for _ in 0..2 {
                let (blocks, n) = p.prompt_blocks(&job(text).prompt, 100_000);
                assert_eq!(n, Some(want.len() as u32));
                assert_eq!(blocks, block_hashes(&want));
            }
            // Only the leading part, cut at a word end: its blocks are the worker's.
            let (blocks, n) = p.prompt_blocks(&job(text).prompt, 64);
            assert_eq!(n, None);
            assert_eq!(blocks[..], block_hashes(&want)[..blocks.len()]);
            // (The second text has no word end in its first 512 bytes: nothing to route by.)
            assert!(i == 1 || blocks.len() >= 2, "{} blocks", blocks.len());
        }
        // The part kept for a shadow's thread gives the same answer as the whole prompt.
        for text in &texts {
            for max in [0, 3, 64, 100, 100_000] {
                let whole = job(text).prompt;
                let part = PromptTokens::routed_part(&whole, max);
                assert_eq!(p.prompt_blocks(&part, max), p.prompt_blocks(&whole, max), "{max}");
            }
        }
        let (blocks, n) = p.prompt_blocks(&job("short").prompt, 0);
        assert_eq!((blocks.len(), n), (0, None));
    }

    /// Pieces text is made of: words, numbers, punctuation, contractions, the special
    /// token, and every kind of whitespace (Unicode's too, which both the chunking and
    /// GPT-2's pre-tokenizer must agree on).
    const PIECES: &[&str] = &[
        "a",
        "word",
        "Word",
        "é",
        "naïve",
        "日本",
        "🦀",
        "7",
        "2024",
        ".",
        ",",
        "?!",
        "—",
        "'s",
        "'ll",
        "n't",
        "<|endoftext|>",
        "<",
        "|",
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{85}",
        "\u{2028}",
        "\u{3000}",
        "\u{200b}",
        "\u{feff}",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The router's chunked tokenizing (cut where a word ends, chunks cached) gives
        /// the tokens of the whole text, as the worker computes them.
        #[test]
        fn chunked_tokenizing_equals_tokenizing_whole(
            picks in proptest::collection::vec(proptest::sample::select(PIECES), 0..1200),
            long_run in 0usize..700,
        ) {
            let mut text: String = picks.concat();
            // A run longer than the tokenizer's own cut (256 bytes), somewhere in it.
            let at = text.char_indices().map(|(i, _)| i).nth(picks.len() / 2).unwrap_or(0);
            text.insert_str(at, &"x".repeat(long_run));
            let p = PromptTokens::default();
            let want = Tokenizer::new().encode(&text);
            proptest::prop_assert_eq!(p.encode(&text, usize::MAX), want.clone());
            // And again, from the cache of chunks.
            proptest::prop_assert_eq!(p.encode(&text, usize::MAX), want);
        }
    }
}
