//! Command-line arguments.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

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
    /// Dead-letter queues: replay them safely.
    Dlq {
        /// Dead-letter operation.
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// `idemq dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Move dead-lettered messages back for processing, skipping what already completed.
    ///
    /// Each message is classified against the store: would_run (no record, released or in
    /// progress) is republished with its original payload and headers minus the x-idemq-*
    /// dead-letter headers plus x-idemq-replayed, and removed from the DLQ only after the broker
    /// confirmed the republish; would_skip (completed) is removed without republishing; conflict
    /// and no_key are left in place (they would only be dead-lettered again). --dry-run prints the
    /// counts and samples and moves nothing.
    Replay(ReplayArgs),
}

/// `idemq dlq replay`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("broker").required(true).args(["amqp_url", "bootstrap"])))]
pub struct ReplayArgs {
    /// Scope and store the consumer uses.
    #[command(flatten)]
    pub at: ScopeArgs,
    /// RabbitMQ: the broker URL (amqp://user:pass@host:5672/vhost).
    #[arg(long, env = "IDEMQ_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Kafka: bootstrap servers.
    #[arg(long, env = "IDEMQ_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// The dead-letter queue (RabbitMQ) or topic (Kafka) to read.
    #[arg(long)]
    pub from: String,
    /// Where to republish: a topic (Kafka), or EXCHANGE/ROUTING_KEY (RabbitMQ; `/orders` is the
    /// default exchange with routing key `orders`; a bare EXCHANGE keeps each message's original
    /// routing key).
    #[arg(long)]
    pub to: String,
    /// Examine at most this many messages.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Classify and count only; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Key header names, as configured on the consumer (repeatable).
    #[arg(long = "key-header", default_value = "Idempotency-Key")]
    pub key_headers: Vec<String>,
    /// Fall back to the AMQP message_id property, as configured on the consumer.
    #[arg(long)]
    pub message_id_fallback: bool,
    /// Headers that take part in the fingerprint, as configured on the consumer (repeatable).
    #[arg(long = "fingerprint-header")]
    pub fingerprint_headers: Vec<String>,
    /// The consumer's policy for messages without a valid key: reject (no_key, kept in the DLQ),
    /// derive (key = SHA-256 of the payload, classified like keyed messages), process (run
    /// without deduplication: would_run).
    #[arg(long, value_enum, default_value_t = MissingKeyArg::Reject)]
    pub missing_key: MissingKeyArg,
    /// Kafka: consumer group whose committed offsets mark what was replayed
    /// (default `idemq-replay-<from>`).
    #[arg(long)]
    pub group: Option<String>,
    /// Kafka: stop after this long without a new message (the end of the topic).
    #[arg(long, default_value_t = 5000)]
    pub idle_timeout_ms: u64,
    /// Kafka: give up (exit 3) if no partition is assigned within this long (broker unreachable).
    #[arg(long, default_value_t = 30000)]
    pub join_timeout_ms: u64,
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
    /// Store URL: redis://…, rediss://…, redis-cluster://host:port[,host:port…], postgres://… (or
    /// memory, which is empty in a new process).
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

/// The consumer's missing-key policy (`idemq::MissingKeyPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MissingKeyArg {
    /// `Reject`: dead-lettered again, so kept in the DLQ.
    Reject,
    /// `DeriveFromPayload`: the key is the SHA-256 of the payload.
    Derive,
    /// `ProcessWithoutDedup`: run without a record.
    Process,
}

impl From<MissingKeyArg> for idemq::MissingKeyPolicy {
    fn from(a: MissingKeyArg) -> Self {
        match a {
            MissingKeyArg::Reject => idemq::MissingKeyPolicy::Reject,
            MissingKeyArg::Derive => idemq::MissingKeyPolicy::DeriveFromPayload,
            MissingKeyArg::Process => idemq::MissingKeyPolicy::ProcessWithoutDedup,
        }
    }
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
