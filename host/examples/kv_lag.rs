//! KV event lag: from a worker's prefix store reporting a stored block to the router's
//! index knowing it, measured on a real local cluster (3 workers, synthetic distilgpt2, the
//! router following their `/kv_events`) under load.
//!
//! The example subscribes to each worker's event stream itself to learn when every block
//! was stored (`ts_us`, the worker's wall clock), and a thread polls the router's index
//! every 50 µs until it holds the block: the lag is the difference, on one machine's clock.
//!
//! Run: `cargo run --release -p locus --example kv_lag -- [requests] [concurrency]`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use locus::clock::unix_micros;
use locus::cluster::{self, ClusterOptions};
use serde_json::{Value, json};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let requests = args.first().copied().unwrap_or(300);
    let concurrency = args.get(1).copied().unwrap_or(4);

    let mut o = ClusterOptions::local();
    o.port = 0;
    o.worker_port = 0;
    o.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    o.router.load_interval = Duration::from_millis(200);
    let c = cluster::start(o).await?;
    let ids: Vec<u64> = c.gateway.registry().all().iter().map(|b| b.id()).collect();

    // (worker id, block, ts_us) of every live stored event, as the workers sent them.
    let (tx, rx) = mpsc::channel::<(u64, u64, u64)>();
    for (addr, id) in c.worker_addrs.iter().zip(&ids) {
        let (tx, url, id) = (tx.clone(), format!("http://{addr}/kv_events"), *id);
        tokio::spawn(async move {
            let r = reqwest::get(url).await.expect("event stream");
            let mut stream = r.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = buf.drain(..end + 2).collect();
                    let Some(data) = event.strip_prefix(b"data: ") else { continue };
                    let Ok(v) = serde_json::from_slice::<Value>(data) else { continue };
                    if v["type"] == "stored" && v["snapshot"].is_null() {
                        let ts = v["ts_us"].as_u64().unwrap_or(0);
                        for h in v["hashes"].as_array().into_iter().flatten() {
                            let _ = tx.send((id, h.as_u64().unwrap_or(0), ts));
                        }
                    }
                }
            }
        });
    }
    drop(tx);

    // Polls the router's index for every block announced, until it knows it.
    let kv = c.gateway.policy().kv().clone();
    let poller = std::thread::spawn(move || {
        let mut pending: HashMap<(u64, u64), u64> = HashMap::new();
        let mut lags = Vec::new();
        loop {
            loop {
                match rx.try_recv() {
                    Ok((w, h, ts)) => {
                        pending.insert((w, h), ts);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return (lags, pending.len()),
                }
            }
            let now = unix_micros(SystemTime::now());
            pending.retain(|(w, h), ts| {
                let known = kv.holds(*w, *h);
                if known {
                    lags.push(now.saturating_sub(*ts));
                }
                !known
            });
            if lags.len() >= 1_000_000 {
                return (lags, pending.len());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    });

    // Load: distinct prompts of ~100 tokens, `concurrency` at a time, through the router.
    let http = reqwest::Client::new();
    let router = c.router_addr;
    let t0 = std::time::Instant::now();
    futures_util::stream::iter(0..requests)
        .for_each_concurrent(concurrency, |i| {
            let http = http.clone();
            async move {
                let text = format!(
                    "Tenant {} asks question {i}: {}",
                    i % 24,
                    "describe how a cache-aware router places requests near their prefixes. "
                        .repeat(6)
                );
                let body = json!({"text": text, "sampling_params": {"max_new_tokens": 8}});
                let r = http.post(format!("http://{router}/generate")).json(&body).send().await;
                assert!(r.is_ok_and(|r| r.status().is_success()), "request {i} failed");
            }
        })
        .await;
    let elapsed = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // End the streams: stop the workers, which ends the poller's input.
    for w in c.workers.into_iter().flatten() {
        w.stop().await?;
    }
    let (mut lags, unseen) =
        tokio::task::spawn_blocking(move || poller.join().expect("poller")).await?;
    lags.sort_unstable();
    anyhow::ensure!(!lags.is_empty(), "no block was stored");
    println!(
        "{requests} requests at concurrency {concurrency} in {:.1} s; {} blocks stored and seen by \
         the router, {unseen} never seen",
        elapsed.as_secs_f64(),
        lags.len()
    );
    println!("| lag, worker store -> router index | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "| ms | {:.2} | {:.2} | {:.2} | {:.2} |",
        ms(percentile(&lags, 0.5)),
        ms(percentile(&lags, 0.9)),
        ms(percentile(&lags, 0.99)),
        ms(*lags.last().unwrap())
    );
    Ok(())
}
