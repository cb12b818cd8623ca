//! `locus bench` workloads and oracle: deterministic, with the stated structure.

use std::collections::HashMap;
use std::time::Duration;

use locus::bench::workload::filler;
use locus::bench::{BenchRequest, Workload, oracle};
use locus_engine::Tokenizer;

fn tokens(s: &str) -> Vec<u32> {
    Tokenizer::new().encode(s)
}

#[test]
fn seed_workload_is_six_interleaved_requests_for_two_phrases() {
    let r = Workload::Seed.generate(1).unwrap();
    assert_eq!(r.len(), 6);
    for (i, q) in r.iter().enumerate() {
        assert_eq!(q.prompt, r[i % 2].prompt);
    }
    assert_ne!(r[0].prompt, r[1].prompt);
}

#[test]
fn shared_prefix_has_the_stated_groups_and_exact_prefix_lengths() {
    let w = Workload::shared_prefix_default();
    let a = w.generate(7).unwrap();
    assert_eq!(a, w.generate(7).unwrap(), "deterministic for a seed");
    assert_ne!(a, w.generate(8).unwrap());
    assert_eq!(a.len(), 8 * 16);
    let mut by_group: HashMap<usize, Vec<Vec<u32>>> = HashMap::new();
    for r in &a {
        let ids = tokens(&r.prompt);
        assert_eq!(ids.len(), 256 + 32, "system 256 + question 32 tokens");
        assert_eq!(r.max_tokens, 16);
        by_group.entry(r.group).or_default().push(ids);
    }
    assert_eq!(by_group.len(), 8);
    for (g, prompts) in &by_group {
        assert_eq!(prompts.len(), 16, "group {g}");
        assert!(
            prompts.iter().all(|p| p[..256] == prompts[0][..256]),
            "group {g} shares 256 tokens"
        );
        assert!(prompts.iter().any(|p| p[256..] != prompts[0][256..]), "questions differ");
    }
    assert_ne!(by_group[&0][0][..256], by_group[&1][0][..256]);
    // Shuffled: not all of group 0 first.
    assert!(a[..16].iter().any(|r| r.group != a[0].group));
}

#[test]
fn zipf_popularity_favours_the_first_groups() {
    let w = Workload::SharedPrefix {
        groups: 8,
        per_group: 50,
        system: 16,
        question: 4,
        output: 4,
        zipf: Some(1.2),
    };
    let r = w.generate(3).unwrap();
    assert_eq!(r.len(), 400);
    let mut counts = [0usize; 8];
    for q in &r {
        counts[q.group] += 1;
    }
    assert!(counts[0] > 2 * counts[7], "{counts:?}");
    assert!(counts[0] > counts[1] && counts[1] > counts[3], "{counts:?}");
}

#[test]
fn multi_turn_conversations_grow_by_each_turn() {
    let w = Workload::MultiTurn { users: 3, rounds: 4, question: 8, output: 5 };
    let r = w.generate(11).unwrap();
    assert_eq!(r.len(), 12);
    for u in 0..3 {
        let turns: Vec<&BenchRequest> = r.iter().filter(|q| q.group == u).collect();
        assert_eq!(turns.len(), 4);
        for (k, t) in turns.iter().enumerate() {
            assert_eq!(tokens(&t.prompt).len(), k * (8 + 5) + 8, "user {u} turn {k}");
            if k > 0 {
                assert!(t.prompt.starts_with(&turns[k - 1].prompt), "history is kept");
            }
            assert_eq!(t.session.as_deref(), Some(format!("user-{u}").as_str()));
        }
    }
    assert_eq!(
        Workload::parse("multi-turn:users=3,rounds=4,question=8,output=5").unwrap(),
        w,
        "the shape is set on the command line"
    );
    assert_eq!(
        Workload::parse("multi-turn").unwrap(),
        Workload::MultiTurn { users: 8, rounds: 4, question: 32, output: 16 }
    );
    for bad in ["multi-turn:users=0", "multi-turn:turns=3", "multi-turn:users"] {
        let e = Workload::parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
}

#[test]
fn traces_replay_on_schedule_and_bad_records_name_their_line() {
    let dir = std::env::temp_dir().join(format!("locus-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"timestamp_ms": 0, "prompt": "hello there", "max_tokens": 4}"#, "\n",
            r#"{"timestamp_ms": 250, "prefix_id": 9, "prefix_tokens": 32, "suffix_tokens": 4, "max_tokens": 8}"#, "\n",
            "\n",
            r#"{"timestamp_ms": 500, "prefix_id": 9, "prefix_tokens": 32, "suffix_tokens": 6, "max_tokens": 8}"#, "\n",
        ),
    )
    .unwrap();
    let r = Workload::parse(&format!("trace:{}", path.display())).unwrap().generate(5).unwrap();
    assert_eq!(r.iter().map(|q| q.at_ms).collect::<Vec<_>>(), [Some(0), Some(250), Some(500)]);
    assert_eq!(r[0].prompt, "hello there");
    let (a, b) = (tokens(&r[1].prompt), tokens(&r[2].prompt));
    assert_eq!((a.len(), b.len()), (36, 38));
    assert_eq!(a[..32], b[..32], "the same prefix_id is the same prefix");

    std::fs::write(&path, "{\"timestamp_ms\": 0, \"max_tokens\": 4}\n").unwrap();
    let e = Workload::Trace(path.clone()).generate(5).unwrap_err();
    assert!(e.contains("t.jsonl:1") && e.contains("prefix_id"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(Workload::parse("nope").unwrap_err().to_string().contains("shared-prefix"));
}

#[test]
fn tenants_are_zipf_popular_and_their_shape_is_set_on_the_command_line() {
    let w = Workload::parse("tenants").unwrap();
    let r = w.generate(3).unwrap();
    assert_eq!(r.len(), 240);
    let mut per = [0usize; 24];
    for q in &r {
        per[q.group] += 1;
        assert_eq!(tokens(&q.prompt).len(), 512 + 32);
        assert_eq!(q.max_tokens, 16);
    }
    // Zipf 1.1 over 24: the first tenant draws ~27%, the last ~0.8%.
    assert!(per[0] > 40 && per[0] > 4 * per[23], "{per:?}");
    let w = Workload::parse("tenants:tenants=4,system=64,question=8,output=2,zipf=0,requests=10")
        .unwrap();
    let r = w.generate(3).unwrap();
    assert_eq!(r.len(), 12, "rounded up to a multiple of the tenants");
    assert!(r.iter().all(|q| tokens(&q.prompt).len() == 72 && q.max_tokens == 2));
    for bad in ["tenants:tenants=0", "tenants:zipf=-1", "tenants:colour=blue", "tenants:system"] {
        let e = Workload::parse(bad).unwrap_err().to_string();
        assert!(e.contains("tenants[:"), "{bad}: {e}");
    }
}

#[test]
fn a_tenants_warm_up_shares_the_system_prompts_but_no_prompt() {
    let w = Workload::parse("tenants:tenants=4,system=32,question=8,requests=40").unwrap();
    let (seq, warm) = (w.generate(3).unwrap(), w.warm_up(3).unwrap());
    assert_eq!(seq.len(), warm.len());
    let system = |r: &BenchRequest| tokens(&r.prompt)[..32].to_vec();
    let systems: std::collections::BTreeSet<_> = seq.iter().map(system).collect();
    assert_eq!(systems.len(), 4);
    assert!(warm.iter().all(|r| systems.contains(&system(r))), "same tenants");
    assert!(warm.iter().all(|r| !seq.iter().any(|q| q.prompt == r.prompt)), "no repeats");
    // Workloads without shared prefixes warm up with their own sequence.
    assert_eq!(Workload::Seed.warm_up(3).unwrap(), Workload::Seed.generate(3).unwrap());
}

#[test]
fn a_policy_is_named_with_its_settings() {
    use locus::bench::policy_with_settings;
    let (name, settings) = policy_with_settings("prefix-aware:load-weight=8:seed=3").unwrap();
    assert_eq!(name, "prefix-aware");
    let want = [("load-weight", "8"), ("seed", "3")].map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(settings, want);
    assert_eq!(policy_with_settings("/tmp/a:b.wasm").unwrap(), ("/tmp/a:b.wasm", vec![]));
    let e = policy_with_settings("prefix-aware:load-weight=8:oops").unwrap_err();
    assert!(format!("{e:#}").contains("prefix-aware:load-weight=8:oops"), "{e:#}");
}

#[test]
fn poisson_arrivals_are_seeded_and_average_the_rate() {
    use locus::bench::{Arrivals, arrival_times};
    let t = arrival_times(20_000, 50.0, Arrivals::Poisson, 7);
    assert_eq!(t, arrival_times(20_000, 50.0, Arrivals::Poisson, 7), "seeded");
    assert_eq!(t[0], Duration::ZERO);
    let mean = t.last().unwrap().as_secs_f64() / 19_999.0;
    assert!((mean - 0.02).abs() < 0.0006, "mean gap {mean}");
    // Exponential gaps: about 1/e of them are longer than the mean.
    let long = t.windows(2).filter(|w| (w[1] - w[0]).as_secs_f64() > 0.02).count();
    assert!((6_900..7_800).contains(&long), "{long} long gaps");
    let even = arrival_times(3, 4.0, Arrivals::Even, 7);
    assert_eq!(even, [0.0, 0.25, 0.5].map(Duration::from_secs_f64));
}

#[test]
fn oracle_on_a_hand_checked_sequence() {
    let p1 = filler(1, 40);
    let p2 = format!("{}{}", Tokenizer::new().decode(&tokens(&p1)[..32]), filler(2, 8));
    let p3 = filler(3, 20);
    assert_eq!((tokens(&p1).len(), tokens(&p2).len(), tokens(&p3).len()), (40, 40, 20));
    let req = |p: &str| BenchRequest {
        at_ms: None,
        prompt: p.to_string(),
        max_tokens: 8,
        group: 0,
        session: None,
    };
    let seq = [req(&p1), req(&p2), req(&p1), req(&p3)];
    let o = oracle(&seq);
    // p1: nothing cached, 2 blocks stored; p2: both blocks reused (32 of its 40 tokens);
    // p1 again: a response hit, all 40; p3: nothing. 72 of 140 prompt tokens.
    assert_eq!(o.response_hit_rate, 0.25);
    assert_eq!(o.prefix_token_hit_rate, 72.0 / 140.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_to_end_bench_writes_its_report_and_its_totals_match_the_records() {
    use locus::bench::{BenchOptions, Target, report, run};
    use locus::cluster::{self, ClusterOptions};
    let mut o = ClusterOptions::local();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    (o.port, o.worker_port, o.admin_addr) = (0, 0, any);
    o.workers = 2;
    o.engine.prefix_cache_bytes = 32 << 20;
    o.worker.admin_token = Some("t".into());
    o.router.admin_token = Some("t".into());
    let c = cluster::start(o).await.unwrap();
    let target = Target {
        router: format!("http://{}", c.router_addr),
        admin: Some(format!("http://{}", c.admin_addr)),
        token: Some("t".into()),
        workers: Vec::new(),
    };
    let opts = BenchOptions {
        workload: Workload::Seed,
        policies: vec!["random".into(), "hash".into()],
        requests: None,
        concurrency: 1,
        rates: Vec::new(),
        rounds: 2,
        arrivals: locus::bench::Arrivals::Poisson,
        seed: 1,
        warm: false,
        progress: false,
    };
    let rep = run(&target, &opts).await.unwrap();
    let dir = std::env::temp_dir().join(format!("locus-bench-{}", std::process::id()));
    let summaries = report::write(&rep, &dir).unwrap();
    for f in ["report.json", "report.md", "chart.svg"] {
        let len = std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f} missing or empty");
    }
    assert!(std::fs::read_to_string(dir.join("chart.svg")).unwrap().contains("<svg"));
    // Two rounds, the policies' order rotated in the second.
    let order: Vec<_> = rep.passes.iter().map(|p| (p.policy.as_str(), p.round)).collect();
    assert_eq!(order, [("random", 0), ("hash", 0), ("hash", 1), ("random", 1)]);
    assert_eq!(rep.records.len(), 24);
    assert_eq!(rep.workers, 2);
    assert_eq!(rep.oracle.response_hit_rate, 4.0 / 6.0);
    for s in &summaries {
        let recs: Vec<_> = rep.records.iter().filter(|r| r.policy == s.policy).collect();
        assert_eq!((s.requests, s.passes), (recs.len(), 2));
        assert_eq!(s.errors, 0, "{recs:?}");
        let hits = recs.iter().filter(|r| r.cache_hit).count();
        assert!((s.response_hit_rate - hits as f64 / 12.0).abs() < 1e-12);
        assert!(recs.iter().all(|r| r.ttft_ms.is_some() && r.prompt_tokens > 0));
        // Every answer's usage and the router's routing time were read.
        assert!(recs.iter().all(|r| (1..=16).contains(&r.completion_tokens)), "{recs:?}");
        assert!(recs.iter().all(|r| r.route_us.is_some()), "{recs:?}");
        assert!(s.route_p50_us.is_some() && s.tpot_p50_ms.is_some());
        assert!((s.mean_per_worker - 6.0).abs() < 1e-12, "12 answers over 2 workers");
        assert!(s.max_over_mean() >= 1.0);
    }
    // Cold caches for every pass, and hash sends each phrase to one worker: 4 of 6 in
    // each round.
    let hash = summaries.iter().find(|s| s.policy == "hash").unwrap();
    assert_eq!(hash.response_hit_rate, 4.0 / 6.0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["report"]["records"].as_array().unwrap().len(), 24);

    // The same router benched as if it were another project's: no admin API, so one
    // label and no swaps, the workers flushed by URL. Each round starts cold: 4 of 6 hits
    // again (6 of 6 in the second round if the flush had not happened).
    let peer = Target {
        admin: None,
        workers: c.worker_addrs.iter().map(|a| format!("http://{a}")).collect(),
        ..target.clone()
    };
    locus::admin_client::AdminClient::new(Some("t".into()))
        .swap_router_policy(target.admin.as_deref().unwrap(), "hash", &[])
        .await
        .unwrap();
    let opts = BenchOptions { policies: vec!["peer".into()], ..opts };
    let rep = run(&peer, &opts).await.unwrap();
    assert_eq!(rep.workers, 2);
    assert!(rep.records.iter().all(|r| r.policy == "peer" && r.error.is_none()));
    let s = &report::summarize(&rep)[0];
    assert_eq!((s.policy.as_str(), s.passes, s.requests), ("peer", 2, 12));
    assert_eq!(s.response_hit_rate, 4.0 / 6.0, "the serving policy is still hash");
    let two = BenchOptions { policies: vec!["a".into(), "b".into()], ..opts };
    let e = run(&peer, &two).await.unwrap_err().to_string();
    assert!(e.contains("cannot swap policies"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Options that cannot describe a run are refused before any request is sent.
#[tokio::test]
async fn a_bench_refuses_rates_it_cannot_keep() {
    use locus::bench::{BenchOptions, Target, run};
    let target = Target {
        router: "http://127.0.0.1:9".into(),
        admin: Some("http://127.0.0.1:9".into()),
        token: None,
        workers: Vec::new(),
    };
    let opts = |workload: Workload, rates: Vec<f64>| BenchOptions {
        workload,
        policies: vec!["hash".into()],
        requests: None,
        concurrency: 1,
        rates,
        rounds: 1,
        arrivals: locus::bench::Arrivals::Poisson,
        seed: 0,
        warm: false,
        progress: false,
    };
    let e = run(&target, &opts(Workload::Seed, vec![2.0, 2.0])).await.unwrap_err();
    assert!(e.to_string().contains("rate 2 is given twice"), "{e}");
    let e = run(&target, &opts(Workload::Seed, vec![1e-20])).await.unwrap_err();
    assert!(e.to_string().contains("at least 0.001"), "{e}");
    let trace = std::env::temp_dir().join(format!("locus-trace-{}.jsonl", std::process::id()));
    std::fs::write(&trace, "{\"timestamp_ms\": 0, \"prompt\": \"hi\", \"max_tokens\": 1}\n")
        .unwrap();
    let e = run(&target, &opts(Workload::Trace(trace.clone()), vec![1.0])).await.unwrap_err();
    assert!(e.to_string().contains("own schedule"), "{e}");
    let _ = std::fs::remove_file(&trace);
    // And from the command line: policies need locus's admin API.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locus"))
        .args(["bench", "--router", "http://127.0.0.1:9", "--policies", "hash"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--policies needs"), "{err}");
}

/// `locus bench` as a user runs it: worker processes with one compute thread each, a
/// rate sweep, multi-turn sessions; the report's files and figures are checked.
#[test]
fn the_cli_bench_sweeps_rates_over_worker_processes() {
    let out = std::env::temp_dir().join(format!("locus-bench-cli-{}", std::process::id()));
    let shape = "multi-turn:users=3,rounds=2,question=8,output=4";
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_locus"))
        .args(["bench", "--spawn", "2", "--policies", "prefix-aware,random", "--no-policy-cache"])
        .args(["--workload", shape])
        .args(["--rate", "8,16", "--prefix-cache-bytes", "16777216", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("Highest sustained rate"), "{stdout}");
    let log = std::fs::read_to_string(out.join("workers/worker-2.log")).unwrap();
    assert!(log.contains("model loaded"), "each worker logs to its own file: {log}");
    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("prefix-aware"), "the sweep is charted");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let (rep, summary) = (&json["report"], json["summary"].as_array().unwrap());
    assert_eq!(rep["workers"], 2);
    assert_eq!(summary.len(), 4, "2 rates x 2 policies");
    let recs = rep["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4 * 6);
    for r in recs {
        assert_eq!(r["status"], 200, "{r}");
        let w = r["worker"].as_str().unwrap();
        assert!(w == "worker-1" || w == "worker-2", "named by the bench: {w}");
        assert!(r["rate"] == 8.0 || r["rate"] == 16.0, "{r}");
    }
    // The bench sent each conversation's session header, and prefix-aware keeps a
    // session on one worker.
    let seq = Workload::parse(shape).unwrap().generate(0).unwrap();
    for rate in [8.0, 16.0] {
        let mut by_user = std::collections::BTreeMap::<&str, Vec<&str>>::new();
        for r in recs.iter().filter(|r| r["policy"] == "prefix-aware" && r["rate"] == rate) {
            let user = seq[r["index"].as_u64().unwrap() as usize].session.as_deref().unwrap();
            by_user.entry(user).or_default().push(r["worker"].as_str().unwrap());
        }
        assert_eq!(by_user.len(), 3);
        for (user, ws) in by_user {
            assert!(ws.iter().all(|w| *w == ws[0]), "{user} at {rate}/s went to {ws:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}
