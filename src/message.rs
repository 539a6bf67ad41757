//! The broker-neutral message the engine works on.
//!
//! Broker adapters convert a Kafka record or an AMQP delivery into a [`Message`]; the engine never sees
//! a broker type, which is what lets one engine serve both brokers and the tests.

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

/// A message as the engine sees it: headers, payload and origin.
#[derive(Clone, Debug)]
pub struct Message {
    /// Headers in delivery order (names may repeat).
    pub headers: Vec<Header>,
    /// The payload bytes.
    pub payload: Bytes,
    /// Where the message came from.
    pub source: Source,
    /// AMQP `message_id` property, used as a key fallback when configured.
    pub message_id: Option<String>,
    /// Whether the broker flagged this delivery as a redelivery (AMQP) — informational only.
    pub redelivered: bool,
}

impl Message {
    /// A message with the given payload and no headers; mostly for tests and examples.
    pub fn new(payload: impl Into<Bytes>, source: Source) -> Self {
        Self {
            headers: Vec::new(),
            payload: payload.into(),
            source,
            message_id: None,
            redelivered: false,
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
