//! The smallest useful idempotent Kafka consumer: copy it and replace the handler (`--help`).
//! Runs the handler once per `Idempotency-Key` header; no key, bad JSON or a reused key with
//! another payload go to `<topic>.dlq`. JSON lines on stdout, logs on stderr; SIGTERM commits.
use clap::Parser;
use idemq::kafka::KafkaConsumer;
use idemq::prelude::*;
use std::io::stderr;
#[derive(Parser)]
struct Args {
    /// `memory`, `redis://127.0.0.1:6379` (feature `redis`) or `postgres://…` (feature `postgres`).
    #[arg(long, env = "IDEMQ_STORE", default_value = "memory")]
    store: String,
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "localhost:9092")]
    bootstrap: String,
    #[arg(long, env = "KAFKA_TOPIC", default_value = "orders")]
    topic: String,
    /// Consumer group; also the scope the keys are claimed in.
    #[arg(long, env = "KAFKA_GROUP", default_value = "payments")]
    group: String,
}
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().with_writer(stderr).init();
    let args = Args::parse();
    let consumer = KafkaConsumer::builder()
        .bootstrap_servers(&args.bootstrap)
        .group_id(&args.group)
        .topic(&args.topic)
        .dead_letter(format!("{}.dlq", args.topic))
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
