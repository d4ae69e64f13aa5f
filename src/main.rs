//! `vigil`: one binary, several roles. This file only parses the command line and hands over.

mod classify;
mod cli;
mod config;
mod demo;
mod erase;
mod ingest;
mod metrics;
mod migrate;
mod parse;
mod process;
mod replay;
mod run;
mod sources;

use clap::{CommandFactory, FromArgMatches};

/// mimalloc rather than the system allocator: decoding events allocates a string per field,
/// and glibc's allocator spent a fifth of the processor's time consolidating and unlinking
/// those small chunks (measured in `processor/benches/reputation.rs`, which uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        cli::Command::Run(args) => {
            init_tracing();
            let run_matches = matches.subcommand_matches("run").expect("the run subcommand matched");
            run::run(args.with_config_file(run_matches)?)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Ingest(args) => {
            init_tracing();
            ingest::ingest(&args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Process(args) => {
            init_tracing();
            process::process(&args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Replay(args) => {
            init_tracing();
            replay::replay(&args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Erase(args) => {
            init_tracing();
            erase::erase(&args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Migrate(args) => {
            init_tracing();
            migrate::migrate(args)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::CheckConfig(args) => {
            config::check(&args.files)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        cli::Command::Parse(args) => parse::parse(&args),
        cli::Command::Classify(args) => classify::classify(&args),
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); stdout is for data.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
