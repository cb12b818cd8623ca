//! `locus run`: a local cluster, workers and a router in this process, until a signal.

use crate::cli::RunArgs;
use crate::commands::ids::random_token;
use locus::cluster;

/// Starts the cluster, prints where everything is and how to try it, and serves until
/// SIGTERM or Ctrl-C.
pub async fn cluster(a: RunArgs) -> anyhow::Result<()> {
    let token = a.admin_token.token.clone().unwrap_or_else(random_token);
    let c = cluster::start(a.options(&token)?).await?;
    let r = c.router_addr;
    println!("locus is running");
    println!("  router:  http://{r}   (policy {})", c.gateway.policy().info().name);
    for (i, w) in c.worker_addrs.iter().enumerate() {
        println!("  worker {}: http://{w}", i + 1);
    }
    println!("  admin:   http://{}   (token: {token})", c.admin_addr);
    println!("  metrics: http://{r}/metrics");
    println!();
    println!("try:");
    println!(
        "  curl -s http://{r}/generate -H 'content-type: application/json' \\\n    -d '{{\"text\": \"The capital of France is\", \"sampling_params\": {{\"max_new_tokens\": 16}}}}'"
    );
    println!(
        "  curl -s http://{r}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi!\"}}], \"max_tokens\": 16}}'"
    );
    println!("  locus swap --router http://{} --policy random --admin-token {token}", c.admin_addr);
    let signal = locus::serve::shutdown_signal().await?;
    println!("stopping ({signal})");
    Ok(())
}
