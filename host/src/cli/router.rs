//! The gateway's flags: `locus router`'s, the routing flags `locus run` shares with it, and
//! `locus swap`'s, which change a running router's (or worker's) policy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use clap::builder::TypedValueParser;
use locus::router::{Discover, RouterOptions};
use locus_policy::{self as policy, FaultPolicy, PolicySource};

use super::shared::{AdminTokenArg, ClusterTokenArg, ServeArgs, ShutdownArgs};

/// How requests are routed: the policy, and the router's own options with their flags.
#[derive(Args, Clone)]
pub struct RoutingArgs {
    // The policy is named here rather than parsed by clap so that an unknown one fails as
    // it always has (an error and exit code 1, not a usage error), and `--watch` is checked
    // against it.
    /// Routing policy: a built-in (`locus policy list`), `native`, or a .wasm component.
    #[arg(long, env = "LOCUS_POLICY", default_value_t = RouterOptions::default().policy.name())]
    pub policy: String,
    /// A `key=value` setting for the routing policy (repeatable), e.g. prefix-chars=20.
    #[arg(long = "policy-setting", value_parser = policy::parse_setting)]
    pub policy_settings: Vec<(String, String)>,
    /// Admission policy, which orders the router's queue: `fifo` (arrival order), `fair`
    /// (each tenant's fair share of tokens, VTC), `priority` (strict bands with aging),
    /// `native` (first in, first out without wasm), or a .wasm component of the
    /// `admission` world.
    #[arg(long, env = "LOCUS_ADMISSION", default_value_t = locus::router::FlowOptions::default().admission.name())]
    pub admission: String,
    /// A `key=value` setting for the admission policy (repeatable), e.g. weight.chat=2.
    #[arg(long = "admission-setting", value_parser = policy::parse_setting)]
    pub admission_settings: Vec<(String, String)>,
    /// Swap the policy whenever its file changes on disk.
    #[arg(long, env = "LOCUS_WATCH", value_parser = clap::builder::BoolishValueParser::new())]
    pub watch: bool,
    #[command(flatten)]
    pub router: RouterOptions,
    // clap lists a flattened struct's flags together, so `--help` shows these after the
    // router's options (before the split they followed --max-retries).
    #[command(flatten)]
    pub faults: FaultArgs,
}

impl RoutingArgs {
    /// The router's options: its own flags', with the policy these flags name, the admin
    /// `token` and the limits of `serve`, which the command shares with others.
    pub fn options(
        &self,
        token: Option<String>,
        serve: &ServeArgs,
    ) -> anyhow::Result<RouterOptions> {
        let policy = PolicySource::parse(&self.policy)?;
        let watch = match (&policy, self.watch) {
            (PolicySource::File(p), true) => Some(p.clone()),
            (_, true) => anyhow::bail!("--watch needs --policy to be a file path"),
            _ => None,
        };
        let mut flow = self.router.flow.clone();
        flow.admission = PolicySource::parse(&self.admission)?;
        flow.admission_settings = self.admission_settings.clone();
        Ok(RouterOptions {
            flow,
            policy,
            settings: self.policy_settings.clone(),
            watch,
            faults: self.faults.policy(),
            admin_token: token,
            limits: serve.limits.clone(),
            max_upload_bytes: serve.max_upload_bytes,
            ..self.router.clone()
        })
    }
}

/// When the routing policy is rolled back for its faults. `FaultPolicy` belongs to the
/// policy crate, which knows nothing of command lines, so its flags are here; their
/// defaults are its own.
#[derive(Args, Clone)]
pub struct FaultArgs {
    /// Policy faults within --fault-window-s that roll the policy back.
    #[arg(
        long,
        default_value_t = FaultPolicy::default().max_faults,
        // Raised to one, the fewest faults a rollback can follow.
        value_parser = clap::value_parser!(u32).map(|n| n.max(1))
    )]
    pub max_faults: u32,
    /// The window faults are counted in, in seconds.
    #[arg(
        long = "fault-window-s",
        value_name = "FAULT_WINDOW_S",
        default_value = FaultPolicy::default().window.as_secs().to_string(),
        value_parser = clap::value_parser!(u64).map(Duration::from_secs)
    )]
    pub window: Duration,
}

impl FaultArgs {
    /// The fault policy these flags describe.
    pub fn policy(&self) -> FaultPolicy {
        FaultPolicy { max_faults: self.max_faults, window: self.window }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("worker-sources").required(true).multiple(true).args(["workers", "discover", "workers_file"])))]
pub struct RouterArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = locus::router::DEFAULT_ADDR.port())]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = locus::router::DEFAULT_ADDR.ip())]
    pub host: IpAddr,
    /// Worker base URLs (`http://host:port`: no path, query or credentials),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = locus::router::worker_base_url)]
    pub workers: Vec<String>,
    /// Find workers by DNS: `dns:NAME:PORT` adds every address NAME resolves to (a
    /// Compose service or network alias, a Kubernetes headless Service) once it answers,
    /// and removes those gone from the answer. Repeatable, or comma-separated.
    #[arg(long, env = "LOCUS_DISCOVER", value_delimiter = ',')]
    pub discover: Vec<Discover>,
    /// Find workers in a file of base URLs, one per line (`#` comments), followed as it
    /// changes.
    #[arg(long, env = "LOCUS_WORKERS_FILE")]
    pub workers_file: Option<PathBuf>,
    /// Milliseconds between DNS lookups of --discover (and re-reads of --workers-file).
    #[arg(
        long = "discover-interval-ms",
        value_name = "DISCOVER_INTERVAL_MS",
        env = "LOCUS_DISCOVER_INTERVAL_MS",
        default_value = RouterOptions::default().discover_interval.as_millis().to_string(),
        value_parser = clap::value_parser!(u64).range(10..).map(Duration::from_millis)
    )]
    pub discover_interval: Duration,
    /// Admin listener (keep it on loopback unless a network policy guards it).
    #[arg(long, default_value_t = locus::router::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
    #[command(flatten)]
    pub cluster_token: ClusterTokenArg,
    #[command(flatten)]
    pub routing: RoutingArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

impl RouterArgs {
    /// The router's options: the routing flags', with the workers listed or to be found.
    pub fn options(&self) -> anyhow::Result<RouterOptions> {
        let mut discover = self.discover.clone();
        discover.extend(self.workers_file.clone().map(Discover::File));
        Ok(RouterOptions {
            workers: self.workers.clone(),
            discover,
            discover_interval: self.discover_interval,
            cluster_token: self.cluster_token.cluster_token.clone(),
            cluster_over_http: self.cluster_token.over_http,
            ..self.routing.options(self.admin_token.token.clone(), &self.serve)?
        })
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("change").args(["policy", "shadow", "canary", "promote", "abort", "cache_policy"]).required(true)))]
pub struct SwapArgs {
    /// Admin URL of a router (e.g. http://127.0.0.1:8100).
    #[arg(long, conflicts_with = "worker", required_unless_present = "worker")]
    pub router: Option<String>,
    /// URL of a worker (e.g. http://127.0.0.1:8001).
    #[arg(long)]
    pub worker: Option<String>,
    /// New routing policy (with --router): a built-in name or a .wasm file.
    #[arg(long, requires = "router")]
    pub policy: Option<String>,
    /// Try a routing policy as a shadow: asked every routing question beside the serving
    /// policy, its answers only recorded (`locus policy report` compares them).
    #[arg(long, value_name = "POLICY", requires = "router")]
    pub shadow: Option<String>,
    /// Route PERCENT of requests (by a stable hash of their session or leading prompt
    /// block) with POLICY; aborted on its own when it does worse than the serving policy
    /// (see --min-requests, --window and the margins).
    #[arg(long, num_args = 2, value_names = ["PERCENT", "POLICY"], requires = "router")]
    pub canary: Vec<String>,
    /// End the trial running on --router by making its candidate serve everything.
    #[arg(long, requires = "router")]
    pub promote: bool,
    /// End the trial running on --router, keeping the serving policy.
    #[arg(long, requires = "router")]
    pub abort: bool,
    /// Canary: requests each side needs in its window before the rules apply (20).
    #[arg(long, requires = "canary")]
    pub min_requests: Option<usize>,
    /// Canary: the most recent requests per side the rules read (200).
    #[arg(long, requires = "canary")]
    pub window: Option<usize>,
    /// Canary: abort when its error rate exceeds the serving side's by more than this
    /// (0.05: five points).
    #[arg(long, requires = "canary")]
    pub error_margin: Option<f64>,
    /// Canary: abort when its fallback rate (calls the native fallback decided because the
    /// candidate faulted) exceeds the serving side's by more than this (0.05).
    #[arg(long, requires = "canary")]
    pub fallback_margin: Option<f64>,
    /// Canary: abort when its TTFT p90 exceeds the serving side's by more than this
    /// fraction (0.5: 50% slower).
    #[arg(long, requires = "canary")]
    pub ttft_margin: Option<f64>,
    /// Who asks, for the audit log (default: $USER@host name).
    #[arg(long, env = "LOCUS_ACTOR")]
    pub actor: Option<String>,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// New cache policy (with --worker): a built-in name or a .wasm file.
    #[arg(long, requires = "worker")]
    pub cache_policy: Option<String>,
    /// A `key=value` setting for the new policy (repeatable).
    #[arg(long = "setting", value_parser = policy::parse_setting)]
    pub settings: Vec<(String, String)>,
    #[command(flatten)]
    pub admin_token: AdminTokenArg,
}
