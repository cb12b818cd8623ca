//! Faulty components: rejected at load with the step and reason, contained at run time, rolled back.

use crate::common::*;

#[test]
fn faulty_modules_are_rejected_at_load_with_the_step_and_reason() {
    let faulty = || file(guests::FAULTY_PATH);
    let cases: Vec<(locus_policy::LoadError, LoadStep, &str)> = vec![
        (
            load_err(faulty(), &[("fault", "trap"), ("trigger", "always")]),
            LoadStep::Smoke,
            "trapped",
        ),
        (
            load_err(faulty(), &[("fault", "loop"), ("trigger", "always")]),
            LoadStep::Smoke,
            "timed out",
        ),
        (
            load_err(faulty(), &[("fault", "alloc"), ("trigger", "always")]),
            LoadStep::Smoke,
            "memory limit",
        ),
        (
            load_err(faulty(), &[("fault", "bad-index"), ("trigger", "always")]),
            LoadStep::Smoke,
            "index",
        ),
        (
            load_err(faulty(), &[("fault", "error"), ("trigger", "always")]),
            LoadStep::Smoke,
            "failed on purpose",
        ),
        (load_err(faulty(), &[("fault", "configure")]), LoadStep::Configure, "refused on purpose"),
        (load_err(file(guests::WRONG_WORLD_PATH), &[]), LoadStep::Typecheck, "router world"),
        (load_err(PolicySource::Builtin("lru"), &[]), LoadStep::Typecheck, "router world"),
        (
            load_err(
                PolicySource::Bytes { name: "junk".into(), bytes: b"GIF89a not wasm".to_vec() },
                &[],
            ),
            LoadStep::Compile,
            "not a WebAssembly component",
        ),
        (
            load_err(
                PolicySource::Bytes { name: "core".into(), bytes: b"\0asm\x01\0\0\0".to_vec() },
                &[],
            ),
            LoadStep::Compile,
            "core wasm module",
        ),
        (load_err(file("/nonexistent/policy.wasm"), &[]), LoadStep::Read, "cannot read"),
    ];
    for (err, step, needle) in cases {
        assert_eq!(err.step, step, "{err}");
        assert!(err.to_string().contains(needle), "expected {needle:?} in: {err}");
    }
}

#[test]
fn a_rejected_swap_leaves_the_old_policy_serving() {
    let p = router(PolicySource::Builtin("hash"), &[]);
    let before = p.info();
    let ws = workers(&[1, 2, 3]);
    let want = route_id(&p, "hello there, general", &ws);
    let e = p
        .swap(
            &file(guests::FAULTY_PATH),
            &settings(&[("fault", "loop"), ("trigger", "always")]),
            &Actor::default(),
        )
        .unwrap_err();
    assert_eq!(e.step, LoadStep::Smoke);
    assert_eq!(p.info(), before);
    assert_eq!(route_id(&p, "hello there, general", &ws), want);
}

/// Each run-time fault is contained: the native fallback decides, the fault is counted,
/// and the next call is served by a fresh instance of the policy.
fn contained(fault: &str, check: impl Fn(&Fault)) {
    let p = router(file(guests::FAULTY_PATH), &[("fault", fault), ("index", "2")]);
    let ws = workers(&[1, 2, 3, 4]);
    let prompt = "FAULT: please misbehave";
    let started = Instant::now();
    let d = route(&p, &req(prompt), &ws).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{fault}: the sandbox did not stop the call"
    );
    let f = d.fault.expect("the fault is reported");
    check(&f);
    let native = rendezvous(prompt, ids(&ws)).unwrap();
    assert_eq!(d.index, native, "{fault}: the native fallback decided");
    assert_eq!(p.info().faults, 1);
    for _ in 0..3 {
        let d = route(&p, &req("a normal prompt"), &ws).unwrap();
        assert_eq!((d.index, d.fault), (2, None), "{fault}: the policy serves again");
    }
}

#[test]
fn run_time_trap_is_contained() {
    contained("trap", |f| assert!(matches!(f, Fault::Trap(_)), "{f}"));
}

#[test]
fn run_time_infinite_loop_is_contained() {
    contained("loop", |f| assert_eq!(*f, Fault::Timeout(Duration::from_millis(10))));
}

#[test]
fn run_time_unbounded_allocation_is_contained() {
    contained("alloc", |f| assert_eq!(*f, Fault::Memory(64 << 20)));
}

#[test]
fn run_time_out_of_range_index_is_contained() {
    contained("bad-index", |f| assert_eq!(*f, Fault::OutOfRange { index: 11, len: 4 }));
}

#[test]
fn run_time_error_result_is_contained() {
    contained("error", |f| assert_eq!(*f, Fault::Error("route failed on purpose".into())));
}

#[test]
fn repeated_faults_roll_back_to_the_previous_version_then_a_good_swap_works() {
    let faults = FaultPolicy { max_faults: 3, window: Duration::from_secs(60) };
    let p = RouterPolicy::load(&PolicySource::Builtin("hash"), &LoadOptions::default(), faults)
        .unwrap();
    p.swap(
        &file(guests::FAULTY_PATH),
        &settings(&[("fault", "trap"), ("index", "1")]),
        &Actor::default(),
    )
    .unwrap();
    assert_eq!(p.info().name, guests::FAULTY_PATH);
    let ws = workers(&[1, 2, 3]);
    for i in 1..=3 {
        let d = route(&p, &req("FAULT now"), &ws).unwrap();
        assert!(d.fault.is_some());
        if i < 3 {
            assert_eq!(p.info().name, guests::FAULTY_PATH, "rolled back too early");
        }
    }
    assert_eq!(p.info().name, "hash", "three faults in the window roll back");
    assert_eq!(p.rollbacks(), 1);
    assert_eq!(p.total_faults(), 3);
    assert_eq!(route(&p, &req("FAULT now"), &ws).unwrap().fault, None);

    let info = p
        .swap(&PolicySource::Builtin("random"), &settings(&[("seed", "1")]), &Actor::default())
        .unwrap();
    assert_eq!(info.name, "random");
    assert_eq!(route(&p, &req("x"), &ws).unwrap().fault, None);
    // With nothing before it, a rollback lands on the native fallback.
    assert_eq!(p.rollback(&Actor::default()).name, "hash");
    assert_eq!(p.rollback(&Actor::default()).name, "native");
    let d = route(&p, &req("abc"), &ws).unwrap();
    assert_eq!(d.index, rendezvous("abc", ids(&ws)).unwrap());
}

/// Faults inside a Tokio runtime, where the router calls policies: the sandbox must not
/// reach for a runtime of its own (a panic would take the worker thread down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_inside_a_tokio_runtime_do_not_panic_the_host() {
    let never = FaultPolicy { max_faults: u32::MAX, window: Duration::from_secs(1) };
    let opts = settings(&[("fault", "trap")]);
    let p = Arc::new(RouterPolicy::load(&file(guests::FAULTY_PATH), &opts, never).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                let ws = workers(&[1, 2]);
                (0..20).filter(|_| route(&p, &req("FAULT"), &ws).unwrap().fault.is_some()).count()
            })
        })
        .collect();
    let mut faults = 0;
    for h in handles {
        faults += h.await.expect("no task panicked");
    }
    assert_eq!(faults, 80);
}

#[test]
fn cache_fault_bypasses_and_the_fresh_instance_learns_the_residents() {
    let p = Arc::new(
        CachePolicy::load(
            &file(guests::FAULTY_CACHE_PATH),
            &LoadOptions::default(),
            FaultPolicy::default(),
        )
        .unwrap(),
    );
    for key in 1..=3 {
        let e = Entry { key, kind: EntryKind::Prefix, size: 10 };
        assert!(p.admit(e));
    }
    assert!(
        !p.admit(Entry { key: 0xDEAD, kind: EntryKind::Response, size: 1 }),
        "fallback admits nothing"
    );
    assert_eq!(p.info().faults, 1);
    // The trapped instance is gone; the new one was told about keys 1..=3, oldest first.
    assert_eq!(p.evict(15), vec![1, 2]);
    assert_eq!(p.residents().iter().map(|e| e.key).collect::<Vec<_>>(), vec![3]);
    // A swap hands the residents to the new policy too.
    p.swap(&PolicySource::Builtin("lru"), &LoadOptions::default()).unwrap();
    assert!(p.admit(Entry { key: 4, kind: EntryKind::Prefix, size: 10 }));
    assert_eq!(p.evict(u64::MAX), vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_100_times_under_8_routing_tasks_fails_no_call() {
    // Policy i always answers worker i, so every answer names the policy that gave it.
    let opts = |i: usize| settings(&[("index", &i.to_string())]);
    let faulty = file(guests::FAULTY_PATH);
    let p = Arc::new(RouterPolicy::load(&faulty, &opts(0), FaultPolicy::default()).unwrap());
    let committed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ws = Arc::new(workers(&(0..128).collect::<Vec<_>>()));

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (p, committed, stop, ws) = (p.clone(), committed.clone(), stop.clone(), ws.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let floor = committed.load(Ordering::Acquire);
                    let d = route(&p, &req("steady traffic"), &ws).expect("workers exist");
                    assert_eq!(d.fault, None, "a call failed during a swap");
                    assert!(
                        d.index as u64 >= floor,
                        "answer {} from a policy older than swap {floor}",
                        d.index
                    );
                    calls += 1;
                    if calls.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                calls
            })
        })
        .collect();

    for i in 1..=100 {
        let pp = p.clone();
        let f = faulty.clone();
        tokio::task::spawn_blocking(move || pp.swap(&f, &opts(i), &Actor::default()).unwrap())
            .await
            .unwrap();
        committed.store(i as u64, Ordering::Release);
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("no routing task panicked");
    }
    assert!(total > 0);
    assert_eq!(p.total_faults(), 0);
    assert_eq!(route_id(&p, "after", &ws), 100);
}
