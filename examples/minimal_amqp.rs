//! The smallest useful idempotent RabbitMQ consumer: copy it and replace the handler.
//!
//! ```text
//! cargo run --features amqp --example minimal_amqp -- --store memory \
//!     --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --queue orders
//! ```
//!
//! Producers put the idempotency key in the `Idempotency-Key` header. The handler runs once per key;
//! messages without a key, with a payload that is not JSON, or reusing a key with another payload go
//! to the exchange `<queue>.dlx`, bound to the queue `<queue>.dlq` (both declared at start, like the
//! queue). One JSON line per handled message goes to stdout, logs to stderr. Ctrl-C or SIGTERM
//! stops it gracefully (in-flight messages finish and are acked).
use clap::Parser;
use idemq::{amqp::AmqpConsumer, CancellationToken, HandlerContext, HandlerError};
use lapin::{options::*, types::FieldTable, Connection, ExchangeKind};

const LOCAL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Parser)]
struct Args {
    /// `memory`, `redis://127.0.0.1:6379` (feature `redis`) or `postgres://…` (feature `postgres`).
    #[arg(long, env = "IDEMQ_STORE", default_value = "memory")]
    store: String,
    #[arg(long = "amqp-url", env = "AMQP_URL", default_value = LOCAL)]
    url: String,
    /// Queue consumed; also the scope the keys are claimed in.
    #[arg(long, env = "AMQP_QUEUE", default_value = "orders")]
    queue: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let Args { store, url, queue } = Args::parse();
    let (dlx, dlq) = (format!("{queue}.dlx"), format!("{queue}.dlq"));
    declare_topology(&url, &queue, &dlx, &dlq).await?;
    let consumer = AmqpConsumer::builder(&url, &queue)
        .dead_letter_exchange(&dlx, None)
        .store(idemq::store::connect(&store).await?)
        .handler(|ctx: HandlerContext| async move {
            let order: serde_json::Value =
                serde_json::from_slice(&ctx.message.payload).map_err(HandlerError::permanent)?;
            let key = ctx.key.as_ref().map(|k| k.to_string());
            // The side effect (charge the card, write the row) goes here.
            println!("{}", serde_json::json!({ "key": key, "order": order }));
            Ok::<_, HandlerError>(serde_json::json!({ "charged": order["amount"] }))
        })
        .build()?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        // SIGINT or SIGTERM; without a signal handler, keep running.
        if idemq::signal::shutdown_signal().await.is_ok() {
            on_signal.cancel();
        }
    });
    consumer.run(stop).await?;
    Ok(())
}

/// The queue, a fanout dead-letter exchange and the queue behind it, all durable (no-ops when they
/// already exist with these settings).
async fn declare_topology(url: &str, queue: &str, dlx: &str, dlq: &str) -> lapin::Result<()> {
    let ch = Connection::connect(url, Default::default())
        .await?
        .create_channel()
        .await?;
    let (durable, none) = (QueueDeclareOptions::durable(), FieldTable::default);
    ch.queue_declare(queue.into(), durable, none()).await?;
    ch.queue_declare(dlq.into(), durable, none()).await?;
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(dlx.into(), ExchangeKind::Fanout, durable_exchange, none())
        .await?;
    // Fanout: every dead letter reaches the DLQ whatever its routing key.
    ch.queue_bind(
        dlq.into(),
        dlx.into(),
        "".into(),
        Default::default(),
        none(),
    )
    .await
}
