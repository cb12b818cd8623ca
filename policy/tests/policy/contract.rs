//! Contract 0.2.0: what crosses the boundary, and the KV events every instance learns.

use crate::common::*;

#[test]
fn components_of_both_contract_versions_load_and_say_which() {
    let old = router(PolicySource::Builtin("hash"), &[]);
    assert_eq!(old.info().version, "0.1.0");
    assert!(!tokenizes(&old), "a 0.1.0 policy makes the router tokenize nothing");
    assert!(!tokenizes(&router(PolicySource::Native, &[])), "nor does the native one");
    assert!(tokenizes(&router(PolicySource::Builtin("prefix-aware"), &[])), "0.5.0 does");
    let new = probe();
    assert_eq!(new.info().version, "0.4.0");
    assert!(tokenizes(&new));
    let report = locus_policy::inspect(&file(guests::PROBE_PATH), &LoadOptions::default());
    assert!(report.usable(), "{report}");
    assert!(report.to_string().contains("locus:policy/router@0.4.0"), "{report}");
    let report = locus_policy::inspect(&PolicySource::Builtin("random"), &LoadOptions::default());
    assert!(report.to_string().contains("locus:policy/router@0.1.0"), "{report}");
    let report = locus_policy::inspect(&PolicySource::Builtin("lru"), &LoadOptions::default());
    assert!(report.to_string().contains("locus:policy/cache@0.2.0"), "{report}");
    // A 0.1.0 policy still routes, observes and gets no KV events.
    old.kv().apply(11, false, vec![], vec![1, 2]);
    let ws = workers(&[11, 22, 33]);
    let d = route(&old, &req("still works"), &ws).unwrap();
    assert_eq!(d.fault, None);
    old.observe(
        &locus_policy::Completion::new(1, 11, locus_policy::Outcome::Broken),
        true,
        Default::default(),
    );
    assert_eq!(old.total_faults(), 0);
}

#[test]
fn every_load_list_crosses_the_boundary_intact() {
    let p = probe();
    let mut ws = workers(&[11, 22, 33, 44]);
    ws.load_known = vec![true, true, false, true];
    ws.in_flight = vec![0, 5, 1, 2];
    ws.waiting = vec![3, 0, 0, 1];
    ws.running = vec![0, 0, 9, 1];
    ws.kv_used_blocks = vec![1, 2, 3, 70];
    ws.kv_total_blocks = vec![100, 100, 100, 99];
    ws.tokens_per_second = vec![1.5, 0.0, 0.25, 99.5];
    ws.load_age_ms = vec![10, 900, 0, 5];
    for (field, want) in [
        ("in-flight", 1),
        ("waiting", 0),
        ("running", 2),
        ("kv-used", 3),
        ("kv-total", 0),
        ("tokens-per-second", 3),
        ("load-age", 1),
        ("unknown", 2),
    ] {
        let mut r = req("load");
        r.session = Some(format!("argmax:{field}"));
        let d = route(&p, &r, &ws).unwrap();
        assert_eq!((d.index, d.fault), (want, None), "argmax {field}");
    }
    // Lists of unequal lengths never reach the policy.
    ws.waiting.pop();
    assert!(route(&p, &req("x"), &ws).is_none());
}

#[test]
fn the_completion_crosses_the_boundary_intact() {
    let p = router(file(guests::PROBE_PATH), &[("locus.instances", "1")]);
    let mut done = locus_policy::Completion::new(77, 22, locus_policy::Outcome::Broken);
    done.status = 200;
    done.attempt = 1;
    done.latency_us = 123_456;
    done.ttft_us = Some(4_321);
    done.prompt_tokens = Some(300);
    done.cached_tokens = Some(256);
    done.response_cache_hit = Some(false);
    done.generated_tokens = Some(9);
    p.observe(&done, true, Default::default());
    let seen = probe_says(&p, "observed", &workers(&[11, 22]));
    for field in [
        "request-id: 77",
        "worker-id: 22",
        "Broken",
        "status: 200",
        "attempt: 1",
        "latency-us: 123456",
        "ttft-us: Some(4321)",
        "prompt-tokens: Some(300)",
        "cached-tokens: Some(256)",
        "response-cache-hit: Some(false)",
        "generated-tokens: Some(9)",
    ] {
        assert!(seen.contains(field), "{field} missing from {seen}");
    }
}

#[test]
fn every_instance_learns_the_kv_events_and_a_fresh_one_is_told_everything() {
    let p = probe();
    let ws = workers(&[11, 22, 33]);
    p.kv().apply(33, false, vec![], vec![1, 2, 3]);
    p.kv().apply(22, false, vec![], vec![1]);
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 2);
    // A trap replaces the instance; the fresh one is told every worker's blocks.
    let mut trap = req("x");
    trap.session = Some("trap".into());
    assert!(matches!(route(&p, &trap, &ws).unwrap().fault, Some(Fault::Trap(_))));
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 2);
    assert_eq!(probe_says(&p, "blocks:33", &ws), "3");
    // Removals apply (a tie goes to the lowest index), and so does a clear.
    p.kv().apply(33, false, vec![2], vec![]);
    assert_eq!(route_blocks(&p, &[1, 2, 3], &ws), 1);
    p.kv().clear(22);
    assert_eq!(route_blocks(&p, &[1, 2, 3], &ws), 2);
    // An instance further behind than the log reaches is told everything again, and a
    // worker that holds nothing now is cleared in it too.
    for i in 0..locus_policy::LOG_BATCHES as u64 + 10 {
        p.kv().apply(11, false, vec![], vec![1000 + i]);
    }
    p.kv().apply(11, false, vec![], vec![1, 2, 3, 4]);
    p.kv().clear(33);
    assert_eq!(route_blocks(&p, &[1, 2, 3, 4], &ws), 0);
    assert_eq!(probe_says(&p, "blocks:11", &ws), (locus_policy::LOG_BATCHES + 14).to_string());
    assert_eq!(probe_says(&p, "blocks:33", &ws), "0");
    assert_eq!(probe_says(&p, "blocks:22", &ws), "0");
    assert_eq!(p.kv().head(), 4 + locus_policy::LOG_BATCHES as u64 + 10 + 2);
}
