//! The broker-neutral message the engine works on.
//!
//! Broker adapters convert a Kafka record or an AMQP delivery into a [`Message`]; the engine never sees
//! a broker type, which is what lets one engine serve both brokers and the tests.
//!
//! What the broker said about a message besides headers and payload (the Kafka record key and
//! timestamp, the AMQP properties, …) is in its [`Metadata`], read with [`Message::kafka`] and
//! [`Message::amqp`]:
//!
//! ```
//! use idemq::message::{KafkaMetadata, Message};
//!
//! let msg = Message::from_kafka("{}", KafkaMetadata::new("orders", 3, 42).with_key("order-7"));
//! let kafka = msg.kafka().unwrap();
//! assert_eq!(kafka.key.as_deref(), Some(&b"order-7"[..]));
//! assert_eq!((kafka.topic.as_str(), kafka.partition, kafka.offset), ("orders", 3, 42));
//! assert!(msg.amqp().is_none());
//! assert_eq!(msg.source.to_string(), "kafka:orders/3@42");
//! ```

mod metadata;

pub use metadata::{AmqpMetadata, AmqpProperties, KafkaMetadata, KafkaTimestamp, Metadata};

use bytes::Bytes;
use std::fmt;

/// One message header. Kafka headers may have no value, so the value is optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name as the broker delivered it.
    pub name: String,
    /// Raw header value; `None` for a Kafka header without a value.
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            value: Some(value.into()),
        }
    }
}

/// Where a message came from; copied into dead-letter headers and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Kafka record.
    Kafka {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Offset within the partition.
        offset: i64,
    },
    /// An AMQP delivery.
    Amqp {
        /// Queue the delivery was consumed from.
        queue: String,
        /// Exchange the message was published to (empty for the default exchange).
        exchange: String,
        /// Routing key it was published with.
        routing_key: String,
        /// Channel-local delivery tag.
        delivery_tag: u64,
    },
    /// Anything else (tests, custom adapters); free-form description.
    Other(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "kafka:{topic}/{partition}@{offset}"),
            Source::Amqp {
                queue,
                delivery_tag,
                ..
            } => write!(f, "amqp:{queue}#{delivery_tag}"),
            Source::Other(s) => write!(f, "{s}"),
        }
    }
}

/// A message as the engine sees it: headers, payload, origin and broker metadata.
///
/// Build one with [`Message::new`], [`Message::from_kafka`] or [`Message::from_amqp`] (the struct
/// is `#[non_exhaustive]`, so it can gain fields without breaking callers).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message {
    /// Headers in delivery order (names may repeat).
    pub headers: Vec<Header>,
    /// The payload bytes.
    pub payload: Bytes,
    /// Where the message came from (copied into dead-letter headers and logs).
    pub source: Source,
    /// What the broker delivered besides headers and payload.
    pub metadata: Metadata,
}

impl Message {
    /// A message with the given payload, no headers and no broker metadata; mostly for tests and
    /// examples.
    pub fn new(payload: impl Into<Bytes>, source: Source) -> Self {
        Self {
            headers: Vec::new(),
            payload: payload.into(),
            source,
            metadata: Metadata::None,
        }
    }

    /// A message as the Kafka consumer builds it: the source is the record's
    /// topic/partition/offset.
    pub fn from_kafka(payload: impl Into<Bytes>, kafka: KafkaMetadata) -> Self {
        let source = Source::Kafka {
            topic: kafka.topic.clone(),
            partition: kafka.partition,
            offset: kafka.offset,
        };
        Self {
            metadata: Metadata::Kafka(kafka),
            ..Self::new(payload, source)
        }
    }

    /// A message as the AMQP consumer builds it: the source is the delivery's queue, exchange,
    /// routing key and delivery tag.
    pub fn from_amqp(payload: impl Into<Bytes>, amqp: AmqpMetadata) -> Self {
        let source = Source::Amqp {
            queue: amqp.queue.clone(),
            exchange: amqp.exchange.clone(),
            routing_key: amqp.routing_key.clone(),
            delivery_tag: amqp.delivery_tag,
        };
        Self {
            metadata: Metadata::Amqp(amqp),
            ..Self::new(payload, source)
        }
    }

    /// The Kafka record's metadata, if the message came from Kafka.
    pub fn kafka(&self) -> Option<&KafkaMetadata> {
        match &self.metadata {
            Metadata::Kafka(k) => Some(k),
            _ => None,
        }
    }

    /// The AMQP delivery's metadata, if the message came from RabbitMQ.
    pub fn amqp(&self) -> Option<&AmqpMetadata> {
        match &self.metadata {
            Metadata::Amqp(a) => Some(a),
            _ => None,
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// The first header whose name matches `name` ASCII-case-insensitively.
    ///
    /// Returns `Some(None)` when the header is present without a value.
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_deref())
    }
}
