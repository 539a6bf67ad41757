//! Publishing dead-lettered messages and waiting for the broker's confirmation.

use super::convert::to_kafka_headers;
use super::error::DeadLetterError;
use crate::engine::DeadLetter;
use crate::headers;
use crate::message::{Message, Source};
use crate::traces;
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

/// Longest `x-idemq-error` value: error texts can embed payload fragments, and an unbounded one
/// could make the copy too large to ever be produced (blocking its partition).
pub(crate) const MAX_ERROR_LEN: usize = 4096;

/// Default `message.max.bytes` of the dead-letter producer: room for the largest record a
/// consumer can receive from a broker with default limits (about 1 MiB) plus its headers and
/// idemq's, many times over. A dead-letter topic whose broker limit is lower still refuses a
/// large copy; that is logged as an error and counted, and the original is not committed.
pub(crate) const PRODUCER_MAX_BYTES: &str = "16777216";

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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
        // With `otel`, the copy continues the trace from the process span: the original's trace
        // context headers are replaced by the process span's.
        let trace = traces::outgoing();
        let replaced = |name: &str| {
            OWN_HEADERS.iter().any(|o| name.eq_ignore_ascii_case(o))
                || (trace.is_some()
                    && [traces::TRACEPARENT, traces::TRACESTATE]
                        .iter()
                        .any(|t| name.eq_ignore_ascii_case(t)))
        };
        let kept = message.headers.iter().filter(|h| !replaced(&h.name));
        let mut out = to_kafka_headers(kept);
        if let Some(trace) = &trace {
            out = out.insert(KafkaHeader {
                key: traces::TRACEPARENT,
                value: Some(trace.traceparent.as_bytes()),
            });
            if let Some(state) = &trace.tracestate {
                out = out.insert(KafkaHeader {
                    key: traces::TRACESTATE,
                    value: Some(state.as_bytes()),
                });
            }
        }
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
            (
                headers::ERROR,
                truncate(&dead_letter.error, MAX_ERROR_LEN).to_string(),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate(&long, MAX_ERROR_LEN);
        assert!(cut.len() <= MAX_ERROR_LEN && cut.len() >= MAX_ERROR_LEN - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short", MAX_ERROR_LEN), "short");
    }
}
