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
