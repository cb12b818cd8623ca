//! Trying a routing policy before it routes: shadows, canaries, promotion, abort and the
//! audit log, on real components (the test-only `faulty` guest answers a fixed worker, or
//! traps on prompts that start with `FAULT`). Through a real router and workers: the
//! `locus` crate's `tests/trial.rs`.

use std::time::{Duration, Instant};

use locus_policy::guests;
use locus_policy::{
    Actor, Ask, AuditEvent, Completion, Decision, FaultPolicy, LoadOptions, Outcome, PolicySource,
    PromoteError, Request, RouterPolicy, Side, TrialMode, TrialOutcome, TrialReport, TrialRules,
    Workers,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn opts(kv: &[(&str, &str)]) -> LoadOptions {
    LoadOptions::with_settings(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn faulty() -> PolicySource {
    PolicySource::File(guests::FAULTY_PATH.into())
}

/// A policy that always answers worker `index`.
fn fixed(index: usize) -> RouterPolicy {
    RouterPolicy::load(&faulty(), &opts(&[("index", &index.to_string())]), FaultPolicy::default())
        .expect("loads")
}

fn workers(ids: &[u64]) -> Workers {
    locus_policy::workers(ids.iter().map(|&id| (id, 0)))
}

/// Routes `r` as the router does, its block hashes given.
fn route(p: &RouterPolicy, r: &Request, ws: &Workers) -> Option<Decision> {
    p.route(&mut Ask::new(r.clone()), ws)
}

fn me() -> Actor {
    Actor::new("tester", "a test")
}

/// The trial's report once the shadow has compared `n` decisions.
fn shadow_caught_up(p: &RouterPolicy, n: u64) -> TrialReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = p.trial().expect("a trial");
        if r.compared + r.skipped >= n || r.ended.is_some() {
            return r;
        }
        assert!(Instant::now() < deadline, "the shadow compared {} of {n}", r.compared);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_shadow_that_always_disagrees_changes_no_live_decision_and_reports_0_agreement() {
    let p = fixed(0);
    let ws = workers(&[10, 20, 30]);
    let mine = opts(&[("index", "1")]);
    p.try_candidate(&faulty(), &mine, TrialMode::Shadow, TrialRules::default(), &me())
        .expect("the shadow starts");
    // The router knows worker 10 holds blocks 1..=4 and worker 20 holds block 1 only.
    p.kv().apply(10, false, vec![], vec![1, 2, 3, 4]);
    p.kv().apply(20, false, vec![], vec![1]);
    for i in 0..1000u64 {
        let mut req = Request::new(i, format!("request {i}"), 4);
        req.block_hashes = vec![1, 2, 3, 4];
        let d = route(&p, &req, &ws).unwrap();
        assert_eq!((d.index, d.side, d.fault.clone()), (0, Side::Live, None), "request {i}");
        p.observe(&Completion::new(i, 10, Outcome::Ok), true, d.routed());
    }
    let r = shadow_caught_up(&p, 1000);
    assert_eq!(r.skipped, 0);
    assert_eq!(r.compared, 1000);
    assert_eq!(r.agreement, Some(0.0));
    assert_eq!(r.live.decisions, 1000);
    assert_eq!(r.candidate.decisions, 1000);
    assert_eq!(r.candidate.per_worker.get("20"), Some(&1000));
    assert_eq!(r.live.per_worker.get("10"), Some(&1000));
    // Everything on one of 3 offered workers: max / mean = 3.
    assert_eq!(r.live.load_max_over_mean, Some(3.0));
    assert_eq!(r.candidate.load_max_over_mean, Some(3.0));
    // The live choice holds all 4 leading blocks, the shadow's only the first.
    assert_eq!(r.live.predicted_hit_rate, Some(1.0));
    assert_eq!(r.candidate.predicted_hit_rate, Some(0.25));
    // Only the live side routed requests.
    assert_eq!((r.live.requests, r.candidate.requests), (1000, 0));
    assert_eq!(r.candidate.fallbacks, 0);
    assert!(r.ended.is_none());

    // A shadow that agrees.
    let ended = p.abort(&me()).expect("a trial to abort");
    assert_eq!(ended.ended.unwrap().how, TrialOutcome::Aborted);
    p.try_candidate(
        &faulty(),
        &opts(&[("index", "0")]),
        TrialMode::Shadow,
        TrialRules::default(),
        &me(),
    )
    .unwrap();
    for i in 0..200u64 {
        assert_eq!(route(&p, &Request::new(i, "x", 4), &ws).unwrap().index, 0);
    }
    let r = shadow_caught_up(&p, 200);
    assert_eq!((r.compared, r.agreement), (200, Some(1.0)));
    // No blocks were given: nothing to predict.
    assert_eq!(r.live.predicted_hit_rate, None);
}

#[test]
fn a_faulty_shadow_never_touches_live_routing_and_is_dropped_by_the_fault_rules() {
    let p = fixed(2);
    let ws = workers(&[1, 2, 3]);
    let trap = opts(&[("fault", "trap"), ("index", "0")]);
    p.try_candidate(&faulty(), &trap, TrialMode::Shadow, TrialRules::default(), &me()).unwrap();
    for i in 0..50u64 {
        let d = route(&p, &Request::new(i, format!("FAULT {i}"), 4), &ws).unwrap();
        assert_eq!((d.index, d.fault.clone()), (2, None));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = p.trial().unwrap();
        if r.ended.is_some() {
            break r;
        }
        assert!(Instant::now() < deadline, "the faulty shadow was never given up on");
        std::thread::sleep(Duration::from_millis(5));
    };
    let end = r.ended.expect("the shadow was given up on");
    assert_eq!((end.how, end.who.as_str()), (TrialOutcome::Aborted, "locus"));
    assert!(end.why.contains("fault rules"), "{}", end.why);
    // The default rules give up after 5 faults.
    assert_eq!(r.candidate.fallbacks, 5);
    assert_eq!(p.total_faults(), 0, "the live policy never faulted");
    assert_eq!(p.info().name, guests::FAULTY_PATH);
    let events: Vec<_> = p.audit().recent().iter().map(|e| e.event).collect();
    assert_eq!(events, [AuditEvent::Load, AuditEvent::Shadow, AuditEvent::Abort]);

    // A live policy given up on by the fault rules ends the trial it was compared in.
    let p = RouterPolicy::load(&faulty(), &trap, FaultPolicy::default()).unwrap();
    p.try_candidate(&faulty(), &opts(&[]), TrialMode::Shadow, TrialRules::default(), &me())
        .unwrap();
    for i in 0..5u64 {
        let d = route(&p, &Request::new(i, format!("FAULT {i}"), 4), &ws).unwrap();
        assert!(d.fault.is_some());
    }
    let end = p.trial().unwrap().ended.expect("ended with the live policy's rollback");
    assert!(end.why.contains("live policy was rolled back"), "{}", end.why);
    let events: Vec<_> = p.audit().recent().iter().map(|e| e.event).collect();
    assert_eq!(
        events,
        [AuditEvent::Load, AuditEvent::Shadow, AuditEvent::Rollback, AuditEvent::Abort]
    );
}

#[test]
fn a_canary_at_10_percent_routes_10_percent_of_10000_keys_and_keeps_each_key_on_one_side() {
    let p = fixed(0);
    let ws = workers(&[1, 2, 3]);
    let canary = TrialMode::Canary { percent: 10.0 };
    p.try_candidate(&faulty(), &opts(&[("index", "1")]), canary, TrialRules::default(), &me())
        .unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let mut sides = Vec::new();
    let shared = "and then the same long instruction that every request of this test carries";
    for i in 0..10_000u64 {
        // Uniform keys: a random prompt start, or a random session.
        let mut req = Request::new(i, format!("user {:016x}: {shared}", rng.random::<u64>()), 4);
        if i % 2 == 1 {
            req.prompt = format!("{shared} {i}");
            req.session = Some(format!("session-{}", rng.random::<u64>()));
        }
        let d = route(&p, &req, &ws).unwrap();
        // Each side answers with its own policy's worker.
        let want = if d.side == Side::Candidate { 1 } else { 0 };
        assert_eq!(d.index, want);
        // The same key, asked again with another tail (a later turn), stays on its side.
        let mut again = req.clone();
        again.prompt.push_str(" and a follow-up question");
        again.block_hashes = vec![1, 2, 3];
        assert_eq!(route(&p, &again, &ws).unwrap().side, d.side, "key of request {i} moved");
        sides.push(d.side);
    }
    let share = sides.iter().filter(|s| **s == Side::Candidate).count() as f64 / 10_000.0;
    println!("canary share of 10,000 keys at 10%: {share}");
    assert!((0.08..=0.12).contains(&share), "canary share {share}");
    let r = p.trial().unwrap();
    assert_eq!(r.candidate.decisions + r.live.decisions, 20_000);
    assert!(r.ended.is_none());
}

#[test]
fn canary_rules_abort_on_slower_ttft_and_on_errors_and_promotion_makes_it_serve() {
    let ws = workers(&[1, 2, 3]);
    let rules = TrialRules { min_requests: 10, window: 50, ..TrialRules::default() };
    let canary = TrialMode::Canary { percent: 50.0 };
    let run = |p: &RouterPolicy, ttft_live: u64, ttft_candidate: u64, candidate_outcome| {
        for i in 0..400u64 {
            if p.trial().unwrap().ended.is_some() {
                return i;
            }
            let d = route(p, &Request::new(i, format!("key {i}"), 4), &ws).unwrap();
            let mut done = Completion::new(i, ws.ids[d.index], Outcome::Ok);
            done.ttft_us = Some(ttft_live);
            if d.side == Side::Candidate {
                done.outcome = candidate_outcome;
                done.ttft_us = Some(ttft_candidate);
            }
            p.observe(&done, true, d.routed());
        }
        400
    };

    // TTFT p90 2x the live side's, margin 50%: aborted once both sides have 10.
    let p = fixed(0);
    p.try_candidate(&faulty(), &opts(&[("index", "1")]), canary, rules, &me()).unwrap();
    let sent = run(&p, 100_000, 200_000, Outcome::Ok);
    let r = p.trial().unwrap();
    let end = r.ended.clone().expect("aborted");
    assert!(end.why.contains("TTFT p90 200.0 ms") && end.why.contains("100.0 ms"), "{}", end.why);
    assert!(sent < 60, "aborted only after {sent} requests");
    assert_eq!(p.info().name, guests::FAULTY_PATH);
    assert_eq!(route(&p, &Request::new(0, "key 3", 4), &ws).unwrap().index, 0);

    // Within the margin (1.4x): it keeps running, and a promotion makes it serve.
    p.try_candidate(&faulty(), &opts(&[("index", "2")]), canary, rules, &me()).unwrap();
    assert_eq!(run(&p, 100_000, 140_000, Outcome::Ok), 400);
    let (info, report) = p.promote(&Actor::new("tester", "looks good")).expect("promoted");
    assert_eq!(report.ended.as_ref().unwrap().how, TrialOutcome::Promoted);
    assert_eq!(info.settings, vec![("index".to_string(), "2".to_string())]);
    for i in 0..20 {
        let d = route(&p, &Request::new(i, format!("key {i}"), 4), &ws).unwrap();
        assert_eq!((d.index, d.side), (2, Side::Live));
    }
    assert!(matches!(p.promote(&me()), Err(PromoteError::NoTrial)), "nothing left to promote");

    // Errors: 100% against 0%.
    p.try_candidate(&faulty(), &opts(&[("index", "1")]), canary, rules, &me()).unwrap();
    let old = route(&p, &Request::new(0, "key 1", 4), &ws).unwrap().routed();
    run(&p, 100_000, 100_000, Outcome::Unreachable);
    let end = p.trial().unwrap().ended.expect("aborted");
    assert!(end.why.contains("error rate 100.0%"), "{}", end.why);

    // A request routed under that trial and ending during the next counts in neither.
    p.try_candidate(&faulty(), &opts(&[("index", "1")]), canary, rules, &me()).unwrap();
    p.observe(&Completion::new(0, 2, Outcome::Broken), true, old);
    p.unserved(old);
    let r = p.trial().unwrap();
    assert_eq!((r.live.requests, r.candidate.requests), (0, 0));
    p.abort(&me()).unwrap();

    // A second trial while one runs is refused; a swap ends the one running.
    p.try_candidate(&faulty(), &opts(&[("index", "1")]), canary, rules, &me()).unwrap();
    let e = p.try_candidate(&faulty(), &opts(&[]), TrialMode::Shadow, rules, &me()).unwrap_err();
    assert!(e.to_string().contains("canary trial is running"), "{e}");
    p.swap(&PolicySource::Builtin("hash"), &opts(&[]), &me()).unwrap();
    let end = p.trial().unwrap().ended.expect("ended by the swap");
    assert!(end.why.contains("replaced by hash"), "{}", end.why);

    let log: Vec<(&str, String)> =
        p.audit().recent().iter().map(|e| (e.event.name(), e.who.clone())).collect();
    let events: Vec<&str> = log.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        events,
        [
            "load", "canary", "abort", "canary", "promote", "canary", "abort", "canary", "abort",
            "canary", "abort", "swap"
        ]
    );
    assert_eq!(log[2].1, "locus", "the rules aborted it");
    assert_eq!(log[4].1, "tester");
}
