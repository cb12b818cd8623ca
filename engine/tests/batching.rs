//! Continuous batching on the offline synthetic model: a sequence's output does not depend
//! on what runs beside it, a caller that leaves frees its place at once, and the limits
//! (batch size, KV budget, queue deadline) hold without failing a running sequence.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use locus_engine::{
    Engine, EngineError, EngineOptions, FinishReason, GenerateRequest, Limits, ModelSource,
};

fn load(limits: Limits) -> Arc<Engine> {
    let source = ModelSource::Synthetic;
    Arc::new(Engine::load(&source, EngineOptions { prefix_cache_bytes: 64 << 20, limits }).unwrap())
}

fn prompts() -> Vec<Vec<u32>> {
    // Different lengths, so the batch's sequences sit at different positions.
    (0..8u32).map(|i| (0..(5 + 7 * i)).map(|j| 300 + 37 * i + 11 * j).collect()).collect()
}

fn run_all(engine: &Arc<Engine>, reqs: &[(Vec<u32>, GenerateRequest)]) -> Vec<Vec<u32>> {
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|(ids, req)| {
            let engine = engine.clone();
            std::thread::spawn(move || engine.generate_from_ids(&ids, &req, |_| {}).unwrap())
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap().token_ids).collect()
}

#[test]
fn outputs_are_the_same_alone_and_in_a_batch() {
    let engine = load(Limits { max_batch: 8, ..Limits::default() });
    let greedy = GenerateRequest { max_new_tokens: 24, ignore_eos: true, ..Default::default() };
    let sampled =
        GenerateRequest { temperature: 0.9, top_p: 0.95, seed: Some(7), ..greedy.clone() };
    let reqs: Vec<(Vec<u32>, GenerateRequest)> = prompts()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, if i % 2 == 0 { greedy.clone() } else { sampled.clone() }))
        .collect();

    let steps = |e: &Engine| e.scheduler_stats().steps;
    let before = steps(&engine);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|(ids, req)| engine.generate_from_ids(ids, req, |_| {}).unwrap().token_ids)
        .collect();
    let alone_steps = steps(&engine) - before;
    engine.flush_cache();

    let before = steps(&engine);
    let together = run_all(&engine, &reqs);
    let together_steps = steps(&engine) - before;
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), 24);
        assert_eq!(a, b, "request {i}: alone vs batched");
    }
    // They did run together: 8 x 24 tokens alone take 8 x (1 prefill + 23 decode) passes.
    assert_eq!(alone_steps, 8 * 24);
    assert!(together_steps < alone_steps / 2, "{together_steps} passes batched vs {alone_steps}");

    // A chunked prompt gives the same tokens as one run whole.
    let long: Vec<u32> = (0..300).map(|j| 1000 + 13 * j).collect();
    let chunked = load(Limits { prefill_chunk: 64, ..Limits::default() });
    let whole = load(Limits { prefill_chunk: 1024, ..Limits::default() });
    let a = chunked.generate_from_ids(&long, &greedy, |_| {}).unwrap();
    let b = whole.generate_from_ids(&long, &greedy, |_| {}).unwrap();
    assert_eq!(a.token_ids, b.token_ids, "prefill in chunks of 64 vs whole");
    assert_eq!(chunked.scheduler_stats().steps, 5 + 23, "300 tokens = 5 chunks, then 23 decodes");
}

#[test]
fn a_caller_that_leaves_frees_its_place_at_the_next_step() {
    // One place in the batch: the next request can only start once the first is gone.
    let engine = load(Limits { max_batch: 1, ..Limits::default() });
    let long = GenerateRequest { max_new_tokens: 500, ignore_eos: true, ..Default::default() };
    let ids: Vec<u32> = (0..20).map(|j| 500 + j).collect();
    let mut seen = 0;
    let g = engine
        .generate_until(&ids, &long, |piece, _| {
            seen += usize::from(!piece.is_empty());
            if seen == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Aborted);
    let at_break = engine.scheduler_stats().steps;
    let short = GenerateRequest { max_new_tokens: 2, ..Default::default() };
    let mut first_at = None;
    let g2 = engine
        .generate_until(&ids, &short, |piece, _| {
            if !piece.is_empty() && first_at.is_none() {
                first_at = Some(engine.scheduler_stats().steps);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(g2.completion_tokens, 2);
    let waited = first_at.unwrap() - at_break;
    assert!(waited <= 4, "first token {waited} passes after the cancel, not ~500");
    let stats = engine.scheduler_stats();
    assert_eq!(stats.cancelled, 1);
    assert_eq!((stats.running, stats.waiting, stats.kv_reserved_bytes), (0, 0, 0));
}

#[test]
fn kv_budget_queues_and_refuses_clearly() {
    let per_token = 6 * 2 * 768 * 4; // distilgpt2: layers x (K + V) x width x f32
    let limits = Limits {
        kv_bytes: 200 * per_token,
        queue_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let engine = load(limits);
    let ids: Vec<u32> = (0..20).map(|j| 700 + j).collect();
    // More than the whole budget: refused at once, with the numbers.
    let huge = GenerateRequest { max_new_tokens: 400, ..Default::default() };
    let e = engine.generate_from_ids(&ids, &huge, |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::ExceedsKvBudget { tokens: 420, max: 200 }), "{e}");
    assert!(e.is_client_error());

    // 150 positions each: the second waits for the first and then runs, nothing fails.
    let req = GenerateRequest { max_new_tokens: 130, ignore_eos: true, ..Default::default() };
    let slow = load(Limits { kv_bytes: 200 * per_token, ..Limits::default() });
    let both = run_all(&slow, &[(ids.clone(), req.clone()), (ids.clone(), req.clone())]);
    assert_eq!(both[0], both[1]);
    assert_eq!(both[0].len(), 130);

    // With a short deadline the waiting one gives up with a clear error; the running one ends.
    let a = {
        let (engine, ids, req) = (engine.clone(), ids.clone(), req.clone());
        std::thread::spawn(move || engine.generate_from_ids(&ids, &req, |_| {}))
    };
    std::thread::sleep(Duration::from_millis(50));
    let b = engine.generate_from_ids(&ids, &req, |_| {});
    let a = a.join().unwrap().unwrap();
    assert_eq!(a.completion_tokens, 130, "the running sequence is never failed");
    match b {
        Err(EngineError::QueueTimeout { waited_ms }) => assert!(waited_ms >= 300),
        // Only if the first finished 130 tokens within the deadline (a fast machine).
        Ok(g) => assert_eq!(g.completion_tokens, 130),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn stop_token_ids_end_the_generation() {
    let engine = load(Limits::default());
    let ids: Vec<u32> = (0..10).map(|j| 900 + j).collect();
    let req = GenerateRequest { max_new_tokens: 12, ignore_eos: true, ..Default::default() };
    let free = engine.generate_from_ids(&ids, &req, |_| {}).unwrap();
    let stop_at = free.token_ids[5];
    let first = free.token_ids.iter().position(|&t| t == stop_at).unwrap();
    let req = GenerateRequest { stop_token_ids: vec![stop_at], ..req };
    let stopped = engine.generate_from_ids(&ids, &req, |_| {}).unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.token_ids, free.token_ids[..first]);
}
