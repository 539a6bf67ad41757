//! Broker metadata shortcuts on [`HandlerContext`].
//!
//! ```
//! use idemq::message::{KafkaMetadata, KafkaTimestamp};
//! use idemq::{HandlerContext, HandlerError};
//!
//! async fn audit(ctx: HandlerContext) -> Result<String, HandlerError> {
//!     if let Some(kafka) = ctx.kafka() {
//!         let at = kafka.timestamp.map(|t| t.millis()).unwrap_or_default();
//!         return Ok(format!("{}/{}@{} sent at {at}", kafka.topic, kafka.partition, kafka.offset));
//!     }
//!     let reply_to = ctx.amqp_properties().and_then(|p| p.reply_to.clone());
//!     Ok(format!("amqp, reply to {reply_to:?}"))
//! }
//! ```

use super::HandlerContext;
use crate::message::{AmqpMetadata, AmqpProperties, KafkaMetadata};

impl HandlerContext {
    /// The Kafka record's metadata (key, timestamp, topic, partition, offset), if the message came
    /// from Kafka.
    pub fn kafka(&self) -> Option<&KafkaMetadata> {
        self.message.kafka()
    }

    /// The AMQP delivery's metadata (exchange, routing key, properties, redelivered flag), if the
    /// message came from RabbitMQ.
    pub fn amqp(&self) -> Option<&AmqpMetadata> {
        self.message.amqp()
    }

    /// The Kafka record key; `None` for a null key or a message not from Kafka.
    pub fn kafka_key(&self) -> Option<&[u8]> {
        self.kafka()?.key.as_deref()
    }

    /// The AMQP basic properties, if the message came from RabbitMQ.
    pub fn amqp_properties(&self) -> Option<&AmqpProperties> {
        self.amqp().map(|a| &a.properties)
    }
}

#[cfg(test)]
mod tests {
    use crate::message::{AmqpMetadata, AmqpProperties, KafkaMetadata, Message};
    use crate::HandlerContext;
    use std::sync::Arc;

    fn ctx(message: Message) -> HandlerContext {
        HandlerContext {
            message: Arc::new(message),
            key: None,
            scope: Arc::from("s"),
            attempt: 1,
            token: None,
        }
    }

    #[test]
    fn shortcuts_read_the_message_metadata() {
        let k = ctx(Message::from_kafka(
            "p",
            KafkaMetadata::new("t", 1, 2).with_key("rk"),
        ));
        assert_eq!(k.kafka_key(), Some(&b"rk"[..]));
        assert_eq!(k.kafka().map(|m| m.offset), Some(2));
        assert!(k.amqp().is_none() && k.amqp_properties().is_none());
        let props = AmqpProperties::default().with_correlation_id("c");
        let a = ctx(Message::from_amqp(
            "p",
            AmqpMetadata::new("q", "x", "rk", 1).with_properties(props),
        ));
        assert_eq!(
            a.amqp_properties()
                .and_then(|p| p.correlation_id.as_deref()),
            Some("c")
        );
        assert!(a.kafka().is_none() && a.kafka_key().is_none());
    }
}
