//! The `locus` binary: parses the command line ([`cli`]), picks a runtime, runs the
//! command ([`commands`]) and turns its outcome into the exit code.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, PolicyCommand};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First, while this is the only thread: growing the table later waits on the kernel.
    let _ = locus::serve::presize_fd_table();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    locus_policy::use_compiled_cache(cli.compiled_cache_dir());
    #[cfg(feature = "bench")]
    let cache_args = cli.cache_args();
    let command = match cli.command {
        // These two call nothing over the network: no runtime, and their own exit codes.
        Command::Policy(PolicyCommand::List) => return commands::policy::list(),
        Command::Policy(PolicyCommand::Inspect { policy, settings }) => {
            return commands::policy::inspect(&policy, settings);
        }
        other => other,
    };
    // Before the runtime: the engine's threads are read from the environment.
    #[cfg(feature = "worker")]
    match &command {
        Command::Worker(a) => a.threads.apply(),
        Command::Run(a) => a.threads.apply(),
        _ => {}
    }
    let run = async move {
        match command {
            #[cfg(feature = "worker")]
            Command::Run(a) => commands::run::cluster(a).await,
            #[cfg(feature = "worker")]
            Command::Worker(a) => commands::worker::serve(a).await,
            Command::Router(a) => commands::router::serve(a).await,
            Command::Swap(a) => commands::swap::swap(a).await,
            #[cfg(feature = "bench")]
            Command::Bench(a) => commands::bench::bench(a, cache_args).await,
            Command::Policy(PolicyCommand::Report { router, admin_token, json, audit }) => {
                commands::policy::report(&router, admin_token.token, json, audit).await
            }
            Command::Policy(PolicyCommand::List | PolicyCommand::Inspect { .. }) => {
                unreachable!("run without a runtime")
            }
            Command::Probe(a) => commands::probe::probe(a).await,
        }
    };
    let result =
        tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
