//! `locus run`: a local cluster, workers and a router in this process, until a signal.

use crate::cli::RunArgs;
use crate::commands::ids::random_token;
use locus::cluster;

/// Starts the cluster, prints where everything is and how to try it, and serves until
/// SIGTERM or Ctrl-C.
pub async fn cluster(a: RunArgs) -> anyhow::Result<()> {
    // A token never goes to the terminal (or a CI log): a made-up one goes to a file only
    // this user can read, and its path is printed.
    let (token, token_file) = match a.admin_token.token.clone() {
        Some(t) => (t, None),
        None => {
            let t = random_token();
            (t.clone(), Some(TokenFile::write(&t)?))
        }
    };
    let c = cluster::start(a.options(&token)?).await?;
    let r = c.router_addr;
    println!("locus is running");
    println!("  router:  http://{r}   (policy {})", c.gateway.policy().info().name);
    for (i, w) in c.worker_addrs.iter().enumerate() {
        println!("  worker {}: http://{w}", i + 1);
    }
    let (said, use_token) = match &token_file {
        Some(f) => (
            format!("token in {}, readable only by you", f.0.display()),
            format!("LOCUS_ADMIN_TOKEN=$(cat {}) ", f.0.display()),
        ),
        None => ("token as given".to_string(), String::new()),
    };
    println!("  admin:   http://{}   ({said})", c.admin_addr);
    println!("  metrics: http://{r}/metrics");
    println!();
    println!("try:");
    println!(
        "  curl -s http://{r}/generate -H 'content-type: application/json' \\\n    -d '{{\"text\": \"The capital of France is\", \"sampling_params\": {{\"max_new_tokens\": 16}}}}'"
    );
    println!(
        "  curl -s http://{r}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi!\"}}], \"max_tokens\": 16}}'"
    );
    println!("  {use_token}locus swap --router http://{} --policy random", c.admin_addr);
    let signal = locus::serve::shutdown_signal().await;
    // First, before anything can fail or abort: the made-up token must not outlive us.
    drop(token_file);
    // Whoever read the banner may be gone (a closed pipe): that is no reason to panic.
    use std::io::Write;
    if let Ok(s) = &signal {
        let _ = writeln!(std::io::stdout(), "stopping ({s})");
    }
    signal?;
    Ok(())
}

/// A made-up admin token's file (mode 0600), removed when the cluster stops.
struct TokenFile(std::path::PathBuf);

impl TokenFile {
    fn write(token: &str) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("locus-admin-token-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                anyhow::anyhow!("cannot write the admin token to {}: {e}", path.display())
            })?;
        f.write_all(token.as_bytes())?;
        Ok(Self(path))
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
