//! The smallest useful idempotent RabbitMQ consumer: copy it and replace the handler (`--help`).
//! Runs the handler once per `Idempotency-Key` header; no key, bad JSON or a reused key with
//! another payload go to exchange `<queue>.dlx` / queue `<queue>.dlq` (declared when missing).
//! JSON lines on stdout, logs on stderr; SIGINT or SIGTERM finishes in-flight work and stops.
use clap::Parser;
use idemq::amqp::{AmqpConsumer, Topology};
use idemq::prelude::*;
use std::io::stderr;
const LOCAL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
#[derive(Parser)]
struct Args {
    /// `memory`, `redis://127.0.0.1:6379` (feature `redis`) or `postgres://…` (feature `postgres`).
    #[arg(long, env = "IDEMQ_STORE", default_value = "memory")]
    store: String,
    #[arg(long, env = "AMQP_URL", default_value = LOCAL)]
    amqp_url: String,
    /// Queue consumed; also the scope the keys are claimed in.
    #[arg(long, env = "AMQP_QUEUE", default_value = "orders")]
    queue: String,
}
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().with_writer(stderr).init();
    let args = Args::parse();
    let consumer = AmqpConsumer::builder()
        .url(&args.amqp_url)
        .queue(&args.queue)
        .dead_letter(format!("{}.dlx", args.queue))
        .declare(Topology::queue().dead_letter_queue(format!("{}.dlq", args.queue)))
        .store(idemq::store::connect(&args.store).await?)
        .handler(|ctx: HandlerContext| async move {
            let order: serde_json::Value = ctx.json()?; // not JSON: dead-lettered
            println!("{}", serde_json::json!({ "key": ctx.key, "order": order })); // your effect
            Ok(serde_json::json!({ "charged": order["amount"] }))
        })
        .build()?;
    consumer.run_until_signal().await?;
    Ok(())
}
