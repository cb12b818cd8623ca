//! The entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`), replayed over
//! the kept corpus (`fuzz/corpus/`) by a stable test (`host/tests/fuzz_corpus.rs`). Each
//! takes arbitrary bytes and must not panic; where a second way to the same answer exists,
//! it asserts they agree.

use locus_policy::{compiled_code, compiled_file};
use locus_tokens::{Tokenizer, block_hashes};

use crate::api::{Endpoint, Prompt, read_job};
use crate::router::{KvEventReader, PromptTokens};

/// A request body as each public endpoint reads it: a job or a 4xx, never a panic; a job
/// always yields a routing prompt and its block hashes.
pub fn request(data: &[u8]) {
    for endpoint in [Endpoint::Generate, Endpoint::Completions, Endpoint::Chat] {
        match read_job(endpoint, data) {
            Ok(job) => {
                let _ = job.routing_prompt(crate::router::ROUTING_PROMPT_BYTES);
                let _ = PromptTokens::default().prompt_blocks(&job.prompt, 64);
            }
            Err(e) => assert!(e.status.is_client_error(), "{endpoint:?}: {}", e.status),
        }
    }
}

/// Text through GPT-2's tokenizer: decoding its tokens gives the text back, and the
/// router's chunked tokenizing gives the worker's blocks; arbitrary ids decode without a
/// panic.
pub fn tokenizer(data: &[u8]) {
    let tok = Tokenizer::new();
    let ids: Vec<u32> =
        data.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
    let _ = tok.decode(&ids);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let tokens = tok.encode(text);
    assert_eq!(tok.decode(&tokens), text, "decode(encode(text)) differs");
    let (blocks, n) = PromptTokens::default().prompt_blocks(&Prompt::Text(text.into()), 1 << 20);
    assert_eq!(n, Some(tokens.len() as u32));
    assert_eq!(blocks, block_hashes(&tokens[..tokens.len() / 16 * 16]));
}

/// A `/kv_events` stream cut at the point its first byte names: the same events (or the
/// same refusal) as read whole.
pub fn kv_events(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else { return };
    let whole = KvEventReader::default().push(stream);
    let at = usize::from(cut).min(stream.len());
    let mut r = KvEventReader::default();
    let split = r.push(&stream[..at]).and_then(|mut a| {
        a.extend(r.push(&stream[at..])?);
        Ok(a)
    });
    assert_eq!(whole, split, "cut at {at}");
}

/// A compiled-policy cache file's bytes: code only from a file stored for this component
/// and engine whose checksum matches; the bytes framed as a file read back whole, and with
/// any one byte changed never pass.
pub fn compiled_cache_file(data: &[u8]) {
    let (sha, compat) = ([7u8; 32], 42);
    let _ = compiled_code(data, &sha, compat);
    if data.is_empty() {
        return;
    }
    let mut file = compiled_file(&sha, compat, data);
    assert_eq!(compiled_code(&file, &sha, compat).as_deref(), Ok(data));
    let at = usize::from(data[0]) * 7919 % file.len();
    file[at] ^= 1;
    assert!(compiled_code(&file, &sha, compat).is_err(), "a changed byte at {at} passed");
}
