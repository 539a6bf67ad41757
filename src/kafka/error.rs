//! Errors of the Kafka consumer.

use crate::engine::ConfigError;
use rdkafka::error::KafkaError;

/// Building or running an [`IdempotentConsumer`](super::IdempotentConsumer) failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConsumerError {
    /// A required builder setting is missing or contradicts another.
    #[error("invalid kafka consumer configuration: {0}")]
    Config(String),
    /// The engine configuration is invalid.
    #[error(transparent)]
    Engine(#[from] ConfigError),
    /// librdkafka rejected the client configuration or the subscription.
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
}

/// Publishing to the dead-letter topic failed; the original is not committed and the publish is
/// retried.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The broker rejected the record or did not confirm it in time.
    #[error("dead-letter publish to {topic} failed: {source}")]
    Publish {
        /// Dead-letter topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker did not confirm the record in time.
    #[error("dead-letter publish to {topic} was not confirmed within {after:?}")]
    Timeout {
        /// Dead-letter topic.
        topic: String,
        /// The configured bound.
        after: std::time::Duration,
    },
}
