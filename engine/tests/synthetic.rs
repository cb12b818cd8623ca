//! The offline default: distilgpt2's shape with deterministic weights, no files needed.
//! One test function so the ~330 MB model is built only twice per run.

use locus_engine::gpt2::Config;
use locus_engine::source::{SYNTHETIC_SEED, synthetic_weights};
use locus_engine::{
    Engine, EngineError, EngineOptions, FinishReason, GenerateRequest, ModelSource,
};

#[test]
fn synthetic_default_is_offline_deterministic_and_accounts_bytes() {
    let source: ModelSource = "synthetic-distilgpt2".parse().unwrap();
    let load = || {
        Engine::load(&source, EngineOptions { prefix_cache_bytes: 64 << 20, ..Default::default() })
            .unwrap()
    };
    let engine = load();
    let info = engine.model_info();
    assert_eq!(info.config, Config::distilgpt2());
    assert_eq!(info.parameters, 81_912_576, "distilgpt2's parameter count");
    assert!(engine.describe().contains("synthetic-distilgpt2"), "{}", engine.describe());

    let req = GenerateRequest {
        prompt: "The quick brown fox".into(),
        max_new_tokens: 6,
        ..Default::default()
    };
    let first = engine.generate(&req).unwrap();
    assert_eq!(first.prompt_tokens, 4);
    assert!(first.completion_tokens > 0);

    // A caller that stops after the first piece ends the generation there (empty pieces are
    // the scheduler asking whether to go on while nothing is produced).
    let mut pieces = 0;
    let long_req = GenerateRequest { max_new_tokens: 64, ..req.clone() };
    let cut = engine
        .generate_until(&engine.prepare(&long_req).unwrap(), &long_req, |piece, _| {
            if piece.is_empty() {
                std::ops::ControlFlow::Continue(())
            } else {
                pieces += 1;
                std::ops::ControlFlow::Break(())
            }
        })
        .unwrap();
    assert_eq!(pieces, 1, "nothing after the Break");
    assert_eq!(cut.finish_reason, FinishReason::Aborted);
    assert!(cut.completion_tokens < 64, "stopped after {} tokens", cut.completion_tokens);
    let too_long = GenerateRequest { prompt: "a ".repeat(2000), ..req.clone() };
    assert!(matches!(engine.prepare(&too_long), Err(EngineError::PromptTooLong { .. })));

    // 40 tokens hold two full blocks: 2 x 6 layers x (K + V) x 12 heads x 16 x 64 x 4 bytes.
    let long: Vec<u32> = (0..40).map(|i| 1000 + i).collect();
    let (logits, _) = engine.last_logits(&long, true).unwrap();
    let per_block = 6 * 2 * 12 * 16 * 64 * 4;
    assert_eq!(engine.cache_stats().entries, 2);
    assert_eq!(engine.cache_stats().bytes, 2 * per_block);
    assert_eq!(info.kv_bytes_per_token, per_block / 16);
    let (warm, cached) = engine.last_logits(&long, true).unwrap();
    assert_eq!(cached, 32);
    let diff = logits.iter().zip(&warm).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "prefix reuse changed logits by {diff}");
    drop(engine);

    let again = load();
    let second = again.generate(&req).unwrap();
    assert_eq!(first.token_ids, second.token_ids);
    assert_eq!(again.last_logits(&long, false).unwrap().0, logits);
}

#[test]
fn synthetic_weights_are_pinned() {
    // A small shape: the generator is the same for every tensor size.
    let cfg = Config {
        vocab_size: 64,
        n_positions: 16,
        n_embd: 8,
        n_layer: 1,
        n_head: 2,
        ..Config::distilgpt2()
    };
    let dev = candle_core::Device::Cpu;
    let a = synthetic_weights(&cfg, SYNTHETIC_SEED, &dev).unwrap();
    let b = synthetic_weights(&cfg, SYNTHETIC_SEED, &dev).unwrap();
    let wte = a["wte.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(wte, b["wte.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let std = (wte.iter().map(|x| x * x).sum::<f32>() / wte.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "{std}");
    let ln = a["h.0.ln_1.weight"].to_vec1::<f32>().unwrap();
    assert!(ln.iter().all(|&x| x == 1.0));
    // Pinned so a change of generator (which would change every benchmark) is noticed.
    assert_eq!(wte[..4], [-0.008399664, 0.035896394, -0.007117329, 0.006110384]);
}
