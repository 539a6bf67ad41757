//! Header names idemq reads and writes.

/// Default header carrying the idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Why a message was dead-lettered (a [`DeadLetterReason`](crate::DeadLetterReason) string).
pub const REASON: &str = "x-idemq-reason";
/// Error text of a dead-lettered message.
pub const ERROR: &str = "x-idemq-error";
/// Kafka source topic of a dead-lettered message.
pub const SOURCE_TOPIC: &str = "x-idemq-source-topic";
/// Kafka source partition of a dead-lettered message.
pub const SOURCE_PARTITION: &str = "x-idemq-source-partition";
/// Kafka source offset of a dead-lettered message.
pub const SOURCE_OFFSET: &str = "x-idemq-source-offset";
/// AMQP source queue of a dead-lettered message.
pub const SOURCE_QUEUE: &str = "x-idemq-source-queue";
/// AMQP source exchange of a dead-lettered message.
pub const SOURCE_EXCHANGE: &str = "x-idemq-source-exchange";
/// AMQP source routing key of a dead-lettered message.
pub const SOURCE_ROUTING_KEY: &str = "x-idemq-source-routing-key";
/// Set to `true` on an AMQP reply that was replayed from the store.
pub const IDEMPOTENT_REPLAY: &str = "Idempotent-Replay";
/// Number of times the operator CLI replayed a message from a dead-letter queue.
pub const REPLAYED: &str = "x-idemq-replayed";
/// Prefix shared by every header idemq adds when dead-lettering.
pub const DEAD_LETTER_PREFIX: &str = "x-idemq-";
