//! `idemq`: the operator tool. Inspect and forget keys, read store statistics, replay dead-letter
//! queues safely.
//!
//! Exit codes: 0 success, 1 not found (or refused), 2 usage error, 3 store or broker unreachable.

mod args;
mod dlq;
mod keys;
mod output;

use args::{Cli, Command, DlqCommand, KeyCommand, KeysCommand};
use clap::Parser;
use std::process::ExitCode;

/// Exit code for a missing record or a refused operation.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code for a usage error (clap uses the same).
const EXIT_USAGE: u8 = 2;
/// Exit code for an unreachable or failing store or broker.
const EXIT_UNREACHABLE: u8 = 3;

/// A command's failure, mapped to an exit code.
#[derive(Debug)]
enum Failure {
    /// Not found or refused (exit 1).
    NotFound(String),
    /// Store or broker unreachable or erroring (exit 3).
    Unreachable(String),
    /// Bad arguments that clap could not catch, such as an unknown store URL scheme (exit 2).
    Usage(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Key { command } => match command {
            KeyCommand::Get(a) => keys::get(a, cli.output).await,
            KeyCommand::Forget(a) => keys::forget(a, cli.output).await,
        },
        Command::Keys { command } => match command {
            KeysCommand::List(a) => keys::list(a, cli.output).await,
        },
        Command::Stats(a) => keys::stats(a, cli.output).await,
        Command::Dlq { command } => match command {
            DlqCommand::Replay(a) => dlq::replay(a, cli.output).await,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NotFound(msg)) => {
            output::error(cli.output, "not_found", &msg);
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(Failure::Usage(msg)) => {
            output::error(cli.output, "usage", &msg);
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Unreachable(msg)) => {
            output::error(cli.output, "unreachable", &msg);
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}
