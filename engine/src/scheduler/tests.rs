//! The scheduler stepped by hand, one step at a time, on the synthetic model: what one step
//! does is checked without racing the loop's thread.

use std::sync::atomic::AtomicBool;

use candle_transformers::generation::LogitsProcessor;

use super::*;
use crate::{Engine, EngineOptions, ModelSource};

fn scheduler(limits: Limits) -> Scheduler {
    let opts = EngineOptions { limits: limits.clone(), ..Default::default() };
    let engine = Engine::load(&ModelSource::Synthetic, opts).expect("synthetic model");
    Scheduler {
        shared: engine.shared(),
        limits,
        counters: Arc::new(Counters::default()),
        waiting: VecDeque::new(),
        running: Vec::new(),
        chunks: 0,
        band_seen: [None; 256],
        noted: Instant::now(),
    }
}

/// Queues a greedy request of `n` prompt tokens from `base`; its events come on the receiver.
fn submit(
    s: &mut Scheduler,
    base: u32,
    n: u32,
    priority: u8,
    max_new: usize,
) -> mpsc::Receiver<Event> {
    let (events, rx) = mpsc::channel();
    let sub = Submission {
        ids: (base..base + n).collect(),
        max_new,
        sampler: LogitsProcessor::new(0, None, None),
        ignore_eos: true,
        stop_token_ids: Vec::new(),
        priority,
        events,
        cancel: Arc::new(AtomicBool::new(false)),
        pinned: None,
    };
    s.enqueue((sub, Instant::now()));
    rx
}

fn started(rx: &mpsc::Receiver<Event>) -> bool {
    rx.try_iter().any(|e| matches!(e, Event::Started { .. }))
}

#[test]
fn prompts_above_every_decoding_one_all_run_before_the_decode_pass_within_the_chunk() {
    let mut s = scheduler(Limits { max_batch: 4, prefill_chunk: 48, ..Limits::default() });
    // A low-band request decoding.
    let low = submit(&mut s, 500, 20, 0, 100);
    s.step();
    assert!(started(&low));
    // Two high-band prompts of 20 tokens arrive together: both run in the next step (40 of
    // the 48 tokens); a third would not fit and waits for the step after.
    let (a, b) = (submit(&mut s, 1000, 20, 6, 1), submit(&mut s, 2000, 20, 6, 1));
    let c = submit(&mut s, 3000, 20, 6, 1);
    s.step();
    assert!(started(&a) && started(&b), "both prompts ran in the step they were admitted");
    assert!(!started(&c), "the third is past the step's 48 prompt tokens");
    s.step();
    assert!(started(&c));

    // Prompts not above every decoding one: one chunk per step, after the decode pass.
    let mut s = scheduler(Limits { max_batch: 4, prefill_chunk: 48, ..Limits::default() });
    let low = submit(&mut s, 500, 20, 6, 100);
    s.step();
    assert!(started(&low));
    let (a, b) = (submit(&mut s, 1000, 20, 6, 1), submit(&mut s, 2000, 20, 6, 1));
    s.step();
    assert_eq!((started(&a), started(&b)), (true, false), "one prompt per step");
    s.step();
    assert!(started(&b));

    // A band decoding beside a lower one: its new prompts still go before the decode pass.
    let mut s = scheduler(Limits { max_batch: 4, prefill_chunk: 48, ..Limits::default() });
    let (low, high) = (submit(&mut s, 500, 20, 0, 100), submit(&mut s, 700, 20, 6, 100));
    s.step();
    s.step();
    assert!(started(&low) && started(&high));
    let (a, b) = (submit(&mut s, 1000, 20, 6, 1), submit(&mut s, 2000, 20, 6, 1));
    s.step();
    assert!(started(&a) && started(&b), "both prompts ran in the step they were admitted");
}
