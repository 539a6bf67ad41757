//! `idemq`: the operator tool. Inspect and forget keys, read store statistics, check a store's
//! production settings (`doctor`), replay dead-letter queues safely. `idemq --help` and
//! `docs/cli.md` describe every command.
//!
//! Data goes to stdout (text, or one JSON document with `--output json`); errors and logs go to
//! stderr. Logs follow `RUST_LOG` (default: warnings in text mode, nothing in JSON mode).
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (`doctor`: no check failed) |
//! | 1 | not found; refused (`key forget` of an in-progress key without `--force`); a `doctor` check failed |
//! | 2 | usage error |
//! | 3 | store or broker unreachable or failing |
//! | 130 / 143 | `dlq replay` stopped by SIGINT / SIGTERM (after printing what it moved) |

mod args;
mod dlq;
mod doctor;
mod keys;
mod output;

use args::{Cli, Command, DlqCommand, KeyCommand, KeysCommand, Output};
use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Exit code for a missing record, a refused operation or a failed `doctor` check.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code for a usage error (clap uses the same).
const EXIT_USAGE: u8 = 2;
/// Exit code for an unreachable or failing store or broker.
const EXIT_UNREACHABLE: u8 = 3;

/// A command's failure, mapped to an exit code.
#[derive(Debug)]
enum Failure {
    /// Not found (exit 1).
    NotFound(String),
    /// Refused, such as forgetting a record whose handler may still run (exit 1).
    Refused(String),
    /// `doctor` found at least one failing check; the report is already printed (exit 1).
    ChecksFailed(String),
    /// Store or broker unreachable or erroring (exit 3).
    Unreachable(String),
    /// Bad arguments that clap could not catch, such as an unknown store URL scheme (exit 2).
    Usage(String),
    /// Stopped by a signal (exit 128 + signal number).
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
        /// The exit code.
        code: u8,
    },
}

/// Installs the log subscriber: `RUST_LOG` if set, else warnings in text mode and nothing in
/// JSON mode (so stderr holds only the JSON error a script parses).
fn init_logs(out: Output) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let default = match out {
        Output::Text => LevelFilter::WARN,
        Output::Json => LevelFilter::OFF,
    };
    let filter = EnvFilter::builder()
        .with_default_directive(default.into())
        .from_env_lossy();
    // `try_init`: a second subscriber (none today) must not abort the command.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.output);
    // Not the arguments: store and broker URLs may hold passwords.
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "idemq starting");
    let result = match &cli.command {
        Command::Key { command } => match command {
            KeyCommand::Get(a) => keys::get(a, cli.output).await,
            KeyCommand::Forget(a) => keys::forget(a, cli.output).await,
        },
        Command::Keys { command } => match command {
            KeysCommand::List(a) => keys::list(a, cli.output).await,
        },
        Command::Stats(a) => keys::stats(a, cli.output).await,
        Command::Doctor(a) => doctor::run(a, cli.output).await,
        Command::Dlq { command } => match command {
            DlqCommand::Replay(a) => dlq::replay(a, cli.output).await,
        },
    };
    let (kind, msg, code) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::NotFound(msg)) => ("not_found", msg, EXIT_NOT_FOUND),
        Err(Failure::Refused(msg)) => ("refused", msg, EXIT_NOT_FOUND),
        Err(Failure::ChecksFailed(msg)) => ("checks_failed", msg, EXIT_NOT_FOUND),
        Err(Failure::Usage(msg)) => ("usage", msg, EXIT_USAGE),
        Err(Failure::Unreachable(msg)) => ("unreachable", msg, EXIT_UNREACHABLE),
        Err(Failure::Interrupted { signal, code }) => (
            "interrupted",
            format!("stopped by {signal}; the counts above are what was moved"),
            code,
        ),
    };
    output::error(cli.output, kind, &msg);
    ExitCode::from(code)
}
