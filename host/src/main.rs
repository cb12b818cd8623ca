//! The `locus` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use locus::policy::{self, LoadOptions, PolicySource};

/// locus: a cache-aware LLM inference router with WebAssembly routing and cache policies.
#[derive(Parser)]
#[command(name = "locus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy the way a swap would and report on it: the world it implements,
    /// its exports, sha256, size and the outcome of a smoke call. Exits non-zero if
    /// locus cannot use it.
    Inspect {
        /// A built-in policy name (random, hash, lru) or a path to a .wasm component.
        policy: String,
        /// A `key=value` setting passed to `configure` (repeatable).
        #[arg(long = "setting", short = 's', value_parser = policy::parse_setting)]
        settings: Vec<(String, String)>,
    },
    /// List the built-in policies.
    List,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(PolicyCommand::List) => {
            for name in policy::builtin_names() {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Command::Policy(PolicyCommand::Inspect { policy, settings }) => {
            let source = match PolicySource::parse(&policy) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = policy::inspect(&source, &LoadOptions::with_settings(settings));
            println!("{report}");
            if report.usable() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
