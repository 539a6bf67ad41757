//! Publishing dead-lettered messages and waiting for the broker's confirmation.

use super::convert::to_kafka_headers;
use super::error::DeadLetterError;
use crate::engine::DeadLetter;
use crate::headers;
use crate::message::{Message, Source};
use bytes::Bytes;
use rdkafka::message::Header as KafkaHeader;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

/// Headers idemq writes when dead-lettering; copies of them on the original (a message that was
/// dead-lettered before and replayed) are replaced, not duplicated.
const OWN_HEADERS: [&str; 5] = [
    headers::REASON,
    headers::ERROR,
    headers::SOURCE_TOPIC,
    headers::SOURCE_PARTITION,
    headers::SOURCE_OFFSET,
];

/// An idempotent producer (`enable.idempotence=true`, `acks=all`) for the dead-letter topic.
pub(crate) struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl DeadLetterProducer {
    pub(crate) fn new(producer: FutureProducer, topic: String, timeout: Duration) -> Self {
        Self {
            producer,
            topic,
            timeout,
        }
    }

    /// Publishes `message` with its original key, payload and headers plus the `x-idemq-*` headers,
    /// and returns once the broker confirmed it.
    pub(crate) async fn publish(
        &self,
        message: &Message,
        kafka_key: Option<&Bytes>,
        dead_letter: &DeadLetter,
    ) -> Result<(), DeadLetterError> {
        let kept = message
            .headers
            .iter()
            .filter(|h| !OWN_HEADERS.iter().any(|o| h.name.eq_ignore_ascii_case(o)));
        let mut out = to_kafka_headers(kept);
        let source_headers: Vec<(&str, String)> = match &message.source {
            Source::Kafka {
                topic,
                partition,
                offset,
            } => vec![
                (headers::SOURCE_TOPIC, topic.clone()),
                (headers::SOURCE_PARTITION, partition.to_string()),
                (headers::SOURCE_OFFSET, offset.to_string()),
            ],
            _ => Vec::new(),
        };
        for (name, value) in [
            (headers::REASON, dead_letter.reason.as_str().to_string()),
            (headers::ERROR, dead_letter.error.clone()),
        ]
        .into_iter()
        .chain(source_headers)
        {
            out = out.insert(KafkaHeader {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(message.payload.as_ref())
            .headers(out);
        if let Some(key) = kafka_key {
            record = record.key(key.as_ref());
        }
        // `message.timeout.ms` bounds the delivery inside librdkafka; the outer timeout is a
        // safety net so a wedged producer can never hold a partition forever.
        let send = self.producer.send(record, Timeout::After(self.timeout));
        match tokio::time::timeout(self.timeout + Duration::from_secs(5), send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(DeadLetterError::Publish {
                topic: self.topic.clone(),
                source,
            }),
            Err(_) => Err(DeadLetterError::Timeout {
                topic: self.topic.clone(),
                after: self.timeout,
            }),
        }
    }
}
