//! Continuous batching on the offline synthetic model: a sequence's output does not depend
//! on what runs beside it, a caller that leaves frees its place at once, and the limits
//! (batch size, KV budget, queue deadline) hold without failing a running sequence.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use locus_engine::{
    Engine, EngineError, EngineOptions, FinishReason, GenerateRequest, Limits, ModelSource,
};

fn load(limits: Limits) -> Arc<Engine> {
    let source = ModelSource::Synthetic;
    let opts = EngineOptions { prefix_cache_bytes: 64 << 20, limits, ..Default::default() };
    Arc::new(Engine::load(&source, opts).unwrap())
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

/// Runs `req` on `ids` in a thread; sends `tag` on `firsts` at its first text.
fn spawn_tagged(
    engine: &Arc<Engine>,
    ids: Vec<u32>,
    req: GenerateRequest,
    tag: &'static str,
    firsts: std::sync::mpsc::Sender<&'static str>,
) -> std::thread::JoinHandle<()> {
    let engine = engine.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        engine
            .generate_until(&ids, &req, |piece, _| {
                if !piece.is_empty() && !sent {
                    sent = true;
                    let _ = firsts.send(tag);
                }
                ControlFlow::Continue(())
            })
            .unwrap();
    })
}

/// Runs `req` on `ids` in a thread until `stop` is set (it decodes until then).
fn spawn_until_stopped(
    engine: &Arc<Engine>,
    ids: Vec<u32>,
    req: GenerateRequest,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (engine, stop) = (engine.clone(), stop.clone());
    std::thread::spawn(move || {
        engine
            .generate_until(&ids, &req, |_, _| {
                if stop.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
    })
}

fn wait_for(engine: &Engine, what: impl Fn(&locus_engine::SchedulerStats) -> bool) {
    for _ in 0..2000 {
        if what(&engine.scheduler_stats()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the scheduler never reached the state waited for");
}

#[test]
fn a_higher_priority_goes_first_into_the_batch_and_through_its_prompt() {
    let (tx, rx) = std::sync::mpsc::channel();
    let req = |priority, n| GenerateRequest {
        max_new_tokens: n,
        ignore_eos: true,
        priority,
        ..Default::default()
    };
    // Admission: one place in the batch, held by a running request; a low-priority request
    // arrives, then a high one: the high one is admitted first when the place frees.
    let engine = load(Limits { max_batch: 1, ..Limits::default() });
    let ids: Vec<u32> = (0..20).map(|j| 900 + j).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let blocker = spawn_until_stopped(&engine, ids.clone(), req(0, 500), &stop);
    wait_for(&engine, |s| s.running == 1);
    let low = spawn_tagged(&engine, ids.clone(), req(0, 2), "low", tx.clone());
    wait_for(&engine, |s| s.waiting == 1);
    let high = spawn_tagged(&engine, ids.clone(), req(3, 2), "high", tx.clone());
    wait_for(&engine, |s| s.waiting == 2);
    stop.store(true, Ordering::Relaxed);
    for t in [blocker, low, high] {
        t.join().unwrap();
    }
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["high", "low"], "admission order");

    // Prefill: both in the batch, each prompt 40 chunks long; the low one started first, yet
    // the high one's chunks run before the rest of the low one's (taking turns, the low one
    // would finish first).
    let engine = load(Limits { max_batch: 2, prefill_chunk: 16, ..Limits::default() });
    let long = |base: u32| (0..640).map(|j| base + j).collect::<Vec<u32>>();
    let low = spawn_tagged(&engine, long(1000), req(0, 1), "low", tx.clone());
    wait_for(&engine, |s| s.running == 1);
    let high = spawn_tagged(&engine, long(3000), req(3, 1), "high", tx.clone());
    for t in [low, high] {
        t.join().unwrap();
    }
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["high", "low"], "prefill order");
}

#[test]
fn a_shorter_prompt_runs_its_chunks_first_and_a_long_one_still_moves() {
    let engine = load(Limits { max_batch: 4, prefill_chunk: 16, ..Limits::default() });
    let req = GenerateRequest { max_new_tokens: 1, ignore_eos: true, ..Default::default() };
    let (tx, rx) = std::sync::mpsc::channel();
    // 40 chunks, then (once it runs) 10 chunks: the short one's chunks go first, with a turn
    // of the long one after every 4 (it waits `max_batch` = 4 chunks at most), about 12 in
    // all (a few more: the long one runs until the short one is admitted); taking turns
    // chunk by chunk would take about 20.
    let long = spawn_tagged(
        &engine,
        (0..640).map(|j| 1000 + j).collect(),
        req.clone(),
        "long",
        tx.clone(),
    );
    wait_for(&engine, |s| s.running == 1);
    let short_ids: Vec<u32> = (0..160).map(|j| 5000 + j).collect();
    let from = engine.scheduler_stats().steps;
    let (stx, srx) = std::sync::mpsc::channel();
    let short = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            engine
                .generate_until(&short_ids, &req, |piece, _| {
                    if !piece.is_empty() {
                        let _ = stx.send(engine.scheduler_stats().steps);
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
        })
    };
    let at = srx.recv().unwrap();
    for t in [long, short] {
        t.join().unwrap();
    }
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["long"]);
    let took = at - from;
    assert!((10..=16).contains(&took), "the short prompt's first token after {took} chunks");
}

#[test]
fn a_lower_bands_prompt_moves_in_smaller_chunks_while_a_higher_band_decodes() {
    // One sequence decodes while a 320-token prompt of band 0 is prefilled beside it; the
    // decoder gets one token per step, so its tokens meanwhile count the prompt's chunks:
    // 5 of 64 tokens beside a decoder of the same band, 20 of 16 beside a higher band's.
    let during_prefill = |decoder_priority: u8| {
        let limits =
            Limits { max_batch: 2, prefill_chunk: 64, yield_chunk: 16, ..Limits::default() };
        let engine = load(limits);
        let stop = Arc::new(AtomicBool::new(false));
        let req = GenerateRequest {
            max_new_tokens: 500,
            ignore_eos: true,
            priority: decoder_priority,
            ..Default::default()
        };
        let decoder = spawn_until_stopped(&engine, (700..708).collect(), req, &stop);
        wait_for(&engine, |s| s.generated_tokens >= 2);
        let from = engine.scheduler_stats().generated_tokens;
        let req = GenerateRequest { max_new_tokens: 1, ignore_eos: true, ..Default::default() };
        let ids: Vec<u32> = (0..320).map(|j| 2000 + j).collect();
        let mut at = None;
        engine
            .generate_until(&ids, &req, |piece, _| {
                if !piece.is_empty() && at.is_none() {
                    at = Some(engine.scheduler_stats().generated_tokens);
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        decoder.join().unwrap();
        // Less the prompt's own first token.
        at.expect("the prompt's first token") - from - 1
    };
    let same = during_prefill(0);
    assert!((4..=8).contains(&same), "beside band 0: {same} decode steps, 5 chunks expected");
    let yielding = during_prefill(3);
    assert!(
        (19..=24).contains(&yielding),
        "beside band 3: {yielding} decode steps, 20 chunks expected"
    );
}

#[test]
fn a_higher_band_keeps_the_chunks_small_for_its_window_after_it_left() {
    // A band-3 request ends, then a 320-token prompt of band 0 runs alone: within the
    // window its chunks are 16 tokens (20 steps), else 64 (5 steps), so that the next
    // band-3 arrival would find a short step in its way.
    let steps_after_a_higher_band = |window: Duration| {
        let limits = Limits {
            max_batch: 2,
            prefill_chunk: 64,
            yield_chunk: 16,
            yield_window: window,
            ..Limits::default()
        };
        let engine = load(limits);
        let high = GenerateRequest { max_new_tokens: 1, priority: 3, ..Default::default() };
        engine.generate_until(&[700, 701], &high, |_, _| ControlFlow::Continue(())).unwrap();
        let from = engine.scheduler_stats().steps;
        let low = GenerateRequest { max_new_tokens: 1, ignore_eos: true, ..Default::default() };
        let ids: Vec<u32> = (0..320).map(|j| 2000 + j).collect();
        engine.generate_until(&ids, &low, |_, _| ControlFlow::Continue(())).unwrap();
        engine.scheduler_stats().steps - from
    };
    assert_eq!(steps_after_a_higher_band(Duration::from_secs(60)), 20);
    assert_eq!(steps_after_a_higher_band(Duration::ZERO), 5);
}
