//! 8-bit weights (`q8_0`) on the offline synthetic model: they follow f32 within the
//! issue's bounds (teacher-forced top-1 agreement, mean KL), a sequence decodes the same
//! alone and in a batch, and a q8_0 worker's KV fingerprint is not an f32 worker's.

use std::sync::Arc;

use locus_engine::quant::fidelity;
use locus_engine::{Engine, EngineOptions, GenerateRequest, Limits, ModelSource, WeightFormat};

fn load(weights: WeightFormat) -> Arc<Engine> {
    let opts = EngineOptions {
        prefix_cache_bytes: 0,
        limits: Limits { max_batch: 8, ..Limits::default() },
        weights,
    };
    Arc::new(Engine::load(&ModelSource::Synthetic, opts).unwrap())
}

/// Prompts of text and of spread token ids, of different lengths.
fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let texts = [
        "The quick brown fox jumps over the lazy dog while the cache warms up.",
        "You are a helpful assistant. Answer the question below in one sentence.",
        "fn main() { println!(\"hello\"); }",
    ];
    let mut out: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenizer().encode(t)).collect();
    out.extend(
        (0..3u32).map(|i| (0..(40 + 50 * i)).map(|j| (977 * i + 131 * j) % 50000).collect()),
    );
    out
}

#[test]
fn q8_follows_f32_within_the_issue_bounds_and_batches_exactly() {
    let (f32e, q8e) = (load(WeightFormat::F32), load(WeightFormat::Q8_0));
    assert_eq!(q8e.model_info().weights, WeightFormat::Q8_0);
    assert!(q8e.describe().contains("q8_0 weights"), "{}", q8e.describe());
    assert_ne!(f32e.kv_fingerprint(), q8e.kv_fingerprint(), "q8_0 K/V are not f32's");
    assert_eq!(
        f32e.kv_fingerprint().mismatch(&q8e.kv_fingerprint()),
        Some("weights digest"),
        "the handshake names what differs"
    );

    let prompts = prompts(&f32e);
    let f = fidelity(f32e.model(), q8e.model(), &prompts, 32).unwrap();
    eprintln!("{f:?}");
    assert_eq!(f.positions, prompts.len() * 32);
    assert!(f.top1_agreement >= 0.98, "top-1 agreement {}", f.top1_agreement);
    assert!(f.mean_kl <= 0.01, "mean KL {}", f.mean_kl);
    assert!(f.mean_kl > 0.0, "q8_0 equal to f32 means f32 ran");
    // f32 against itself: nothing differs.
    let same = fidelity(f32e.model(), f32e.model(), &prompts[..1], 8).unwrap();
    assert_eq!((same.top1_agreement, same.mean_kl, same.divergence), (1.0, 0.0, vec![8]));

    // Alone and in a batch: the same tokens, in q8_0 as in f32.
    let req = GenerateRequest { max_new_tokens: 16, ignore_eos: true, ..Default::default() };
    let alone: Vec<Vec<u32>> =
        prompts.iter().map(|p| q8e.generate_from_ids(p, &req, |_| {}).unwrap().token_ids).collect();
    let together: Vec<Vec<u32>> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let (e, req) = (q8e.clone(), req.clone());
            std::thread::spawn(move || e.generate_from_ids(&p, &req, |_| {}).unwrap().token_ids)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(alone, together, "q8_0: alone vs batched");
}
