//! KV on the move between two engines of the same (synthetic) weights: blocks exported by
//! one, sent as the wire's frames and imported by the other give the logits and greedy
//! tokens of computing them, and every kind of bad stream is refused at the first bad
//! block, keeping the verified ones before it.

use std::sync::Arc;

use locus_engine::transfer::KvFingerprint;
use locus_engine::transfer::wire::{Decoder, KvBlock, WireError, block_frame, header_frame};
use locus_engine::{BLOCK_TOKENS, Engine, EngineOptions, GenerateRequest, ModelSource};
use locus_tokens::blocks::block_hashes;

fn load() -> Arc<Engine> {
    let options = EngineOptions { prefix_cache_bytes: 64 << 20, ..Default::default() };
    Arc::new(Engine::load(&ModelSource::Synthetic, options).unwrap())
}

/// A prompt of 5 full blocks and 3 tokens more.
fn prompt(salt: u32) -> Vec<u32> {
    (0..(5 * BLOCK_TOKENS as u32 + 3)).map(|j| 1000 + 31 * salt + 7 * j).collect()
}

/// The holder's answer to `ids`, as bytes on the wire.
fn stream(holder: &Engine, ids: &[u32]) -> Vec<u8> {
    let fp = holder.kv_fingerprint();
    let blocks = holder.export_prefix(ids);
    let mut out = header_frame(&fp, blocks.len() as u32);
    for (i, (hash, kv)) in blocks.iter().enumerate() {
        out.extend(block_frame(&fp, i as u32, *hash, kv).unwrap());
    }
    out
}

/// A holder that has computed `prompt(salt)`, an importer beside it, the prompt, and the
/// holder's answer to it on the wire.
fn held(salt: u32) -> (Arc<Engine>, Arc<Engine>, Vec<u32>, Vec<u8>) {
    let (holder, importer) = (load(), load());
    let ids = prompt(salt);
    holder.last_logits(&ids, true).unwrap();
    let bytes = stream(&holder, &ids);
    (holder, importer, ids, bytes)
}

/// Bytes of one block frame, length prefix included.
fn frame_len(fp: &KvFingerprint) -> usize {
    4 + fp.block_payload_bytes() + 12
}

/// Decodes `bytes` for `ids` in pieces of `piece` bytes: the verified blocks, and the error.
fn decode(
    fp: KvFingerprint,
    ids: &[u32],
    bytes: &[u8],
    piece: usize,
) -> (Vec<KvBlock>, Option<WireError>) {
    let mut d = Decoder::new(fp, block_hashes(ids));
    let mut blocks = Vec::new();
    for chunk in bytes.chunks(piece) {
        match d.feed(chunk) {
            Ok(b) => blocks.extend(b),
            Err(e) => return (blocks, Some(e)),
        }
    }
    (blocks, d.finish().err())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn imported_blocks_give_the_logits_and_tokens_of_computed_ones() {
    let (holder, importer, ids, bytes) = held(1);
    assert_eq!(holder.kv_fingerprint(), importer.kv_fingerprint());
    // Pieces that split frames anywhere, as a network does.
    let (blocks, err) = decode(importer.kv_fingerprint(), &ids, &bytes, 7919);
    assert_eq!(err, None);
    assert_eq!(blocks.len(), 5);
    let pinned = importer.import_prefix(&ids, blocks).unwrap();
    assert_eq!(pinned.tokens(), 5 * BLOCK_TOKENS);
    assert_eq!(importer.cache_stats().imported, 5);

    let (computed, _) = importer.last_logits(&ids, false).unwrap();
    let (reused, cached) = importer.last_logits(&ids, true).unwrap();
    assert_eq!(cached, 5 * BLOCK_TOKENS);
    let diff = max_abs_diff(&computed, &reused);
    assert!(diff <= 1e-5, "imported KV moved the logits by {diff}");

    let req = GenerateRequest { max_new_tokens: 16, ignore_eos: true, ..Default::default() };
    let alone = load().generate_from_ids(&ids, &req, |_| {}).unwrap();
    importer.flush_cache();
    let with = importer
        .generate_with_prefix(&ids, &req, Some(pinned), |_, _| std::ops::ControlFlow::Continue(()))
        .unwrap();
    // The store was flushed: the prefix came from the pinned blocks.
    assert_eq!(with.cached_tokens, 5 * BLOCK_TOKENS);
    assert_eq!(with.token_ids, alone.token_ids);
}

#[test]
fn the_holder_sends_only_blocks_whose_tokens_equal_the_importers() {
    let holder = load();
    let ids = prompt(2);
    holder.last_logits(&ids, true).unwrap();
    let mut other = ids.clone();
    other[2 * BLOCK_TOKENS + 1] += 1;
    assert_eq!(holder.export_prefix(&other).len(), 2);
    assert_eq!(holder.export_prefix(&prompt(3)).len(), 0);
    assert_eq!(holder.export_prefix(&ids[..3 * BLOCK_TOKENS + 5]).len(), 3);
}

#[test]
fn a_tampered_byte_stops_the_stream_at_its_block() {
    let (_, importer, ids, mut bytes) = held(4);
    let frame = frame_len(&importer.kv_fingerprint());
    let header = bytes.len() - 5 * frame;
    bytes[header + 3 * frame + 100] ^= 1;
    let (blocks, err) = decode(importer.kv_fingerprint(), &ids, &bytes, 65536);
    assert_eq!(err, Some(WireError::Checksum(3)));
    assert_eq!(blocks.len(), 3);
}

#[test]
fn blocks_for_other_tokens_fail_their_checksum() {
    // A holder that stored K/V for tokens other than the importer's cannot pass them off:
    // the checksum covers the importer's own block hashes.
    let (_, importer, ids, bytes) = held(5);
    let mut mine = ids.clone();
    mine[BLOCK_TOKENS + 3] += 1;
    let (blocks, err) = decode(importer.kv_fingerprint(), &mine, &bytes, 65536);
    assert_eq!(err, Some(WireError::Checksum(1)));
    assert_eq!(blocks.len(), 1);
}

#[test]
fn a_different_fingerprint_is_refused_before_any_block() {
    let (_, importer, ids, bytes) = held(6);
    for (field, fp) in [
        ("weights digest", KvFingerprint { weights_digest: 1, ..importer.kv_fingerprint() }),
        ("block hash seed", KvFingerprint { hash_seed: 7, ..importer.kv_fingerprint() }),
        ("KV layout version", KvFingerprint { layout_version: 9, ..importer.kv_fingerprint() }),
    ] {
        let (blocks, err) = decode(fp, &ids, &bytes, 65536);
        assert_eq!(err, Some(WireError::Fingerprint(field)));
        assert!(blocks.is_empty());
    }
    let hex = importer.kv_fingerprint().to_string();
    assert_eq!(KvFingerprint::parse_hex(&hex), Some(importer.kv_fingerprint()));
    assert_eq!(KvFingerprint::parse_hex(&hex[1..]), None);
}

#[test]
fn a_truncated_stream_keeps_the_whole_blocks_before_the_cut() {
    let (_, importer, ids, bytes) = held(7);
    let frame = frame_len(&importer.kv_fingerprint());
    let header = bytes.len() - 5 * frame;
    let cut = &bytes[..header + 2 * frame + frame / 2];
    let (blocks, err) = decode(importer.kv_fingerprint(), &ids, cut, 4096);
    assert_eq!(err, Some(WireError::Truncated { got: 2, announced: 5 }));
    assert_eq!(blocks.len(), 2);
    // A frame announcing another length is refused before it is buffered.
    let mut bad = bytes.clone();
    bad[header..header + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (blocks, err) = decode(importer.kv_fingerprint(), &ids, &bad, 65536);
    assert!(matches!(err, Some(WireError::FrameLength { got, .. }) if got == u32::MAX as usize));
    assert!(blocks.is_empty());
    // Garbage is not a stream.
    let (_, err) = decode(importer.kv_fingerprint(), &ids, b"HTTP/1.1 500 oops\r\n\r\n", 64);
    assert_eq!(err, Some(WireError::BadHeader));
}
