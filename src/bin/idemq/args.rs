//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect and manage idemq's idempotency records.
///
/// Exit codes: 0 ok, 1 not found or refused, 2 usage error, 3 store/broker unreachable.
#[derive(Debug, Parser)]
#[command(name = "idemq", version)]
pub struct Cli {
    /// Output format: human-readable text or one JSON document for scripts.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable.
    Text,
    /// JSON on stdout (errors as JSON on stderr).
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One key: show or forget it.
    Key {
        /// Key operation.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Many keys: list them.
    Keys {
        /// Listing operation.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Counts of records by state in a scope, and the in-progress record closest to expiry.
    Stats(ScopeArgs),
}

/// `idemq key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Show a record: state, token, attempt, fingerprint, lease or retention left, outcome.
    Get(GetArgs),
    /// Delete a record (data-deletion request, or to force a re-run). Refuses an in-progress
    /// record unless --force.
    Forget(ForgetArgs),
}

/// `idemq keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List records of a scope (SCAN-based on Redis: never blocks the store).
    List(ListArgs),
}

/// Where the records are.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Scope (consumer group or queue name) the keys belong to.
    #[arg(long)]
    pub scope: String,
    /// Store URL: redis://…, rediss://…, postgres://… (or memory, which is empty in a new process).
    #[arg(long, env = "IDEMQ_STORE")]
    pub store: String,
}

/// `idemq key get`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The idempotency key.
    pub key: String,
    /// Scope and store.
    #[command(flatten)]
    pub at: ScopeArgs,
    /// Print the outcome's raw bytes instead of pretty JSON.
    #[arg(long)]
    pub raw: bool,
}

/// `idemq key forget`
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The idempotency key.
    pub key: String,
    /// Scope and store.
    #[command(flatten)]
    pub at: ScopeArgs,
    /// Also delete a record whose handler may still be running.
    #[arg(long)]
    pub force: bool,
}

/// `idemq keys list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Scope and store.
    #[command(flatten)]
    pub at: ScopeArgs,
    /// Only records in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// Record state filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Claimed, handler running (or crashed with the lease not yet expired).
    InProgress,
    /// Completed with an outcome.
    Completed,
    /// Released after a failure; the next delivery runs again.
    Released,
}
