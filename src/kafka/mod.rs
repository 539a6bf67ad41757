//! Kafka: an idempotent consumer over rdkafka's `StreamConsumer` (feature `kafka`).
//!
//! [`KafkaConsumer`] subscribes to topics in a consumer group and, for every record, asks the
//! [engine](crate::engine) whether to run the handler. It commits an offset only once every earlier
//! record of its partition is *finished*: the outcome is durable, the key was already completed
//! (replay), or the record was dead-lettered with the broker's confirmation.
//!
//! | engine decision | what the consumer does |
//! |---|---|
//! | processed, replayed, superseded, unkeyed | mark finished; committed with the next batch |
//! | dead-letter | publish to the dead-letter topic with the original key, payload and headers plus `x-idemq-reason`, `x-idemq-error`, `x-idemq-source-topic/partition/offset`; wait for the confirmation; mark finished. Without a dead-letter topic: log an error, do not commit past it, try again later |
//! | retry (handler failed, key busy elsewhere) | try the same record again after the delay; other partitions go on |
//! | retry (store unavailable) | pause the partition, keep polling (the consumer stays in its group), try again; resume once the store answers |
//! | abandoned (shutdown, revocation) | leave it uncommitted; it is redelivered |
//!
//! Records of one partition are processed one at a time by default (order kept); raise
//! [`partition_concurrency`](KafkaConsumerBuilder::partition_concurrency) for more. On a revocation
//! the consumer stops dispatching the revoked partitions, waits (bounded) for their in-flight
//! records, commits what finished and lets them go. Use Tokio's multi-threaded runtime.
//!
//! The consumer has the same shape as `idemq::amqp::AmqpConsumer`:
//! `builder()`, `build() -> Result`, [`stats`](KafkaConsumer::stats) returning the shared
//! [`StatsHandle`], [`health`](KafkaConsumer::health) returning the shared
//! [`HealthHandle`](crate::health::HealthHandle), [`run`](KafkaConsumer::run) returning [`ConsumerStats`], and
//! [`run_until_signal`](KafkaConsumer::run_until_signal).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idemq::kafka::KafkaConsumer;
//! use idemq::store::MemoryStore;
//! use idemq::{HandlerContext, HandlerError};
//! use std::sync::Arc;
//!
//! let consumer = KafkaConsumer::builder()
//!     .bootstrap_servers("localhost:9092")
//!     .group_id("payments")
//!     .topic("orders")
//!     .dead_letter_topic("orders.dlq")
//!     .store(Arc::new(MemoryStore::new()))
//!     .handler(|ctx: HandlerContext| async move {
//!         // charge the card once per Idempotency-Key
//!         Ok::<_, HandlerError>(ctx.message.payload.len())
//!     })
//!     .build()?;
//! // Until SIGINT or SIGTERM (or a fatal error); `run(token)` stops on a token instead.
//! let stats = consumer.run_until_signal().await?;
//! println!("handler runs: {}, replays: {}", stats.processed, stats.replayed);
//! # Ok(()) }
//! ```

mod config;
mod consumer;
mod convert;
mod dead_letter;
mod error;
mod health;
mod hooks;
mod partitions;
mod properties;
mod replay;
mod summary;
mod tracker;
mod worker;

pub use crate::stats::{ConsumerStats, StatsHandle};
pub use config::KafkaConsumerBuilder;
#[allow(deprecated)]
pub use consumer::IdempotentConsumer;
pub use consumer::{KafkaConsumer, FATAL_AFTER};
pub use error::{DeadLetterError, KafkaConsumerError, KafkaReplayError};
pub use hooks::KafkaHooks;
pub use properties::KafkaClient;
pub use replay::KafkaReplay;
#[allow(deprecated)]
pub use summary::ConsumerSummary;

use partitions::Shared;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;
use std::sync::Arc;
use tracing::warn;

/// librdkafka callbacks: rebalances and commit results, then the user's [`KafkaHooks`].
pub(crate) struct IdemqContext {
    shared: Arc<Shared>,
    hooks: Option<Arc<dyn KafkaHooks>>,
}

impl ClientContext for IdemqContext {
    fn stats(&self, statistics: Statistics) {
        match &self.hooks {
            Some(hooks) => hooks.statistics(statistics),
            None => tracing::debug!(?statistics, "librdkafka statistics"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(%error, reason, "librdkafka client error");
        if let Some(hooks) = &self.hooks {
            hooks.error(&error, reason);
        }
    }
}

impl ConsumerContext for IdemqContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.on_revoke(base, tpl);
        }
        if let Some(hooks) = &self.hooks {
            hooks.pre_rebalance(rebalance);
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.on_assign(tpl),
            Rebalance::Error(err) => warn!(%err, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
        if let Some(hooks) = &self.hooks {
            hooks.post_rebalance(rebalance);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        tracing::debug!(?result, ?offsets, "commit result");
        if let Some(hooks) = &self.hooks {
            hooks.commit(&result, offsets);
        }
        // The broker reports failures per partition as well as for the whole request.
        match result {
            Err(err) => self.shared.commit_failed(offsets, &err),
            Ok(()) => {
                let mut failed = TopicPartitionList::new();
                let mut first = None;
                for el in offsets.elements() {
                    if let Err(err) = el.error() {
                        if failed
                            .add_partition_offset(el.topic(), el.partition(), el.offset())
                            .is_ok()
                        {
                            first.get_or_insert(err);
                        }
                    }
                }
                if let Some(err) = first {
                    self.shared.commit_failed(&failed, &err);
                }
            }
        }
    }
}
