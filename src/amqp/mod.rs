//! Idempotent RabbitMQ (AMQP 0-9-1) queue consumer over [lapin].
//!
//! [`AmqpConsumer`] takes deliveries from one queue with a bounded prefetch, runs each through an
//! idempotency [`Processor`](crate::Processor) (normally an [`Engine`](crate::Engine) built from
//! your handler) and settles the delivery as the returned
//! [`Disposition`](crate::Disposition) says:
//!
//! | disposition | broker action |
//! |---|---|
//! | `Processed`, `Replayed`, `Superseded`, `Unkeyed` | publish the reply if `reply_to` is set (confirmed), then `basic.ack` |
//! | `DeadLetter` | publish to the dead-letter exchange with `x-idemq-*` headers, wait for the confirm, then ack; without one, `basic.reject(requeue=false)` |
//! | `Retry` (handler failed retriably, key busy elsewhere) | `basic.nack(requeue=true)` after the suggested delay |
//! | `Retry` (store unavailable) | pause intake, keep the delivery, try it again after the delay; ack nothing |
//! | `Abandoned` (shutdown) | `basic.nack(requeue=true)` |
//!
//! Acks are coalesced: a run of deliveries whose outcomes are durable is settled by one
//! `basic.ack(multiple = true)`, never passing a delivery that is still being processed (see
//! [`AmqpConsumerBuilder::ack_linger`]).
//!
//! After a connection loss the consumer reconnects with exponential backoff and jitter; the
//! deliveries that were not acknowledged come back flagged `redelivered` and are deduplicated by the
//! store. A request with `reply_to` gets the outcome as its reply; a replayed request gets the
//! **stored** reply again with header `Idempotent-Replay: true` and the same correlation id.
//!
//! The consumer has the same shape as the Kafka one: `builder()`, `build() -> Result`,
//! [`stats`](AmqpConsumer::stats) returning the shared [`StatsHandle`],
//! [`health`](AmqpConsumer::health) returning the shared
//! [`HealthHandle`](crate::health::HealthHandle),
//! [`run`](AmqpConsumer::run) returning [`ConsumerStats`], and
//! [`run_until_signal`](AmqpConsumer::run_until_signal).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idemq::amqp::AmqpConsumer;
//! use idemq::{store, CancellationToken, HandlerContext, HandlerError};
//!
//! let consumer = AmqpConsumer::builder()
//!     .url("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .queue("orders")
//!     .store(store::connect("memory").await?)
//!     .prefetch(64)
//!     .concurrency(16)
//!     .dead_letter("orders.dlx")
//!     .handler(|ctx: HandlerContext| async move {
//!         // charge the order exactly once per Idempotency-Key
//!         Ok::<_, HandlerError>(serde_json::json!({ "bytes": ctx.message.payload.len() }))
//!     })
//!     .build()?;
//! let stats = consumer.stats();
//! let shutdown = CancellationToken::new();
//! let run = tokio::spawn(consumer.run(shutdown.clone()));
//! // ... later (or `consumer.run_until_signal()` to stop on SIGINT/SIGTERM):
//! shutdown.cancel();
//! let totals = run.await??;
//! println!("processed {} replayed {}", totals.processed, stats.snapshot().replayed);
//! # Ok(()) }
//! ```

mod acks;
mod config;
mod connection;
mod consumer;
mod convert;
mod dead_letter;
mod delivery;
mod error;
mod gate;
mod health;
mod publish;
mod replay;
mod reply;
mod stats;
mod topology;

pub use crate::stats::{ConsumerStats, StatsHandle};
pub use config::{AmqpConfig, AmqpConsumerBuilder, DeadLetterTarget};
pub use consumer::AmqpConsumer;
pub use dead_letter::header_text;
pub use error::AmqpError;
pub use replay::AmqpReplay;
pub use reply::OUTCOME_STATUS;
pub use topology::Topology;
