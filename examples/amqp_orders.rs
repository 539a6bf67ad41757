//! An order consumer on RabbitMQ that charges each order once, however often it is delivered.
//!
//! ```text
//! cargo run --features amqp --example amqp_orders -- \
//!     --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --queue orders \
//!     --dead-letter-exchange orders.dlx --store memory --handler-ms 20 \
//!     --effects /tmp/effects.jsonl --exit-when-idle 5
//! ```
//!
//! Run several copies on one queue with a shared store (`--store redis://127.0.0.1:6379`): together
//! they run each key's handler once. Every handler execution appends one JSON line to `--effects`
//! (`{"key":..,"queue":..,"delivery_tag":..,"redelivered":..,"pid":..}`), so duplicates are easy to
//! count. Messages need an `Idempotency-Key` header (or a `message_id`, which is used as fallback).
//!
//! With `--dead-letter-exchange X` it declares the exchange `X` (durable, fanout) and the queue
//! `--dead-letter-queue` (default `<queue>.dlq`) bound to it, if they are missing: messages without
//! a key, with a conflicting payload or whose handler failed permanently land there.
//!
//! `--metrics-addr HOST:PORT` serves `/metrics` (Prometheus text), `/healthz` (liveness) and
//! `/readyz` (readiness, 200 or 503 with the health report as JSON) there; port 0 picks a free
//! port, printed on stderr as `amqp_orders: serving http://ADDR`.
//!
//! `--publish N [--copies C]` instead publishes N orders, each C times (default 2), and exits: a
//! quick way to feed the consumers above.
//!
//! `--transactional` (feature `postgres`, with `--store postgres://…`) runs the handler in the
//! Postgres transaction that claimed the key (`TransactionalEngine`): every handler execution
//! inserts one row (key, pid, at) into `--effects-table` (default `order_effects`, created if
//! missing) inside that transaction, so the row, the claim and the outcome commit together —
//! exactly one row per key however the consumers crash. The effects file, if given, is still
//! written (outside the transaction, so at-least-once).

use idemq::amqp::{AmqpConsumer, Topology};
use idemq::{CancellationToken, EngineConfig, HandlerContext, HandlerError, KeySource, Source};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An idempotent order consumer on RabbitMQ (or, with `--publish`, a feeder for one).
#[derive(clap::Parser)]
struct Args {
    /// AMQP URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Queue to consume (declared durable if missing).
    #[arg(long, default_value = "orders")]
    queue: String,
    /// Exchange dead-lettered messages are published to. Declared (durable, fanout) if missing,
    /// with `--dead-letter-queue` bound to it.
    #[arg(long, value_name = "NAME")]
    dead_letter_exchange: Option<String>,
    /// Queue bound to the dead-letter exchange (default: `<queue>.dlq`).
    #[arg(long, value_name = "NAME", requires = "dead_letter_exchange")]
    dead_letter_queue: Option<String>,
    /// Store: `memory`, `redis://…`, `redis-cluster://…` or `postgres://…`.
    #[arg(long, default_value = "memory")]
    store: String,
    /// Milliseconds each handler run sleeps (simulated work).
    #[arg(long, default_value_t = 0)]
    handler_ms: u64,
    /// File that gets one JSON line per handler execution.
    #[arg(long)]
    effects: Option<String>,
    /// Exit after this many seconds without any change in the counts.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<u64>,
    /// `basic.qos` prefetch count.
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// Deliveries processed at the same time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Publish this many orders (each `--copies` times) and exit instead of consuming.
    #[arg(long, value_name = "N")]
    publish: Option<u64>,
    /// Copies of each order published by `--publish`.
    #[arg(long, default_value_t = 2)]
    copies: u64,
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
    /// Serve `/metrics`, `/healthz` and `/readyz` over HTTP on this address (port 0: any free).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

/// `--publish` mode: declares the queue durable if missing, so the orders are not dropped as
/// unroutable. A queue that exists with other arguments is used as it is (the durable declare
/// fails with PRECONDITION_FAILED; a passive declare then checks it exists). The consumer itself
/// declares through `AmqpConsumerBuilder::declare`.
async fn ensure_queue(url: &str, queue: &str) -> Result<(), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let declared = conn
        .create_channel()
        .await?
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await;
    if declared.is_err() {
        // That failure closed its channel; check existence on a fresh one.
        conn.create_channel()
            .await?
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await?;
    }
    // Best effort: a channel closed by the broker above may still be closing.
    let _ = conn.close(200, "declared".into()).await;
    Ok(())
}

/// Publishes `n` orders, each `copies` times, with publisher confirms.
async fn publish(
    url: &str,
    queue: &str,
    n: u64,
    copies: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::AMQPValue;
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for copy in 0..copies {
        for i in 0..n {
            let mut h = FieldTable::default();
            h.insert(
                "Idempotency-Key".into(),
                AMQPValue::LongString(format!("order-{i}").into()),
            );
            let body = serde_json::json!({ "order": i, "amount": i % 97 + 1 }).to_string();
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                lapin::BasicProperties::default().with_headers(h),
            )
            .await?;
        }
        ch.wait_for_confirms().await?;
        eprintln!("published copy {} of {n} orders", copy + 1);
    }
    conn.close(200, "published".into()).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run().await {
        eprintln!("amqp_orders: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    if let Some(n) = args.publish {
        ensure_queue(&args.amqp_url, &args.queue).await?;
        return publish(&args.amqp_url, &args.queue, n, args.copies).await;
    }
    // Installed before the consumer exists, so no metric it emits is missed.
    let prometheus = match &args.metrics_addr {
        Some(_) => Some(http::install_prometheus()?),
        None => None,
    };
    let effects = match &args.effects {
        Some(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))),
        None => None,
    };
    let handler_ms = args.handler_ms;
    let after_effect_ms = args.after_effect_ms;
    let handler = move |ctx: HandlerContext| {
        let effects = effects.clone();
        async move {
            let order: serde_json::Value =
                serde_json::from_slice(&ctx.message.payload).unwrap_or(serde_json::Value::Null);
            if handler_ms > 0 {
                tokio::time::sleep(Duration::from_millis(handler_ms)).await;
            }
            let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            let (queue, tag) = match &ctx.message.source {
                Source::Amqp {
                    queue,
                    delivery_tag,
                    ..
                } => (queue.clone(), *delivery_tag),
                _ => (String::new(), 0),
            };
            if let Some(file) = effects {
                // One write per line with O_APPEND, so several processes can share the file.
                let line = serde_json::json!({
                    "key": key, "queue": queue, "delivery_tag": tag,
                    "redelivered": ctx.amqp().is_some_and(|a| a.redelivered), "pid": std::process::id(),
                });
                let mut f = file
                    .lock()
                    .map_err(|_| HandlerError::retriable("effects lock"))?;
                f.write_all(format!("{line}\n").as_bytes())
                    .map_err(HandlerError::retriable)?;
            }
            if after_effect_ms > 0 {
                // Widens the window between the effect and the outcome write (chaos runs).
                tokio::time::sleep(Duration::from_millis(after_effect_ms)).await;
            }
            Ok::<_, HandlerError>(serde_json::json!({ "charged": order.get("amount"), "key": key }))
        }
    };
    let builder = AmqpConsumer::builder()
        .url(&args.amqp_url)
        .queue(&args.queue)
        .prefetch(args.prefetch)
        .concurrency(args.concurrency)
        .connection_name(format!("amqp_orders-{}", std::process::id()));
    let mut config = EngineConfig::new(args.queue.clone());
    if let Some(ms) = args.lease_ms {
        // A short lease lets a killed consumer's claims be taken over quickly (chaos runs).
        config.lease = Duration::from_millis(ms);
    }
    // The message_id is the key when no Idempotency-Key header is present.
    config.key.sources.push(KeySource::MessageId);
    let mut builder = if args.transactional {
        builder.processor(
            transactional::processor(&args.store, &args.effects_table, config, handler)
                .await
                .map_err(|e| e as Box<dyn std::error::Error>)?,
        )
    } else {
        builder
            .store(idemq::store::connect(&args.store).await?)
            .engine_config(config)
            .handler(handler)
    };
    // The consumer declares what is missing (the queue; the dead-letter exchange and a queue
    // bound to it), so the first dead letter has somewhere to go.
    let mut topology = Topology::queue();
    if let Some(dlx) = &args.dead_letter_exchange {
        let dlq = args
            .dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", args.queue));
        topology = topology.dead_letter_queue(dlq);
        builder = builder.dead_letter(dlx.as_str());
    }
    builder = builder.declare(topology);
    let consumer = builder.build()?;
    if let (Some(addr), Some(prometheus)) = (&args.metrics_addr, prometheus) {
        let bound = http::serve(addr, prometheus, consumer.health()).await?;
        eprintln!("amqp_orders: serving http://{bound} (/metrics, /healthz, /readyz)");
    }
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));

    let ctrl_c = {
        let stop = stop.clone();
        async move {
            // SIGINT or SIGTERM (Kubernetes, systemd): the same graceful stop.
            if idemq::signal::shutdown_signal().await.is_ok() {
                stop.cancel();
            } else {
                std::future::pending::<()>().await;
            }
        }
    };
    let idle = {
        let stop = stop.clone();
        let limit = args.exit_when_idle;
        async move {
            let Some(secs) = limit else {
                return std::future::pending().await;
            };
            let (mut last, mut since) = (stats.snapshot(), Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = stats.snapshot();
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= Duration::from_secs(secs) {
                    eprintln!("amqp_orders: idle for {secs} s, stopping");
                    stop.cancel();
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = idle => {}
        _ = stop.cancelled() => {}
    }
    let totals = running.await??;
    println!("{}", serde_json::to_string(&totals)?);
    Ok(())
}

#[path = "shared/transactional.rs"]
mod transactional;

#[path = "shared/http.rs"]
mod http;
