//! Flow control end to end, through a real router and worker: API keys, the priority a
//! key allows, the queue's caps and time-to-live, a client hanging up while it waits, the
//! order the admission policy sets, the worker keeping the router's bands, and a trapping
//! admission component.
//!
//! Every test holds the cluster's one dispatch slot with a long generation (a "blocker"),
//! so that the requests after it wait in the router's queue where the test can see them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locus::cluster::{self, Cluster, ClusterOptions};
use locus::router::FlowOptions;
use locus_policy::PolicySource;
use parking_lot::Mutex;
use serde_json::{Value, json};

const TOKEN: &str = "flow-token";

/// One worker on ephemeral ports, with `flow`.
fn options(flow: FlowOptions) -> ClusterOptions {
    let mut o = ClusterOptions::local();
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.workers = 1;
    o.router.admin_token = Some(TOKEN.into());
    o.router.health_interval = Duration::from_millis(100);
    o.router.load_interval = Duration::from_millis(50);
    o.router.flow = flow;
    o
}

async fn start(flow: FlowOptions) -> Cluster {
    let o = options(FlowOptions { dispatch_limit: Some(1), ..flow });
    cluster::start(o).await.expect("cluster starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn generate(tokens: u32) -> Value {
    json!({"text": "Who goes first when the workers are full?",
           "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": true}})
}

async fn post(c: &Cluster, headers: &[(&str, &str)], body: Value) -> reqwest::Response {
    let mut r = client().post(format!("http://{}/generate", c.router_addr)).json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("the router answers")
}

/// Starts a long generation that holds the one slot until it is dropped.
fn blocker(
    c: &Cluster,
    headers: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<()> {
    let url = format!("http://{}/generate", c.router_addr);
    tokio::spawn(async move {
        let mut r = client().post(url).json(&generate(900));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let _ = r.send().await.map(|r| r.status());
    })
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn waiting(c: &Cluster) -> u32 {
    c.gateway.queue().queued().iter().sum()
}

async fn metrics(c: &Cluster) -> String {
    client()
        .get(format!("http://{}/metrics", c.router_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_name_the_tenant_and_cap_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "batch-key-0000000001 batch 0\n").unwrap();
    let c = start(FlowOptions { api_keys: Some(keys.clone()), ..FlowOptions::default() }).await;

    // No key, a wrong key: 401 in OpenAI's shape, before anything is queued.
    for headers in [vec![], vec![("authorization", "Bearer batch-key-0000000002")]] {
        let r = post(&c, &headers, generate(2)).await;
        assert_eq!(r.status(), 401);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["type"], "authentication_error", "{e}");
        assert_eq!(e["error"]["code"], "invalid_api_key", "{e}");
    }
    // A valid key asking for the top band is served in its key's band 0, as its tenant,
    // whatever tenant header it sends.
    let h = [
        ("authorization", "Bearer batch-key-0000000001"),
        ("x-priority", "3"),
        ("x-tenant-id", "chat"),
    ];
    let r = post(&c, &h, generate(2)).await;
    assert_eq!(r.status(), 200);
    let m = metrics(&c).await;
    assert!(m.contains("locus_router_admitted_total{band=\"0\",tenant=\"batch\"} 1"), "{m}");
    assert!(
        !m.contains("locus_router_admitted_total{band=\"3\""),
        "the header raised the band: {m}"
    );

    // A key added to the file serves after a reload through the admin API.
    std::fs::write(&keys, "batch-key-0000000001 batch 0\nchat-key-00000000001 chat 3\n").unwrap();
    let r = client()
        .post(format!("http://{}/admin/api-keys/reload", c.admin_addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = [("authorization", "Bearer chat-key-00000000001"), ("x-priority", "3")];
    assert_eq!(post(&c, &h, generate(2)).await.status(), 200);
    let m = metrics(&c).await;
    assert!(m.contains("locus_router_admitted_total{band=\"3\",tenant=\"chat\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_time_to_live_answer_429_and_503_with_retry_after() {
    let flow =
        FlowOptions { queue_max: 2, queue_ttl: Duration::from_secs(1), ..FlowOptions::default() };
    let c = Arc::new(start(flow).await);
    let block = blocker(&c, &[]);
    until("the blocker holds the slot", || c.gateway.queue().dispatched() == 1).await;

    // Two wait; the third is past the queue's cap.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = post(&c, &[], generate(2)).await;
                (
                    r.status().as_u16(),
                    r.headers().get("retry-after").cloned(),
                    t0.elapsed(),
                    r.text().await.unwrap(),
                )
            })
        })
        .collect();
    until("two requests wait", || waiting(&c) == 2).await;
    let r = post(&c, &[], generate(2)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full", "{e}");

    // The two waiting ones outlive the time-to-live behind the blocker: 503, Retry-After.
    for w in waiters {
        let (status, retry, took, body) = w.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(retry.is_some(), "no Retry-After on {body}");
        assert!(body.contains("queue_timeout"), "{body}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
    }
    assert_eq!(waiting(&c), 0);
    let m = metrics(&c).await;
    assert!(m.contains("reason=\"queue_full\",status=\"429\""), "{m}");
    assert!(m.contains("reason=\"expired\",status=\"503\""), "{m}");
    block.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_leaves_the_queue() {
    let c = Arc::new(start(FlowOptions::default()).await);
    let block = blocker(&c, &[]);
    until("the blocker holds the slot", || c.gateway.queue().dispatched() == 1).await;
    let url = format!("http://{}/generate", c.router_addr);
    let gone = tokio::spawn(async move {
        let short = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
        short.post(url).json(&generate(2)).send().await.map(|r| r.status())
    });
    until("the request waits", || waiting(&c) == 1).await;
    assert!(gone.await.unwrap().is_err(), "the client timed out");
    until("the request leaves the queue", || waiting(&c) == 0).await;
    assert_eq!(c.gateway.queue().admission().waiting(), 0, "the policy was told");
    // The slot is still the blocker's alone.
    assert_eq!(c.gateway.queue().dispatched(), 1);
    block.abort();
}

/// Sends `tenants` in order behind a blocker of tenant `heavy`, waits until all wait, then
/// frees the slot; returns the tenants in the order they were dispatched (the order their
/// attempts were reported, which is before each one's slot is freed).
async fn order(admission: &'static str, tenants: &[&'static str]) -> Vec<&'static str> {
    let flow =
        FlowOptions { admission: PolicySource::Builtin(admission), ..FlowOptions::default() };
    let c = Arc::new(start(flow).await);
    let block = blocker(&c, &[("x-tenant-id", "heavy")]);
    until("the blocker holds the slot", || c.gateway.queue().dispatched() == 1).await;
    let mut tasks = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let (cc, t) = (c.clone(), *t);
        tasks.push(tokio::spawn(async move {
            let r = post(&cc, &[("x-tenant-id", t)], generate(4)).await;
            assert_eq!(r.status(), 200);
        }));
        until("the request waits", || waiting(&c) == i as u32 + 1).await;
    }
    block.abort();
    for t in tasks {
        t.await.unwrap();
    }
    dispatched(&c, tenants)
}

/// The tenants of the requests sent after the blocker, in the order they were dispatched:
/// the order their attempts were reported, each before its slot was freed (the order the
/// clients got their answers may differ). Request ids are given in arrival order: the
/// blocker's is 1, the others' follow.
fn dispatched(c: &Cluster, tenants: &[&'static str]) -> Vec<&'static str> {
    c.gateway
        .feedback()
        .recent()
        .iter()
        .filter(|d| d.request_id > 1)
        .map(|d| tenants[d.request_id as usize - 2])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_interleaves_a_light_tenant_with_the_heavy_ones_backlog() {
    let sent = ["heavy", "heavy", "heavy", "light", "light"];
    // FIFO: arrival order. VTC: light arrives idle and is lifted to heavy's counter (no
    // credit saved up), then each pick charges its tenant, so the two alternate.
    assert_eq!(order("fifo", &sent).await, sent);
    assert_eq!(order("fair", &sent).await, ["heavy", "light", "heavy", "light", "heavy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_admission_component_falls_back_to_fifo_without_failing_a_request() {
    let flow = FlowOptions {
        admission: PolicySource::File(locus::guests::FAULTY_ADMISSION_PATH.into()),
        ..FlowOptions::default()
    };
    let c = Arc::new(start(flow).await);
    assert_eq!(c.gateway.queue().admission().info().world, "admission");
    let block = blocker(&c, &[]);
    until("the blocker holds the slot", || c.gateway.queue().dispatched() == 1).await;
    // While a request of the tenant `FAULT` waits, every `pick` traps.
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let sent = ["FAULT", "a", "FAULT", "b", "FAULT", "c", "FAULT", "d", "FAULT"];
    for (i, t) in sent.into_iter().enumerate() {
        let (cc, done) = (c.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let r = post(&cc, &[("x-tenant-id", t)], generate(2)).await;
            done.lock().push((t, r.status().as_u16()));
        }));
        until("the request waits", || waiting(&c) == i as u32 + 1).await;
    }
    block.abort();
    for t in tasks {
        t.await.unwrap();
    }
    let done = done.lock().clone();
    assert!(done.iter().all(|(_, s)| *s == 200), "{done:?}");
    // In arrival order: first in, first out decided each faulted pick.
    assert_eq!(dispatched(&c, &sent), sent);
    let a = c.gateway.queue().admission();
    assert!(a.total_faults() >= 5, "faults: {}", a.total_faults());
    // Five faults in a minute: rolled back to the native first in, first out.
    assert_eq!(a.info().name, "native");
}

/// One worker that batches one request at a time behind a router with 3 slots; both
/// have `cluster_token` when given.
async fn one_at_a_time(flow: FlowOptions, cluster_token: Option<&str>) -> Arc<Cluster> {
    let mut o = options(FlowOptions { dispatch_limit: Some(3), ..flow });
    o.engine.limits.max_batch = 1;
    o.worker.cluster_token = cluster_token.map(Into::into);
    o.router.cluster_token = cluster_token.map(Into::into);
    Arc::new(cluster::start(o).await.expect("cluster starts"))
}

/// On one worker that batches one request at a time, held by a blocker sent with
/// `held_by`: sends `first`, then `second` (each as the value of `header`), each waiting in
/// the worker before the next, releases the blocker and returns the order they were
/// answered in (and the cluster).
async fn answer_order(
    flow: FlowOptions,
    held_by: &'static [(&'static str, &'static str)],
    header: &'static str,
    order: [&'static str; 2],
) -> (Arc<Cluster>, Vec<&'static str>) {
    let c = one_at_a_time(flow, None).await;
    let url = format!("http://{}/generate", c.router_addr);
    let order = order_of(&c, held_by, &url, &[], header, order).await;
    (c, order)
}

/// [`answer_order`] on a running cluster, the two requests sent to `url` with `also`.
async fn order_of(
    c: &Arc<Cluster>,
    held_by: &'static [(&'static str, &'static str)],
    url: &str,
    also: &'static [(&'static str, &'static str)],
    header: &'static str,
    [first, second]: [&'static str; 2],
) -> Vec<&'static str> {
    let engine = c.engines[0].clone();
    let block = blocker(c, held_by);
    until("the blocker runs", || engine.scheduler_stats().running == 1).await;
    let done = Arc::new(Mutex::new(Vec::new()));
    let send = |value: &'static str| {
        let (url, done) = (url.to_string(), done.clone());
        tokio::spawn(async move {
            let mut r = client().post(url).json(&generate(2)).header(header, value);
            for (k, v) in also {
                r = r.header(*k, *v);
            }
            let r = r.send().await.expect("it answers");
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            done.lock().push(value);
        })
    };
    let a = send(first);
    until("the first waits in the worker", || engine.scheduler_stats().waiting == 1).await;
    let b = send(second);
    until("both wait in the worker", || engine.scheduler_stats().waiting == 2).await;
    block.abort();
    a.await.unwrap();
    b.await.unwrap();
    done.lock().clone()
}

/// With a cluster token, a worker takes a rank only from a request carrying it: the
/// router's ranks still order the worker, a client that reaches the worker itself cannot
/// jump its queue (the rank is ignored and counted, the request still answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_sets_a_workers_rank() {
    const TOKEN: Option<&str> = Some("cluster-secret");
    let c = one_at_a_time(FlowOptions::default(), TOKEN).await;
    let router = format!("http://{}/generate", c.router_addr);
    let order = order_of(&c, &[], &router, &[], "x-priority", ["0", "3"]).await;
    assert_eq!(order, ["3", "0"], "the router's rank was not honoured");

    // A cluster each: a released blocker may still hold the worker's one place a while.
    const NO_TOKEN: &[(&str, &str)] = &[];
    const A_GUESS: &[(&str, &str)] = &[("x-locus-cluster-token", "a-guess")];
    for also in [NO_TOKEN, A_GUESS] {
        let c = one_at_a_time(FlowOptions::default(), TOKEN).await;
        let worker = format!("http://{}/generate", c.worker_addrs[0]);
        let order = order_of(&c, &[], &worker, also, "x-locus-priority", ["0", "7"]).await;
        assert_eq!(order, ["0", "7"], "a client's rank was honoured ({also:?})");
        let m = client().get(format!("http://{}/metrics", c.worker_addrs[0])).send().await;
        let m = m.unwrap().text().await.unwrap();
        // Both requests carried a rank.
        assert!(m.contains("locus_worker_priority_ignored_total 2\n"), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_admits_the_routers_higher_band_first() {
    // The router sends all three on (3 slots), the worker batches one at a time: the order
    // is the worker's, from the band the router sends in `x-locus-priority`.
    let (c, order) = answer_order(FlowOptions::default(), &[], "x-priority", ["0", "3"]).await;
    assert_eq!(order, ["3", "0"], "the worker kept arrival order");

    // The header is checked where a worker reads it.
    let r = client()
        .post(format!("http://{}/generate", c.worker_addrs[0]))
        .header("x-locus-priority", "9")
        .json(&generate(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "x-locus-priority", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_sends_a_tenant_under_its_share_ahead_in_the_worker() {
    // 3 slots, a worker that batches one at a time. heavy holds the batch and sends one
    // more (alone busy: not ahead); light's request comes after it, under its share (0 of
    // 3 / 2 slots), so fair sends it ahead and the worker admits it first. With `ahead`
    // off the worker keeps arrival order.
    for (ahead, expect) in [("true", ["light", "heavy"]), ("false", ["heavy", "light"])] {
        let flow = FlowOptions {
            admission: PolicySource::Builtin("fair"),
            admission_settings: vec![("ahead".into(), ahead.into())],
            ..FlowOptions::default()
        };
        let held_by = &[("x-tenant-id", "heavy")];
        let (_, order) = answer_order(flow, held_by, "x-tenant-id", ["heavy", "light"]).await;
        assert_eq!(order, expect, "ahead={ahead}");
    }
}

/// A router with no healthy worker (just started, or every worker restarting) answers
/// 503 with a short Retry-After: the drain rate, 0 without workers, would say the cap
/// (60 s), and a client honouring it would wait a minute after a worker came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_worker_is_a_503_with_a_short_retry_after() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let opts = locus::router::RouterOptions::default();
    let (addr, _, _gw) = locus::router::spawn(opts, any, any).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/generate"))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}
