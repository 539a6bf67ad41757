//! The smallest useful idempotent RabbitMQ consumer: copy it and replace the handler.
//! `cargo run --features amqp --example minimal_amqp -- --queue orders` (`--help` for the rest).
//!
//! The handler runs once per `Idempotency-Key` header. Messages without a key, with a payload
//! that is not JSON, or reusing a key with another payload go to the exchange `<queue>.dlx` and
//! the queue `<queue>.dlq` (declared at start when missing, like the queue). One JSON line per
//! handled message goes to stdout, logs to stderr. SIGINT or SIGTERM stops it gracefully.
use clap::Parser;
use idemq::amqp::{AmqpConsumer, Topology};
use idemq::prelude::*;

#[derive(Parser)]
struct Args {
    /// `memory`, `redis://127.0.0.1:6379` (feature `redis`) or `postgres://…` (feature `postgres`).
    #[arg(long, env = "IDEMQ_STORE", default_value = "memory")]
    store: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Queue consumed; also the scope the keys are claimed in.
    #[arg(long, env = "AMQP_QUEUE", default_value = "orders")]
    queue: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let consumer = AmqpConsumer::builder()
        .url(&args.amqp_url)
        .queue(&args.queue)
        .dead_letter(format!("{}.dlx", args.queue))
        .declare(Topology::queue().dead_letter_queue(format!("{}.dlq", args.queue)))
        .store(idemq::store::connect(&args.store).await?)
        .handler(|ctx: HandlerContext| async move {
            let order: serde_json::Value = ctx.json()?; // not JSON: dead-lettered
                                                        // The side effect (charge the card, write the row) goes here.
            println!("{}", serde_json::json!({ "key": ctx.key, "order": order }));
            Ok(serde_json::json!({ "charged": order["amount"] }))
        })
        .build()?;
    consumer.run_until_signal().await?;
    Ok(())
}
