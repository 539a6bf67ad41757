//! # idemq — idempotent message consumers
//!
//! idemq sits between a broker (Kafka, RabbitMQ) and your handler. For every message it reads an
//! idempotency key (from a header, the Kafka record key, an AMQP property, a JSON field, …),
//! **claims** the key in a [`Store`] before the handler runs, **stores the handler's outcome**,
//! and acknowledges later copies of a completed key without running the handler again. Broker
//! redeliveries, rebalances, double publishes and dead-letter replays therefore run a handler at
//! most once per key.
//!
//! The pieces, by folder:
//! - [`key`]: where keys come from, validation, the missing-key policy, scopes.
//! - [`fingerprint`]: which parts of a message tell a replay from a conflicting reuse of a key.
//! - [`message`]: the broker-neutral message and its Kafka / AMQP metadata.
//! - [`store`]: the [`Store`] trait and its backends (memory, Redis, Postgres).
//! - [`engine`]: claim → run with lease renewal → settle, returning a [`Disposition`].
//! - [`handler`]: the handler shape, typed JSON input, error classification, tower services.
//! - `transactional` (feature `postgres`): the engine whose handlers write in the claim's
//!   Postgres transaction, for exactly-once effects.
//! - `kafka` / `amqp` (features): consumer wrappers that map dispositions to commits and acks.
//! - [`health`]: a consumer's liveness and readiness (store reachable, partitions or channel,
//!   intake paused and why), the same handle for both brokers.
//! - [`metrics`]: every metric's name, type, unit and labels; `describe()` for your recorder.
//! - [`prelude`]: the common names in one import.
//! - `testing` (feature `testing`): the store conformance suite, for your own [`Store`].
//! - Tracing: every message is processed in an `idemq.process` span, every store call in a child
//!   span; with feature `otel` a message's W3C `traceparent` becomes that span's parent and
//!   dead-letter copies and replies carry it on (`docs/observability.md`). Keys holding personal
//!   data can be logged as hashes ([`key::KeyLogging`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use idemq::{Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message, Source};
//! use idemq::store::MemoryStore;
//! use std::sync::Arc;
//!
//! let engine = Engine::new(Arc::new(MemoryStore::new()), EngineConfig::new("payments"),
//!     |_ctx: HandlerContext| async { Ok::<_, HandlerError>("charged") }).unwrap();
//! let msg = Arc::new(Message::new("{\"amount\":5}", Source::Other("doc".into()))
//!     .with_header("Idempotency-Key", "pay-1"));
//! let stop = tokio_util::sync::CancellationToken::new();
//! let first = engine.process(msg.clone(), &stop).await;
//! let again = engine.process(msg, &stop).await;
//! assert!(matches!(first, Disposition::Processed { .. }));
//! assert!(matches!(again, Disposition::Replayed { .. })); // the handler did not run twice
//! # }
//! ```
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod engine;
pub mod fingerprint;
pub mod handler;
pub mod headers;
pub mod health;
pub mod key;
pub mod message;
pub mod metrics;
pub mod outcome;
pub mod prelude;
pub mod replay;
pub mod stats;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod traces;
#[cfg(feature = "postgres")]
pub mod transactional;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod signal;

pub use engine::{
    Backoff, ConfigError, DeadLetter, DeadLetterReason, Disposition, Engine, EngineConfig,
    HandlerSlot, HandlerSlots, Processor, RetryCause,
};
pub use fingerprint::{Fingerprint, FingerprintRule};
pub use handler::{Handler, HandlerContext, HandlerError, ResultExt};
pub use key::{IdempotencyKey, KeyConfig, KeyError, KeySource, MissingKeyPolicy, Scope};
pub use message::{Header, Message, Source};
pub use outcome::{Outcome, OutcomeStatus};
pub use store::{BoxError, Store, StoreError};
pub use tokio_util::sync::CancellationToken;
