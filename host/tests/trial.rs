//! Trying a routing policy through a real router and workers: a canary that traps is
//! aborted with no failed client request, a shadow is scored, and every change reaches the
//! audit log. The trial machinery itself is tested on components alone in the
//! `locus-policy` crate's `tests/trial.rs`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use locus::guests;
use locus_policy::PolicySource;
use serde_json::{Value, json};

// Through a real router and workers.

const TOKEN: &str = "trial-token";

async fn cluster(audit: &std::path::Path) -> locus::cluster::Cluster {
    let mut o = locus::cluster::ClusterOptions::local();
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.workers = 2;
    o.worker.admin_token = Some(TOKEN.into());
    o.router.admin_token = Some(TOKEN.into());
    o.router.policy = PolicySource::Builtin("hash");
    o.router.audit_log = Some(audit.into());
    locus::cluster::start(o).await.expect("cluster starts")
}

/// The router's admin API, as an operator's client calls it.
struct Admin {
    http: reqwest::Client,
    url: String,
}

impl Admin {
    async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
        let r = r.bearer_auth(TOKEN).send().await.expect("the admin API answers");
        (r.status().as_u16(), r.json().await.expect("a JSON answer"))
    }

    async fn put(&self, query: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
        Self::answer(self.http.put(format!("{}/admin/policy", self.url)).query(query).body(body))
            .await
    }

    async fn get(&self, path: &str) -> Value {
        Self::answer(self.http.get(format!("{}{path}", self.url))).await.1
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        Self::answer(self.http.post(format!("{}{path}", self.url))).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_traps_is_aborted_with_no_failed_client_request() {
    let dir = std::env::temp_dir().join(format!("locus-trial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit_path = dir.join("audit.jsonl");
    let c = cluster(&audit_path).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let admin = Admin { http: http.clone(), url: format!("http://{}", c.admin_addr) };

    // The candidate traps on every prompt that starts with FAULT; it gets half the keys.
    let put = http
        .put(format!("{}/admin/policy", admin.url))
        .bearer_auth(TOKEN)
        .header("x-locus-actor", "alice@test")
        .header("x-locus-reason", "try the new policy")
        .query(&[("name", "faulty.wasm"), ("fault", "trap"), ("locus.canary", "50")])
        .body(std::fs::read(guests::FAULTY_PATH).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let v: Value = put.json().await.unwrap();
    assert_eq!(v["trial"]["mode"], "canary");
    assert_eq!(v["trial"]["percent"], 50.0);

    // A second one is refused while it runs, naming why; a bad setting is named.
    let (status, e) = admin.put(&[("name", "random"), ("locus.shadow", "true")], vec![]).await;
    assert_eq!((status, &e["error"]["code"]), (409, &json!("trial_running")));
    let (status, e) = admin.put(&[("name", "random"), ("locus.canary", "150")], vec![]).await;
    assert_eq!((status, &e["error"]["param"]), (400, &json!("locus.canary")));

    let router = c.router_addr;
    let mut failed = 0;
    let mut sent = 0;
    for round in 0..10 {
        let batch: Vec<_> = (0..4)
            .map(|k| {
                let http = http.clone();
                let text = format!("FAULT request {round}-{k}: tell me about caches");
                tokio::spawn(async move {
                    let body = json!({"text": text, "sampling_params": {"max_new_tokens": 2}});
                    http.post(format!("http://{router}/generate")).json(&body).send().await
                })
            })
            .collect();
        for t in batch {
            sent += 1;
            match t.await.unwrap() {
                Ok(r) if r.status() == 200 => {}
                _ => failed += 1,
            }
        }
    }
    assert_eq!(failed, 0, "{failed} of {sent} client requests failed");

    let v = admin.get("/admin/policy/trial").await;
    let t = &v["trial"];
    assert_eq!(t["ended"]["how"], "aborted", "{t}");
    assert!(t["ended"]["why"].as_str().unwrap().contains("fault rules"), "{t}");
    // Calls already under way when the fifth fault ended the trial may add a few.
    assert!(t["candidate"]["fallbacks"].as_u64().unwrap() >= 5, "{t}");
    assert_eq!(t["live"]["errors"], 0);
    assert_eq!(t["candidate"]["errors"], 0);
    // Worker ids are shown as the workers' URLs.
    let per_worker = t["live"]["per_worker"].as_object().unwrap();
    assert!(per_worker.keys().all(|k| k.starts_with("http://")), "{per_worker:?}");
    assert_eq!(c.gateway.policy().info().name, "hash");

    // The audit log, in memory and on disk.
    let v = admin.get("/admin/audit").await;
    // The admission policy's load is logged too, under its own world.
    let events: Vec<(&str, &str)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["world"].as_str().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events,
        [("router", "load"), ("admission", "load"), ("router", "canary"), ("router", "abort")]
    );
    let lines: Vec<Value> = std::fs::read_to_string(&audit_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["world"] == "router")
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["who"], "alice@test");
    assert_eq!(lines[1]["why"], "50% of requests: try the new policy");
    assert_eq!(lines[1]["from_sha256"], lines[0]["sha256"]);
    assert_eq!(lines[2]["who"], "locus");

    // Promote and abort with no trial: 409, in the one error shape.
    for path in ["/admin/policy/promote", "/admin/policy/abort"] {
        let (status, e) = admin.post(path).await;
        assert_eq!((status, &e["error"]["code"]), (409, &json!("no_trial")));
    }

    // A shadow over the admin API, then promoted: it serves, and the metrics showed it.
    let (status, _) =
        admin.put(&[("name", "least-loaded"), ("locus.shadow", "true")], vec![]).await;
    assert_eq!(status, 200);
    for i in 0..6 {
        let body =
            json!({"text": format!("shadowed {i}"), "sampling_params": {"max_new_tokens": 2}});
        let r = http.post(format!("http://{router}/generate")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.gateway.policy().trial().unwrap().compared < 6 {
        assert!(Instant::now() < deadline, "the shadow compared too few decisions");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = http.get(format!("http://{router}/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("locus_router_trial_info{candidate=\"least-loaded\""), "{text}");
    assert!(text.contains("locus_router_trial_decisions{side=\"candidate\"} 6"), "{text}");
    assert_eq!(admin.post("/admin/policy/promote").await.0, 200);
    assert_eq!(c.gateway.policy().info().name, "least-loaded");
    let metrics = http.get(format!("http://{router}/metrics")).send().await.unwrap();
    assert!(!metrics.text().await.unwrap().contains("locus_router_trial_info{"), "cleared");
    let _ = std::fs::remove_dir_all(&dir);
    let seen: HashSet<String> =
        c.gateway.policy().audit().recent().iter().map(|e| e.event.name().to_string()).collect();
    assert!(seen.contains("promote") && seen.contains("shadow"));
}
