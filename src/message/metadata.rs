//! Broker metadata carried by a [`Message`](super::Message): what Kafka or RabbitMQ delivered
//! besides headers and payload.

use bytes::Bytes;

/// What the broker delivered besides headers and payload.
// Not boxed: a message is allocated once (in an `Arc`) per delivery, and boxing the AMQP variant
// would add a second allocation to every AMQP delivery.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Metadata {
    /// No broker metadata (tests, custom adapters).
    #[default]
    None,
    /// A Kafka record's metadata.
    Kafka(KafkaMetadata),
    /// An AMQP delivery's metadata.
    Amqp(AmqpMetadata),
}

/// A Kafka record's timestamp, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KafkaTimestamp {
    /// Set by the producer (`message.timestamp.type=CreateTime`, the default).
    CreateTime(i64),
    /// Set by the broker when it appended the record (`LogAppendTime`).
    LogAppendTime(i64),
}

impl KafkaTimestamp {
    /// Milliseconds since the Unix epoch, whichever the type.
    pub fn millis(&self) -> i64 {
        match *self {
            KafkaTimestamp::CreateTime(ms) | KafkaTimestamp::LogAppendTime(ms) => ms,
        }
    }
}

/// A Kafka record's metadata.
///
/// ```
/// use idemq::message::{KafkaMetadata, KafkaTimestamp};
///
/// let meta = KafkaMetadata::new("orders", 0, 17)
///     .with_key("order-7")
///     .with_timestamp(KafkaTimestamp::CreateTime(1_700_000_000_000));
/// assert_eq!(meta.timestamp.map(|t| t.millis()), Some(1_700_000_000_000));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaMetadata {
    /// Topic the record was read from.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record key; `None` for a null key (an empty key is `Some` of no bytes).
    pub key: Option<Bytes>,
    /// The record timestamp, when the record has one.
    pub timestamp: Option<KafkaTimestamp>,
}

impl KafkaMetadata {
    /// Metadata of the record at `topic`/`partition`/`offset`, without key or timestamp.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            timestamp: None,
        }
    }

    /// Sets the record key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: KafkaTimestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// The AMQP basic properties idemq passes on (headers are in [`Message::headers`](super::Message)).
///
/// ```
/// use idemq::message::AmqpProperties;
///
/// let props = AmqpProperties::default().with_correlation_id("req-9");
/// assert_eq!(props.correlation_id.as_deref(), Some("req-9"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpProperties {
    /// `message_id`.
    pub message_id: Option<String>,
    /// `correlation_id`.
    pub correlation_id: Option<String>,
    /// `reply_to`: where request/reply outcomes go.
    pub reply_to: Option<String>,
    /// `content_type`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `content_encoding`, e.g. `gzip`.
    pub content_encoding: Option<String>,
    /// `timestamp`, in seconds since the Unix epoch (AMQP's resolution).
    pub timestamp: Option<u64>,
    /// `type`: the application's message type name.
    pub message_type: Option<String>,
    /// `app_id`: the publishing application.
    pub app_id: Option<String>,
    /// `user_id`: the publishing user (RabbitMQ checks it against the connection's user).
    pub user_id: Option<String>,
    /// `priority` (0–9 on RabbitMQ priority queues).
    pub priority: Option<u8>,
    /// `expiration`: per-message TTL in milliseconds, as the text the publisher set.
    pub expiration: Option<String>,
    /// `delivery_mode`: 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
}

impl AmqpProperties {
    /// Sets `message_id`.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets `correlation_id`.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// An AMQP delivery's metadata.
///
/// ```
/// use idemq::message::{AmqpMetadata, AmqpProperties, Message};
///
/// let meta = AmqpMetadata::new("orders", "shop", "order.created", 1)
///     .with_properties(AmqpProperties::default().with_message_id("m-1"));
/// let msg = Message::from_amqp("{}", meta);
/// assert_eq!(msg.amqp().unwrap().properties.message_id.as_deref(), Some("m-1"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpMetadata {
    /// Queue the delivery was consumed from.
    pub queue: String,
    /// Exchange the message was published to (empty for the default exchange).
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Channel-local delivery tag.
    pub delivery_tag: u64,
    /// Whether the broker flagged this delivery as a redelivery (informational: idemq's
    /// deduplication does not depend on it).
    pub redelivered: bool,
    /// The basic properties.
    pub properties: AmqpProperties,
}

impl AmqpMetadata {
    /// Metadata of a delivery, not redelivered, without properties.
    pub fn new(
        queue: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        delivery_tag: u64,
    ) -> Self {
        Self {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            delivery_tag,
            redelivered: false,
            properties: AmqpProperties::default(),
        }
    }

    /// Sets the properties.
    pub fn with_properties(mut self, properties: AmqpProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Sets the redelivered flag.
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }
}
