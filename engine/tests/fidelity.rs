//! The engine against PyTorch `transformers` on a committed fixture (engine/scripts/make_fixture.py):
//! a 2-layer GPT-2 with random weights, loaded through the real `ModelSource::Dir` path.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use locus_engine::gpt2::Config;
use locus_engine::{
    CachePolicy, Engine, EngineError, EngineOptions, FinishReason, GenerateRequest, ModelSource,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    new_tokens: usize,
    eos_token_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: Vec<u32>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2")
}

fn reference() -> Reference {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

fn load(cache_bytes: u64) -> Engine {
    Engine::load(
        &ModelSource::Dir(fixture()),
        EngineOptions { prefix_cache_bytes: cache_bytes, ..Default::default() },
    )
    .unwrap()
}

fn greedy(n: usize) -> GenerateRequest {
    GenerateRequest { max_new_tokens: n, temperature: 0.0, ..Default::default() }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_and_greedy_continuations_match_pytorch() {
    let reference = reference();
    let engine = load(0);
    assert_eq!(engine.model_info().config.eos_token_id, Some(reference.eos_token_id));
    for case in &reference.cases {
        let (logits, cached) = engine.last_logits(&case.prompt, false).unwrap();
        assert_eq!(cached, 0);
        let diff = max_abs_diff(&logits, &case.last_logits);
        assert!(diff < 1e-4, "prompt of {} tokens: max abs diff {diff}", case.prompt.len());
        let out =
            engine.generate_from_ids(&case.prompt, &greedy(reference.new_tokens), |_| {}).unwrap();
        assert_eq!(out.token_ids, case.greedy, "prompt of {} tokens", case.prompt.len());
        assert_eq!(out.prompt_tokens, case.prompt.len());
    }
}

#[test]
fn names_without_the_transformer_prefix_load_the_same_model() {
    let tensors = candle_core::safetensors::load(
        fixture().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(
        tensors.keys().all(|k| k.starts_with("transformer.")),
        "fixture is the prefixed variant"
    );
    let bare: HashMap<String, _> = tensors
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("transformer.").to_string(), v))
        .collect();
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let dir = std::env::temp_dir().join(format!("locus-unprefixed-{}", std::process::id()));
    locus_engine::source::export(&dir, &config, &bare).unwrap();
    let engine = Engine::load(
        &ModelSource::Dir(dir.clone()),
        EngineOptions { prefix_cache_bytes: 0, ..Default::default() },
    )
    .unwrap();
    let prefixed = load(0);
    for case in &reference().cases {
        let (a, _) = engine.last_logits(&case.prompt, false).unwrap();
        let (b, _) = prefixed.last_logits(&case.prompt, false).unwrap();
        assert_eq!(a, b);
        assert!(max_abs_diff(&a, &case.last_logits) < 1e-4);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn prefix_reuse_is_exact() {
    let reference = reference();
    let base = &reference.cases[3].prompt; // 40 tokens: two full blocks
    let engine = load(1 << 20);
    let (_, cached) = engine.last_logits(base, true).unwrap();
    assert_eq!(cached, 0);
    assert_eq!(engine.cache_stats().entries, 2);

    // Same first 35 tokens, different tail: the two blocks (32 tokens) are reused.
    let mut other: Vec<u32> = base[..35].to_vec();
    other.extend([7, 8, 9, 10, 11, 12, 13]);
    let (warm, cached) = engine.last_logits(&other, true).unwrap();
    assert_eq!(cached, 32);
    let (cold, _) = engine.last_logits(&other, false).unwrap();
    assert!(max_abs_diff(&warm, &cold) < 1e-4, "{}", max_abs_diff(&warm, &cold));

    let fresh = load(0);
    for prompt in [base, &other] {
        let want = fresh.generate_from_ids(prompt, &greedy(12), |_| {}).unwrap();
        let got = engine.generate_from_ids(prompt, &greedy(12), |_| {}).unwrap();
        assert_eq!(got.token_ids, want.token_ids);
        assert_eq!(want.cached_tokens, 0);
        assert_eq!(got.cached_tokens, 32);
    }
    // The exact prompt again: all but its last position could be reused, but only whole blocks are.
    let again = engine.generate_from_ids(&base[..32], &greedy(1), |_| {}).unwrap();
    assert_eq!(again.cached_tokens, 16);
}

#[test]
fn bytes_are_accounted_from_tensor_shapes() {
    let engine = load(1 << 20);
    let cfg = engine.model_info().config.clone();
    let prompt: Vec<u32> = (0..50).collect();
    engine.last_logits(&prompt, true).unwrap();
    let stats = engine.cache_stats();
    // 3 full blocks x layers x (K + V) x heads x 16 tokens x head_dim x 4 bytes.
    let expected = 3 * cfg.n_layer * 2 * cfg.n_head * 16 * cfg.head_dim() * 4;
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.bytes, expected as u64);
    assert_eq!(engine.cache_entries().iter().map(|e| e.size).sum::<u64>(), expected as u64);
    engine.flush_cache();
    assert_eq!((engine.cache_stats().entries, engine.cache_stats().bytes), (0, 0));
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl CachePolicy for Recorder {
    fn admit(&self, key: u64, size: u64) -> bool {
        self.calls.lock().unwrap().push(format!("admit {key} {size}"));
        true
    }
    fn hit(&self, key: u64) {
        self.calls.lock().unwrap().push(format!("hit {key}"));
    }
    fn evict(&self, bytes_needed: u64) -> Vec<u64> {
        self.calls.lock().unwrap().push(format!("evict {bytes_needed}"));
        Vec::new()
    }
    fn removed(&self, key: u64) {
        self.calls.lock().unwrap().push(format!("removed {key}"));
    }
}

#[test]
fn the_policy_sees_admissions_hits_and_shortfalls() {
    let cfg_block = {
        let e = load(0);
        let c = &e.model_info().config;
        (c.n_layer * 2 * 16 * c.n_embd * 4) as u64
    };
    // Room for exactly one block: the second admission must ask for eviction, get nothing,
    // and be dropped with `removed`.
    let engine = load(cfg_block);
    let policy = Arc::new(Recorder::default());
    engine.set_cache_policy(policy.clone());
    let prompt: Vec<u32> = (100..140).collect();
    engine.last_logits(&prompt, true).unwrap();
    engine.last_logits(&prompt, true).unwrap();
    let calls = policy.calls.lock().unwrap().clone();
    let keys = locus_engine::prefix::block_hashes(&prompt);
    assert_eq!(
        calls,
        vec![
            format!("admit {} {cfg_block}", keys[0]),
            format!("admit {} {cfg_block}", keys[1]),
            format!("evict {cfg_block}"),
            format!("removed {}", keys[1]),
            format!("hit {}", keys[0]),
            format!("admit {} {cfg_block}", keys[1]),
            format!("evict {cfg_block}"),
            format!("removed {}", keys[1]),
        ]
    );
}

#[test]
fn context_limits_are_typed_errors_or_truncation() {
    let engine = load(0);
    let n_pos = engine.model_info().config.n_positions; // 64
    let long: Vec<u32> = (0..n_pos as u32 + 5).collect();
    match engine.generate_from_ids(&long, &greedy(4), |_| {}) {
        Err(EngineError::PromptTooLong { tokens, max }) => {
            assert_eq!((tokens, max), (n_pos + 5, n_pos - 1))
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    let req = GenerateRequest { truncate_left: true, ..greedy(4) };
    let out = engine.generate_from_ids(&long, &req, |_| {}).unwrap();
    assert_eq!((out.truncated_tokens, out.prompt_tokens), (6, n_pos - 1));
    assert!(out.completion_tokens <= 1);

    // Prompt + max_new_tokens beyond the context: refused, naming what fits; asking for
    // the rest of the context (usize::MAX) is clamped.
    let prompt: Vec<u32> = (0..60).collect();
    match engine.generate_from_ids(&prompt, &greedy(50), |_| {}) {
        Err(e @ EngineError::ExceedsContext { prompt: 60, max_new: 50, context: 64 }) => {
            assert!(e.is_client_error());
            assert!(e.to_string().contains("at most 4 new tokens"), "{e}");
        }
        other => panic!("expected ExceedsContext, got {other:?}"),
    }
    let out = engine.generate_from_ids(&prompt, &greedy(4), |_| {}).unwrap();
    assert!(out.completion_tokens <= 4);
    let out = engine.generate_from_ids(&prompt, &greedy(usize::MAX), |_| {}).unwrap();
    assert!(out.completion_tokens <= n_pos - 60);
    if out.finish_reason == FinishReason::Length {
        assert_eq!(out.completion_tokens, n_pos - 60);
    }

    assert!(matches!(
        engine.generate_from_ids(&[], &greedy(1), |_| {}),
        Err(EngineError::EmptyPrompt)
    ));
    let bad = engine.generate_from_ids(&[5000], &greedy(1), |_| {}).unwrap_err();
    assert!(bad.is_client_error(), "{bad}");
    for req in [
        GenerateRequest { temperature: -1.0, ..greedy(1) },
        GenerateRequest { temperature: f64::NAN, ..greedy(1) },
        GenerateRequest { top_p: 0.0, ..greedy(1) },
    ] {
        assert!(matches!(
            engine.generate_from_ids(&[1, 2], &req, |_| {}),
            Err(EngineError::InvalidParam { .. })
        ));
    }
}

#[test]
fn sampling_is_seeded_and_streaming_matches_the_text() {
    let engine = load(1 << 20);
    let req = GenerateRequest { temperature: 0.9, top_p: 0.95, seed: Some(42), ..greedy(10) };
    let prompt = [1u32, 2, 3, 4];
    let mut pieces = String::new();
    let a = engine.generate_from_ids(&prompt, &req, |p| pieces.push_str(p)).unwrap();
    let b = engine.generate_from_ids(&prompt, &req, |_| {}).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(pieces, a.text);
    assert_eq!(a.text, engine.tokenizer().decode(&a.token_ids));
}

#[test]
fn concurrent_requests_get_the_sequential_answers() {
    let engine = Arc::new(load(1 << 20));
    let cases = reference().cases;
    let handles: Vec<_> = cases
        .iter()
        .map(|c| {
            let (engine, prompt) = (engine.clone(), c.prompt.clone());
            std::thread::spawn(move || {
                engine.generate_from_ids(&prompt, &greedy(12), |_| {}).unwrap().token_ids
            })
        })
        .collect();
    for (h, c) in handles.into_iter().zip(&cases) {
        assert_eq!(h.join().unwrap(), c.greedy);
    }
}
