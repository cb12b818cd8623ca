//! GPT-2's byte-level BPE, offline: tiktoken-rs embeds `r50k_base`, which has exactly GPT-2's
//! merges and ids (50256 = `<|endoftext|>`), so no `tokenizer.json` is needed on disk.

use tiktoken_rs::CoreBPE;

/// Token id of `<|endoftext|>`.
pub const EOS_TOKEN: u32 = 50256;
/// Number of ids `r50k_base` knows (50256 merges + `<|endoftext|>`).
pub const VOCAB_SIZE: usize = 50257;

/// Longest run of non-whitespace (or of whitespace) characters encoded in one piece; see
/// [`Tokenizer::encode`].
pub const MAX_RUN_BYTES: usize = 256;

/// GPT-2 tokenizer.
pub struct Tokenizer {
    bpe: &'static CoreBPE,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer {
    /// The shared `r50k_base` instance (built once per process).
    pub fn new() -> Self {
        Self { bpe: tiktoken_rs::r50k_base_singleton() }
    }

    /// Encodes text. `<|endoftext|>` in the text becomes token 50256, as Hugging Face's GPT-2
    /// tokenizer does.
    ///
    /// One deviation bounds the cost: a run of more than [`MAX_RUN_BYTES`] bytes without a
    /// change between whitespace and non-whitespace is cut every [`MAX_RUN_BYTES`] bytes and
    /// the parts encoded separately. BPE's cost grows with the square of a pre-tokenized
    /// piece's length (a 128 KB word took 7 s) and the regex recurses on it (a 1.5 MB word
    /// overflowed the stack); such runs are never natural text, and their tokens only differ
    /// at the cuts.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let (mut segment, mut run, mut space) = (0, 0, None);
        for (i, c) in text.char_indices() {
            let is_space = c.is_whitespace();
            if space != Some(is_space) {
                (run, space) = (i, Some(is_space));
            } else if i - run >= MAX_RUN_BYTES {
                out.extend(self.bpe.encode_with_special_tokens(&text[segment..i]));
                (segment, run) = (i, i);
            }
        }
        out.extend(self.bpe.encode_with_special_tokens(&text[segment..]));
        out
    }

    /// Raw bytes of one token; `None` for ids outside the vocabulary. A token can be part of a
    /// multi-byte character, so single tokens are bytes, not text.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if (id as usize) < VOCAB_SIZE {
            // Guarded above: tiktoken panics on ids it does not know.
            self.bpe._decode_native_and_split(vec![id]).next()
        } else {
            None
        }
    }

    /// Bytes of the longest token: a text longer than `n * max_token_bytes()` cannot be
    /// fewer than `n` tokens, which lets a server refuse a huge prompt without tokenizing it.
    pub fn max_token_bytes(&self) -> usize {
        static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *MAX.get_or_init(|| {
            (0..VOCAB_SIZE as u32)
                .filter_map(|id| self.token_bytes(id))
                .map(|b| b.len())
                .max()
                .unwrap_or(1)
        })
    }

    /// Decodes ids into text; invalid UTF-8 (a sequence cut mid-character) is replaced with
    /// U+FFFD and unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&id| self.token_bytes(id)).flatten().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token bytes into text pieces that never split a character: bytes of an
/// incomplete UTF-8 sequence wait for the next token.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds one token's bytes; returns the text now complete (empty while a character is
    /// unfinished).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An invalid byte (not just an unfinished sequence) can never complete: emit it lossily.
            Err(e) if e.error_len().is_some() => self.pending.len(),
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(valid);
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        out
    }

    /// The bytes still waiting (an unfinished character at the end of the stream), lossily;
    /// the stream is then empty.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = Tokenizer::new();
        assert_eq!(t.encode("Hello world"), vec![15496, 995]);
        assert_eq!(t.encode(" the"), vec![262]);
        assert_eq!(t.encode("<|endoftext|>"), vec![EOS_TOKEN]);
    }

    #[test]
    fn long_runs_are_cut_and_cheap() {
        let t = Tokenizer::new();
        // Natural text is encoded exactly as before (one piece per word).
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        assert_eq!(t.encode(&text), t.bpe.encode_with_special_tokens(&text));
        // A 128 KB word: cut every 256 bytes, so it encodes fast and round-trips.
        let word = "abcdefghij".repeat(13_107);
        let ids = t.encode(&word);
        assert_eq!(t.decode(&ids), word);
        let whole: Vec<u32> = word
            .as_bytes()
            .chunks(MAX_RUN_BYTES)
            .flat_map(|c| t.bpe.encode_with_special_tokens(std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(ids, whole);
        // Multi-byte characters are never split by a cut.
        let wide = "日本語".repeat(500);
        assert_eq!(t.decode(&t.encode(&wide)), wide);
    }

    #[test]
    fn round_trips() {
        let t = Tokenizer::new();
        for s in
            ["Hello world", "  leading spaces\nand lines\t", "héllo wörld — ünïcode 日本語 🦀", ""]
        {
            assert_eq!(t.decode(&t.encode(s)), s);
        }
    }

    #[test]
    fn streaming_never_splits_characters() {
        let t = Tokenizer::new();
        let text = "crab 🦀 and 日本語";
        let ids = t.encode(text);
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for id in ids {
            let piece = s.push(&t.token_bytes(id).unwrap());
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
        assert_eq!(t.token_bytes(VOCAB_SIZE as u32), None);
    }
}
