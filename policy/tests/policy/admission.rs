//! Admission policies through the facade the router's queue asks: the built-in components
//! (`fifo`, `fair`, `priority`), a swap with requests waiting, and a faulting component.

use crate::common::*;
use locus_policy::{AdmissionPolicy, Arrival, RefusalKind, Saturation};

fn admission(source: PolicySource, kv: &[(&str, &str)]) -> AdmissionPolicy {
    AdmissionPolicy::load(&source, &settings(kv), FaultPolicy::default()).expect("policy loads")
}

fn arrival(id: u64, tenant: &str, band: u8, tokens: u32) -> Arrival {
    Arrival {
        id,
        tenant: tenant.into(),
        priority: band,
        input_tokens: Some(tokens),
        uncached_tokens: Some(tokens),
        max_tokens: 16,
        bytes: tokens * 4,
        arrived_ms: id,
    }
}

fn sat(free: u32) -> Saturation {
    let mut s = Saturation::idle(8);
    s.free_slots = free;
    s.band_caps = vec![512; 4];
    s
}

/// Picks until the policy gives none; every pick is checked to come without a fault.
fn drain(p: &AdmissionPolicy) -> Vec<u64> {
    std::iter::from_fn(|| {
        let (choice, fault) = p.pick(&sat(8));
        assert_eq!(fault, None);
        choice.map(|c| c.id)
    })
    .collect()
}

#[test]
fn fifo_is_arrival_order_and_fair_alternates_backlogged_tenants() {
    let fifo = admission(PolicySource::Builtin("fifo"), &[]);
    let fair = admission(PolicySource::Builtin("fair"), &[]);
    for p in [&fifo, &fair] {
        for (id, t) in [(1, "heavy"), (2, "heavy"), (3, "heavy"), (4, "light"), (5, "light")] {
            let (queued, fault) = p.arrive(arrival(id, t, 1, 100), &sat(0));
            assert!(queued.is_ok() && fault.is_none());
        }
        assert_eq!(p.waiting(), 5);
    }
    assert_eq!(drain(&fifo), [1, 2, 3, 4, 5]);
    // VTC: light arrives idle and is lifted to heavy's counter; each pick charges 100.
    assert_eq!(drain(&fair), [1, 4, 2, 5, 3]);
    assert_eq!(fair.waiting(), 0);
    // What each tenant was served, kept by the host for a fresh instance.
    fair.usage(1, 10);
    assert_eq!(fair.completed(1, Some(16)).map(|s| s.output), Some(16));
    assert_eq!(fair.served("heavy"), Some((300, 16)));
    assert_eq!(fair.completed(1, Some(16)), None, "told once");
}

#[test]
fn priority_takes_the_top_band_first_and_keeps_the_last_slot_for_it() {
    let p = admission(PolicySource::Builtin("priority"), &[]);
    for (id, band) in [(1, 0), (2, 3), (3, 1), (4, 3)] {
        p.arrive(arrival(id, "", band, 10), &sat(0)).0.unwrap();
    }
    assert_eq!(p.pick(&sat(8)).0.map(|c| c.id), Some(2));
    assert_eq!(p.pick(&sat(1)).0.map(|c| c.id), Some(4), "the last free slot: band 3");
    assert_eq!(p.pick(&sat(1)).0.map(|c| c.id), None, "band 1 may not take the last slot");
    assert_eq!(drain(&p), [3, 1]);
}

#[test]
fn a_swap_keeps_every_waiting_request_and_the_new_policy_orders_them() {
    let p = admission(PolicySource::Builtin("fifo"), &[]);
    for (id, t) in [(1, "heavy"), (2, "heavy"), (3, "light")] {
        p.arrive(arrival(id, t, 1, 100), &sat(0)).0.unwrap();
    }
    assert_eq!(p.pick(&sat(8)).0.map(|c| c.id), Some(1));
    let by = Actor::new("test", "a swap with requests waiting");
    p.swap(&PolicySource::Builtin("fair"), &settings(&[]), &by).unwrap();
    assert_eq!(p.info().name, "fair");
    // The fresh instance was told heavy's 100 tokens served and both waiting requests:
    // light (lifted to heavy's counter, arriving later) goes after heavy's next.
    assert_eq!(drain(&p), [2, 3]);
    assert_eq!(p.rollback(&by).name, "fifo");
}

#[test]
fn fair_refuses_only_the_tenant_past_its_share() {
    let p = admission(PolicySource::Builtin("fair"), &[]);
    let mut s = sat(0);
    s.band_caps = vec![8; 4];
    for id in 0..4 {
        s.queued[1] = id as u32;
        p.arrive(arrival(id, "heavy", 1, 10), &s).0.unwrap();
    }
    s.queued[1] = 4;
    p.arrive(arrival(10, "light", 1, 10), &s).0.unwrap();
    s.queued[1] = 5;
    let refusal = p.arrive(arrival(4, "heavy", 1, 10), &s).0.unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::Contention);
    assert!(refusal.reason.contains("heavy"), "{}", refusal.reason);
    assert!(p.arrive(arrival(11, "light", 1, 10), &s).0.is_ok());
    assert_eq!(p.waiting(), 6, "the refused request is not waiting");
}

#[test]
fn a_faulting_pick_is_decided_first_in_first_out_and_rolled_back_by_the_rules() {
    let faults = FaultPolicy { max_faults: 3, window: Duration::from_secs(60) };
    let p = AdmissionPolicy::load(&file(guests::FAULTY_ADMISSION_PATH), &settings(&[]), faults)
        .unwrap();
    p.arrive(arrival(1, "a", 1, 10), &sat(0)).0.unwrap();
    p.arrive(arrival(2, "FAULT", 1, 10), &sat(0)).0.unwrap();
    p.arrive(arrival(3, "b", 1, 10), &sat(0)).0.unwrap();
    let (choice, fault) = p.pick(&sat(8));
    assert_eq!(choice.map(|c| (c.id, c.ahead)), Some((1, false)), "the oldest waiting");
    assert!(matches!(fault, Some(Fault::Trap(_))), "{fault:?}");
    let (choice, fault) = p.pick(&sat(8));
    assert_eq!((choice.map(|c| c.id), fault.is_some()), (Some(2), true));
    // FAULT is gone: the fresh instance (told 3 is waiting) decides again.
    let (choice, fault) = p.pick(&sat(8));
    assert_eq!((choice.map(|c| c.id), fault), (Some(3), None));
    assert_eq!(p.total_faults(), 2);
    // A third fault within the window rolls it back to the native first in, first out.
    p.arrive(arrival(4, "FAULT", 1, 10), &sat(0)).0.unwrap();
    assert_eq!(p.pick(&sat(8)).0.map(|c| c.id), Some(4));
    assert_eq!(p.info().name, "native");
    // A bad id is a fault too.
    let bad = AdmissionPolicy::load(
        &file(guests::FAULTY_ADMISSION_PATH),
        &settings(&[("fault", "bad-pick")]),
        FaultPolicy::default(),
    )
    .unwrap();
    bad.arrive(arrival(7, "FAULT", 1, 10), &sat(0)).0.unwrap();
    let (choice, fault) = bad.pick(&sat(8));
    assert_eq!(choice.map(|c| c.id), Some(7));
    assert!(matches!(&fault, Some(Fault::Error(m)) if m.contains("not waiting")), "{fault:?}");
}

#[test]
fn inspect_names_the_admission_world() {
    let r = locus_policy::inspect(&PolicySource::Builtin("fair"), &settings(&[]));
    assert_eq!((r.world, r.version.as_deref()), (Some("admission"), Some("0.3.0")));
    assert_eq!(r.outcome, Ok(()));
}

/// Every built-in admission policy under many distinct tenants of the longest name the
/// router passes (128 bytes), in every band: no fault, no rollback, and the requests are
/// picked.
#[test]
fn every_admission_policy_holds_under_many_maximum_size_tenants() {
    for name in ["fifo", "fair", "priority"] {
        let p = admission(PolicySource::Builtin(name), &[]);
        let version = p.info().version;
        let mut picked = 0;
        for round in 0..300u64 {
            for k in 0..64u64 {
                let id = round * 64 + k;
                let mut tenant = format!("{id:020}");
                tenant.extend(std::iter::repeat_n('t', 128 - 20));
                let (queued, fault) = p.arrive(arrival(id, &tenant, (id % 4) as u8, 1000), &sat(0));
                assert!(queued.is_ok() && fault.is_none(), "{name}: arrival {id}");
            }
            while let (Some(c), fault) = p.pick(&sat(64)) {
                assert_eq!(fault, None, "{name}");
                assert_eq!(p.dispatched(c.id, Some(500)), None, "{name}");
                assert_eq!(p.usage(c.id, 16), None, "{name}");
                p.completed(c.id, Some(16));
                picked += 1;
            }
        }
        assert_eq!(picked + p.waiting(), 300 * 64, "{name}");
        assert!(picked >= 299 * 64, "{name}: {picked} picked");
        assert_eq!(p.total_faults(), 0, "{name}");
        assert_eq!(p.info().version, version, "{name} was rolled back");
    }
}
