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
//! `--publish N [--copies C]` instead publishes N orders, each C times (default 2), and exits: a
//! quick way to feed the consumers above.
//!
//! `--transactional` (feature `postgres`, with `--store postgres://…`) runs the handler in the
//! Postgres transaction that claimed the key (`TransactionalEngine`): every handler execution
//! inserts one row (key, pid, at) into `--effects-table` (default `order_effects`, created if
//! missing) inside that transaction, so the row, the claim and the outcome commit together —
//! exactly one row per key however the consumers crash. The effects file, if given, is still
//! written (outside the transaction, so at-least-once).

use idemq::amqp::AmqpConsumer;
use idemq::{CancellationToken, EngineConfig, HandlerContext, HandlerError, Source};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    amqp_url: String,
    queue: String,
    dead_letter_exchange: Option<String>,
    store: String,
    handler_ms: u64,
    effects: Option<String>,
    exit_when_idle: Option<u64>,
    prefetch: u16,
    concurrency: usize,
    publish: Option<u64>,
    copies: u64,
    transactional: bool,
    effects_table: String,
    lease_ms: Option<u64>,
    after_effect_ms: u64,
}

const USAGE: &str = "usage: amqp_orders [--amqp-url URL] [--queue NAME] [--dead-letter-exchange NAME] \
[--store memory|redis://..|postgres://..] [--handler-ms N] [--effects FILE] [--exit-when-idle SECS] \
[--prefetch N] [--concurrency N] [--lease-ms N] [--after-effect-ms N] [--transactional [--effects-table NAME]] | --publish N [--copies C]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        queue: "orders".into(),
        dead_letter_exchange: None,
        store: "memory".into(),
        handler_ms: 0,
        effects: None,
        exit_when_idle: None,
        prefetch: 32,
        concurrency: 16,
        publish: None,
        copies: 2,
        transactional: false,
        effects_table: "order_effects".into(),
        lease_ms: None,
        after_effect_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        if flag == "--transactional" {
            a.transactional = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--amqp-url" => a.amqp_url = value,
            "--queue" => a.queue = value,
            "--dead-letter-exchange" => a.dead_letter_exchange = Some(value),
            "--store" => a.store = value,
            "--handler-ms" => a.handler_ms = num(&value)?,
            "--effects" => a.effects = Some(value),
            "--exit-when-idle" => a.exit_when_idle = Some(num(&value)?),
            "--prefetch" => {
                a.prefetch = u16::try_from(num(&value)?).map_err(|e| format!("{flag}: {e}"))?
            }
            "--concurrency" => a.concurrency = num(&value)? as usize,
            "--publish" => a.publish = Some(num(&value)?),
            "--copies" => a.copies = num(&value)?,
            "--effects-table" => a.effects_table = value,
            "--lease-ms" => a.lease_ms = Some(num(&value)?),
            "--after-effect-ms" => a.after_effect_ms = num(&value)?,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// Declares the queue durable if missing. A queue that exists with other arguments is used as it
/// is (the durable declare fails with PRECONDITION_FAILED; a passive declare then checks it exists).
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
    let args = parse()?;
    ensure_queue(&args.amqp_url, &args.queue).await?;
    if let Some(n) = args.publish {
        return publish(&args.amqp_url, &args.queue, n, args.copies).await;
    }
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
                    "redelivered": ctx.message.redelivered, "pid": std::process::id(),
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
    let mut builder = if args.transactional {
        config.key.use_message_id = true;
        builder.processor(
            transactional::processor(&args.store, &args.effects_table, config, handler)
                .await
                .map_err(|e| e as Box<dyn std::error::Error>)?,
        )
    } else {
        builder
            .store(idemq::store::connect(&args.store).await?)
            .engine_config(config)
            .message_id_fallback(true)
            .handler(handler)
    };
    if let Some(dlx) = &args.dead_letter_exchange {
        builder = builder.dead_letter_exchange(dlx, None);
    }
    let consumer = builder.build()?;
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
