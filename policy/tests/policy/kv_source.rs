//! Contract 0.4.0: a routing policy may name a KV source beside the worker, and the host
//! passes it on only to a worker of the same KV group.

use crate::common::*;
use locus_policy::SourceDropped;

/// Four workers; 11, 22 and 33 in one KV group, 44 in none.
fn grouped() -> Workers {
    let mut ws = workers(&[11, 22, 33, 44]);
    ws.kv_group = vec![Some(5), Some(5), Some(5), None];
    ws
}

fn ask(p: &RouterPolicy, session: &str, ws: &Workers) -> Decision {
    let mut r = req("kv source");
    r.session = Some(session.into());
    route(p, &r, ws).expect("workers")
}

#[test]
fn a_source_in_the_targets_group_is_passed_on() {
    let p = probe();
    assert_eq!(p.info().version, "0.4.0");
    let d = ask(&p, "source:1:0", &grouped());
    assert_eq!((d.index, d.kv_source, d.kv_source_dropped, d.fault), (1, Some(0), None, None));
}

#[test]
fn a_source_that_cannot_serve_the_worker_is_dropped_not_a_fault() {
    let p = probe();
    let ws = grouped();
    let d = ask(&p, "source:3:0", &ws);
    assert_eq!((d.index, d.kv_source), (3, None), "the target is in no group");
    assert_eq!(d.kv_source_dropped, Some(SourceDropped::Incompatible));
    let d = ask(&p, "source:0:3", &ws);
    assert_eq!((d.index, d.kv_source_dropped), (0, Some(SourceDropped::Incompatible)));
    let mut other = ws.clone();
    other.kv_group[2] = Some(6);
    let d = ask(&p, "source:1:2", &other);
    assert_eq!((d.index, d.kv_source_dropped), (1, Some(SourceDropped::Incompatible)));
    let d = ask(&p, "source:2:2", &ws);
    assert_eq!((d.index, d.kv_source_dropped), (2, Some(SourceDropped::Same)));
    // Without groups (a router without the cluster token) no source passes.
    let d = ask(&p, "source:1:0", &workers(&[11, 22]));
    assert_eq!((d.index, d.kv_source_dropped), (1, Some(SourceDropped::Incompatible)));
    assert_eq!(p.total_faults(), 0);
}

#[test]
fn a_source_out_of_range_is_a_fault_and_the_fallback_names_none() {
    let p = probe();
    let d = ask(&p, "source:1:9", &grouped());
    assert!(matches!(d.fault, Some(Fault::OutOfRange { index: 9, len: 4 })), "{:?}", d.fault);
    assert_eq!((d.kv_source, d.kv_source_dropped), (None, None));
}

#[test]
fn the_transfer_figures_cross_the_boundary_intact() {
    let p = probe();
    let mut ws = grouped();
    ws.prefill_tokens_per_second = vec![Some(700.5), None, Some(1.0), None];
    ws.kv_pull_bytes_per_second = vec![None, Some(3.5e8), None, None];
    ws.kv_block_bytes = vec![Some(589_824), Some(589_824), None, Some(1)];
    assert_eq!(
        probe_says(&p, "kv", &ws),
        "[Some(5), Some(5), Some(5), None] | [Some(700.5), None, Some(1.0), None] | \
         [None, Some(350000000.0), None, None] | [Some(589824), Some(589824), None, Some(1)]"
    );
}

#[test]
fn older_components_still_route_and_never_name_a_source() {
    for name in ["least-loaded", "bounded-hash", "hash"] {
        let p = router(PolicySource::Builtin(name), &[]);
        let d = ask(&p, "source:1:0", &grouped());
        assert_eq!((d.kv_source, d.kv_source_dropped, d.fault), (None, None, None), "{name}");
    }
    let p = router(PolicySource::Builtin("least-loaded"), &[]);
    assert_eq!(p.info().version, "0.2.0", "built against 0.3.0's router world");
}

/// Contract 0.5.0: `room` crosses the boundary, and `prefix-aware` lends a holder's prefix
/// only once the holder has no room left.
#[test]
fn prefix_aware_reads_room_and_pulls_only_from_a_full_holder() {
    let p = router(PolicySource::Builtin("prefix-aware"), &[("seed", "1")]);
    assert_eq!(p.info().version, "0.5.0");
    let mut ws = grouped();
    ws.load_known = vec![true; 4];
    ws.kv_total_blocks = vec![1000; 4];
    ws.prefill_tokens_per_second = vec![Some(700.0); 4];
    ws.kv_block_bytes = vec![Some(589_824); 4];
    ws.waiting = vec![0, 0, 2, 0];
    p.kv().apply(33, false, vec![], (0..32).collect());
    for id in [11, 22, 44] {
        p.kv().apply(id, true, vec![], vec![]);
    }
    let mut r = req("shared system prompt");
    r.block_hashes = (0..33).collect();
    let choose = |ws: &Workers| {
        let d = route(&p, &r, ws).expect("workers");
        assert_eq!(d.fault, None);
        (ws.ids[d.index], d.kv_source.map(|j| ws.ids[j]))
    };
    // The holder has room: it serves the prompt itself, whatever its queue.
    ws.room = vec![Some(3), Some(3), Some(1), Some(3)];
    assert_eq!(choose(&ws), (33, None));
    // Full: a worker of its group with room pulls from it.
    ws.room[2] = Some(0);
    let (to, from) = choose(&ws);
    assert!(to == 11 || to == 22, "went to {to}");
    assert_eq!(from, Some(33));
    // Of the others only 44 (in no group) has room: it computes.
    ws.room = vec![Some(0), Some(0), Some(0), Some(2)];
    assert_eq!(choose(&ws), (44, None));
    // `pull-from any`: a holder with room lends too, as in 0.4.0 (2 pending there cost more
    // than the 2.3 blocks a pull costs).
    let any = router(PolicySource::Builtin("prefix-aware"), &[("pull-from", "any")]);
    any.kv().apply(33, false, vec![], (0..32).collect());
    for id in [11, 22, 44] {
        any.kv().apply(id, true, vec![], vec![]);
    }
    ws.room = vec![Some(3), Some(3), Some(1), Some(3)];
    let d = route(&any, &r, &ws).expect("workers");
    assert_eq!(d.kv_source.map(|j| ws.ids[j]), Some(33));
    let err = load_err(PolicySource::Builtin("prefix-aware"), &[("pull-from", "half")]);
    assert_eq!(err.step, LoadStep::Configure);
    assert!(err.to_string().contains("pull-from"), "{err}");
}
