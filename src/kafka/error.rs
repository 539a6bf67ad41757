//! Errors of the Kafka consumer.

use super::properties::KafkaClient;
use crate::engine::ConfigError;
use rdkafka::error::KafkaError;

/// Building or running a [`KafkaConsumer`](super::KafkaConsumer) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConsumerError {
    /// A builder or engine setting is missing, out of range or contradicts another; the
    /// [`ConfigError`] names the setting.
    #[error("invalid kafka consumer configuration: {0}")]
    Config(#[from] ConfigError),
    /// [`build`](super::KafkaConsumerBuilder::build) was called outside a Tokio runtime.
    #[error("build the kafka consumer inside a Tokio runtime (librdkafka callbacks run on it)")]
    NoRuntime,
    /// librdkafka rejected the client configuration or the subscription.
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    /// A librdkafka property that idemq sets itself was given another value.
    #[error("librdkafka property {key}={value:?} of the {client} is refused: idemq fixes it to {fixed} because {why}")]
    FixedProperty {
        /// The client it was given for.
        client: KafkaClient,
        /// The property as given.
        key: String,
        /// The value given.
        value: String,
        /// What idemq sets it to.
        fixed: &'static str,
        /// Why idemq needs that value.
        why: &'static str,
    },
}

/// Publishing to the dead-letter topic failed; the original is not committed and the publish is
/// retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

/// A [`KafkaReplay`](super::KafkaReplay) run stopped. Offsets of every record handled before the
/// failure are committed; nothing after it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaReplayError {
    /// The replay settings are invalid (empty or equal topic names); the [`ConfigError`] names
    /// the setting.
    #[error("invalid kafka replay configuration: {0}")]
    Config(#[from] ConfigError),
    /// librdkafka rejected the client configuration (unknown property, invalid value).
    #[error("kafka client configuration rejected: {0}")]
    Client(#[source] KafkaError),
    /// The store could not classify a record.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A broker operation failed (metadata, group join, commit).
    #[error("kafka {during} failed: {source}")]
    Broker {
        /// What was being done.
        during: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The consumer got no partitions of the dead-letter topic in time (broker unreachable, or
    /// the group has more members than the topic has partitions).
    #[error("no partition of {topic} was assigned within {after:?}")]
    NotAssigned {
        /// Dead-letter topic.
        topic: String,
        /// How long the replay waited.
        after: std::time::Duration,
    },
    /// The broker rejected a republished record; the dead-lettered original was not committed.
    #[error("republish to {topic} failed: {source}")]
    Publish {
        /// Target topic.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A republished record was not confirmed in time; the original was not committed.
    #[error("republish to {topic} was not confirmed within {after:?}")]
    Timeout {
        /// Target topic.
        topic: String,
        /// The configured bound.
        after: std::time::Duration,
    },
}
