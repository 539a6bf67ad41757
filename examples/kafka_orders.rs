//! A real idempotent consumer for trying idemq against any Kafka broker.
//!
//! ```text
//! cargo run --example kafka_orders -- --bootstrap localhost:9092 --topic orders --group payments \
//!     --store redis://127.0.0.1:6379 --dead-letter-topic orders.dlq --handler-ms 5 \
//!     --effects /tmp/effects.jsonl --exit-when-idle 10
//! ```
//!
//! Several copies in one group together run each key's handler once; `--effects` appends one JSON
//! line per handler execution (`{"key","topic","partition","offset","pid"}`) so that can be checked
//! afterwards. `--exit-when-idle N` exits after N seconds without a record and with nothing in
//! progress, also when the process holds no partition then (before its first partition it waits at
//! least 30 s). Ctrl-C or SIGTERM stops gracefully (in-flight messages finish, offsets are flushed).
//!
//! `--metrics-addr HOST:PORT` serves `/metrics` (Prometheus text), `/healthz` (liveness) and
//! `/readyz` (readiness, 200 or 503 with the health report as JSON) there; port 0 picks a free
//! port, printed on stderr as `kafka_orders: serving http://ADDR`.
//!
//! `--static-member ID` sets `group.instance.id` (static membership: a replacement started with the
//! same id gets the partitions back without waiting for the session timeout).
//!
//! `--transactional` (feature `postgres`, with `--store postgres://…`) runs the handler in the
//! Postgres transaction that claimed the key (`TransactionalEngine`): every handler execution
//! inserts one row (key, pid, at) into `--effects-table` (default `order_effects`, created if
//! missing) inside that transaction, so the row, the claim and the outcome commit together —
//! exactly one row per key however the consumers crash. The effects file, if given, is still
//! written (outside the transaction, so at-least-once).

use idemq::kafka::KafkaConsumerBuilder;
use idemq::{CancellationToken, EngineConfig, HandlerContext, HandlerError, Source};
use std::io::Write;
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An idempotent order consumer on Kafka.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "localhost:9092")]
    bootstrap: String,
    /// Topic to consume.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Consumer group id (also the idempotency scope).
    #[arg(long, default_value = "idemq-orders")]
    group: String,
    /// Store: `memory`, `redis://…`, `redis-cluster://…` or `postgres://…`.
    #[arg(long, default_value = "memory")]
    store: String,
    /// Topic that dead-lettered records are produced to.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Milliseconds each handler run sleeps (simulated work).
    #[arg(long, default_value_t = 0)]
    handler_ms: u64,
    /// File that gets one JSON line per handler execution.
    #[arg(long)]
    effects: Option<String>,
    /// Exit after this many seconds without a record and with nothing in progress.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<u64>,
    /// Run the handler in the Postgres transaction that claimed the key (needs `--store postgres://…`).
    #[arg(long)]
    transactional: bool,
    /// Table of effect rows written by `--transactional` handlers.
    #[arg(long, default_value = "order_effects")]
    effects_table: String,
    /// Claim lease in milliseconds (default: the engine's).
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Milliseconds each handler waits after its effect, before the outcome is written.
    #[arg(long, default_value_t = 0)]
    after_effect_ms: u64,
    /// Static group membership: sets `group.instance.id`.
    #[arg(long, value_name = "ID")]
    static_member: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on this address (port 0: any free).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    if let Err(err) = run().await {
        eprintln!("kafka_orders: {err}");
        std::process::exit(2);
    }
}

async fn run() -> BoxResult<()> {
    let args = <Args as clap::Parser>::parse();
    // Installed before the consumer exists, so no metric it emits is missed.
    let prometheus = match &args.metrics_addr {
        Some(_) => Some(http::install_prometheus()?),
        None => None,
    };
    let effects = args.effects.clone();
    let handler_ms = args.handler_ms;
    let after_effect_ms = args.after_effect_ms;
    let pid = std::process::id();
    let handler = move |ctx: HandlerContext| {
        let effects = effects.clone();
        async move {
            if handler_ms > 0 {
                tokio::time::sleep(Duration::from_millis(handler_ms)).await;
            }
            let (topic, partition, offset) = match &ctx.message.source {
                Source::Kafka {
                    topic,
                    partition,
                    offset,
                } => (topic.clone(), *partition, *offset),
                _ => (String::new(), -1, -1),
            };
            let key = ctx.key.as_ref().map(|k| k.to_string());
            if let Some(path) = effects {
                let line = serde_json::json!({
                    "key": key, "topic": topic, "partition": partition,
                    "offset": offset, "pid": pid,
                });
                // One write of a whole line in append mode, so several processes can share
                // the file. A failed write fails the attempt, which is then retried.
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(HandlerError::retriable)?;
                f.write_all(format!("{line}\n").as_bytes())
                    .map_err(HandlerError::retriable)?;
            }
            if after_effect_ms > 0 {
                // Widens the window between the effect and the outcome write (chaos runs).
                tokio::time::sleep(Duration::from_millis(after_effect_ms)).await;
            }
            Ok::<_, HandlerError>(serde_json::json!({ "handled_by": pid }))
        }
    };
    let builder = KafkaConsumerBuilder::new()
        .bootstrap_servers(&args.bootstrap)
        .group_id(&args.group)
        .topic(&args.topic)
        // Short enough for brokers (like Tansu) that stall joins with the default.
        .set("session.timeout.ms", "6000");
    let mut config = EngineConfig::new(&args.group);
    if let Some(ms) = args.lease_ms {
        // A short lease lets a killed consumer's claims be taken over quickly (chaos runs).
        config.lease = Duration::from_millis(ms);
    }
    let mut builder = if args.transactional {
        builder.processor(
            transactional::processor(&args.store, &args.effects_table, config, handler).await?,
        )
    } else {
        builder
            .store(idemq::store::connect(&args.store).await?)
            .engine_config(config)
            .handler(handler)
    };
    if let Some(dlq) = &args.dead_letter_topic {
        builder = builder.dead_letter_topic(dlq);
    }
    if let Some(id) = &args.static_member {
        // A replacement started with the same id takes the member's partitions over at once.
        builder = builder.group_instance_id(id);
    }
    let consumer = builder.build()?;
    if let (Some(addr), Some(prometheus)) = (&args.metrics_addr, prometheus) {
        let bound = http::serve(addr, prometheus, consumer.health()).await?;
        eprintln!("kafka_orders: serving http://{bound} (/metrics, /healthz, /readyz)");
    }
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    if let Some(secs) = args.exit_when_idle {
        let (idle_stop, stats) = (stop.clone(), stats.clone());
        tokio::spawn(async move {
            let idle_for = Duration::from_secs(secs);
            // The first group join can take a session timeout or two: allow more before the
            // first partition arrives.
            let first_join = idle_for.max(Duration::from_secs(30));
            let mut ever_assigned = false;
            let mut last = (stats.snapshot().received, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let received = stats.snapshot().received;
                ever_assigned |= stats.assigned_partitions() > 0;
                // Idle: nothing received and nothing in progress for the whole period, whether
                // or not partitions are assigned (a member left without partitions must not
                // keep a script waiting forever).
                let bound = if ever_assigned { idle_for } else { first_join };
                if received != last.0 || stats.in_progress() > 0 {
                    last = (received, Instant::now());
                } else if last.1.elapsed() >= bound {
                    tracing::info!(
                        ?idle_for,
                        partitions = stats.assigned_partitions(),
                        "idle; exiting"
                    );
                    idle_stop.cancel();
                    return;
                }
            }
        });
    }
    println!(
        "consuming {} as group {} (store {}, pid {pid})",
        args.topic, args.group, args.store
    );
    // Stops on SIGINT/SIGTERM, or when the idle watcher above cancels `stop`.
    idemq::signal::cancel_on_signal(stop.clone());
    let summary = consumer.run(stop).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[path = "shared/transactional.rs"]
mod transactional;

#[path = "shared/http.rs"]
mod http;
