//! Command-line arguments.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Inspect and manage idemq's idempotency records, check a store's production settings, replay
/// dead-letter queues.
#[derive(Debug, Parser)]
#[command(
    name = "idemq",
    version,
    after_help = "Exit codes:\n  \
    0    success (doctor: no check failed; warnings allowed)\n  \
    1    not found, refused (forget of an in-progress key without --force), or a doctor check failed\n  \
    2    usage error (bad arguments, unknown store scheme, invalid client setting)\n  \
    3    store or broker unreachable or failing\n  \
    130  dlq replay stopped by SIGINT (143: SIGTERM); what it moved is printed first\n\n\
Logs: RUST_LOG (e.g. RUST_LOG=idemq=debug) controls log lines on stderr; data goes to stdout. \
Without RUST_LOG, warnings are logged in text mode and nothing in JSON mode, so stderr holds only \
the JSON error."
)]
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
// Parsed once per process: the size of the largest variant (the replay options) costs nothing.
#[allow(clippy::large_enum_variant)]
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
    ///
    /// Postgres and memory stores count in the store (Postgres: one grouped SQL statement over
    /// the scope's rows). Redis has no per-scope index: the command SCANs the scope's keys and
    /// says so (`counted_by: scan`).
    Stats(ScopeArgs),
    /// Check a store against what idemq needs in production; prints pass / warn / fail per check
    /// with the fix. Read-only.
    ///
    /// Redis: maxmemory-policy (must be noeviction when maxmemory is set: every idemq record has
    /// a TTL, so volatile-* policies evict live claims and outcomes just like allkeys-*),
    /// persistence (appendonly yes with appendfsync everysec or always), server version (>= 6.0
    /// for SET ... KEEPTTL in the scripts), cluster mode (a redis:// URL on a Cluster node or a
    /// redis-cluster:// URL on a standalone server), scripts (SCRIPT LOAD / EVALSHA, and a read
    /// through the store's own scripts), on every primary of a Cluster. Postgres: server
    /// version, the record table, its format (the table comment the migration sets), the primary
    /// key, the expiry index, and a read through the store's own statements.
    ///
    /// Exit code 1 when a check fails (warnings alone exit 0), 3 when the store is unreachable.
    Doctor(DoctorArgs),
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
    /// Key sources in the consumer's order (repeatable; replaces --key-header and
    /// --message-id-fallback): `header:NAME`, `kafka-key`, `message-id`, `correlation-id` or
    /// `json:/pointer`.
    #[arg(long = "key-source", value_parser = parse_key_source,
          conflicts_with_all = ["key_headers", "message_id_fallback"])]
    pub key_sources: Vec<idemq::KeySource>,
    /// The consumer's fingerprint rule: `whole` (default), `key-only`, `pointers:/a,/b` (only
    /// these JSON fields) or `exclude:/a,/b` (the JSON payload without these fields).
    #[arg(long, value_parser = parse_fingerprint, default_value = "whole")]
    pub fingerprint: idemq::FingerprintRule,
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
    /// Kafka: a librdkafka client setting KEY=VALUE for the replay's consumer and producer
    /// (repeatable), e.g. -X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512.
    /// Offset settings the replay owns (enable.auto.commit, enable.auto.offset.store,
    /// auto.offset.reset) are ignored with a warning; an unknown setting exits 2.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub kafka_settings: Vec<(String, String)>,
}

/// Parses `-X key=value`.
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `idemq doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Store URL, as the consumers use it: redis://…, rediss://…, redis-cluster://…,
    /// postgres://…[?idemq_table=schema.name].
    #[arg(long, env = "IDEMQ_STORE")]
    pub store: String,
}

/// `idemq key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Show a record: state, token, attempt, fingerprint, lease or retention left, outcome.
    Get(GetArgs),
    /// Delete a record (data-deletion request, or to force a re-run). Refuses (exit 1, error
    /// `refused`) an in-progress record whose lease is live unless --force.
    Forget(ForgetArgs),
}

/// `idemq keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List records of a scope (SCAN-based on Redis: never blocks the store).
    ///
    /// When more records remain, prints a cursor (`next_cursor` in JSON, the last line in text);
    /// pass it as --cursor to continue. Records added or removed meanwhile may or may not be seen
    /// (on Redis, as with SCAN, a listing spanning a keyspace resize may also repeat or miss one).
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
    /// Continue a listing where an earlier one stopped: the `next_cursor` it printed.
    #[arg(long)]
    pub cursor: Option<String>,
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

/// Parses a `--key-source` value.
fn parse_key_source(spec: &str) -> Result<idemq::KeySource, String> {
    use idemq::KeySource;
    match spec.split_once(':') {
        Some(("header", name)) if !name.is_empty() => Ok(KeySource::header(name)),
        Some(("json", pointer)) if pointer.starts_with('/') => Ok(KeySource::json_pointer(pointer)),
        None if spec == "kafka-key" => Ok(KeySource::KafkaKey),
        None if spec == "message-id" => Ok(KeySource::MessageId),
        None if spec == "correlation-id" => Ok(KeySource::CorrelationId),
        _ => Err(format!(
            "{spec:?}: expected header:NAME, kafka-key, message-id, correlation-id or json:/pointer"
        )),
    }
}

/// Parses a `--fingerprint` value.
fn parse_fingerprint(spec: &str) -> Result<idemq::FingerprintRule, String> {
    use idemq::FingerprintRule;
    let pointers = |list: &str| -> Result<Vec<String>, String> {
        let all: Vec<String> = list.split(',').map(str::to_owned).collect();
        match all.iter().find(|p| !p.starts_with('/')) {
            Some(bad) => Err(format!("{bad:?}: a JSON pointer starts with '/'")),
            None => Ok(all),
        }
    };
    match spec.split_once(':') {
        None if spec == "whole" => Ok(FingerprintRule::whole_payload()),
        None if spec == "key-only" => Ok(FingerprintRule::key_only()),
        Some(("pointers", list)) => Ok(FingerprintRule::json_pointers(pointers(list)?)),
        Some(("exclude", list)) => Ok(FingerprintRule::exclude_fields(pointers(list)?)),
        _ => Err(format!(
            "{spec:?}: expected whole, key-only, pointers:/a,/b or exclude:/a,/b"
        )),
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn key_sources_and_fingerprint_rules_parse_and_bad_ones_are_refused() {
        use idemq::KeySource;
        assert!(matches!(
            parse_key_source("kafka-key"),
            Ok(KeySource::KafkaKey)
        ));
        assert!(matches!(
            parse_key_source("correlation-id"),
            Ok(KeySource::CorrelationId)
        ));
        assert!(matches!(
            parse_key_source("message-id"),
            Ok(KeySource::MessageId)
        ));
        assert!(
            matches!(parse_key_source("json:/order/id"), Ok(KeySource::JsonPointer(p)) if p == "/order/id")
        );
        assert!(
            matches!(parse_key_source("header:X-Key"), Ok(KeySource::Header(h)) if h == "X-Key")
        );
        for bad in ["json:id", "header:", "kafka", "key"] {
            assert!(parse_key_source(bad).is_err(), "{bad}");
        }
        assert!(parse_fingerprint("whole").is_ok());
        assert!(parse_fingerprint("key-only").is_ok());
        assert!(parse_fingerprint("exclude:/sent_at,/trace").is_ok());
        assert!(parse_fingerprint("pointers:/id").is_ok());
        assert!(parse_fingerprint("exclude:sent_at").is_err());
        assert!(parse_fingerprint("payload").is_err());
    }
}
