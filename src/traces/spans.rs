//! The `idemq.process` and `idemq.store` spans and their fields.
//!
//! Field names follow OpenTelemetry's messaging semantic conventions, so the `tracing-opentelemetry`
//! layer exports them as span attributes unchanged.

use crate::message::{Message, Metadata};
use std::fmt;
use tracing::{field, Span};

/// The span one message is processed in. `key` and `decision` are recorded later (the key as
/// [`KeyLogging`](crate::key::KeyLogging) says).
pub(crate) fn process_span(scope: &str, message: &Message) -> Span {
    let span = tracing::info_span!(
        "idemq.process",
        otel.kind = "consumer",
        scope = %scope,
        source = %message.source,
        transactional = field::Empty,
        key = field::Empty,
        decision = field::Empty,
        messaging.system = field::Empty,
        messaging.operation.type = "process",
        messaging.destination.name = field::Empty,
        messaging.message.id = field::Empty,
        messaging.destination.partition.id = field::Empty,
        messaging.kafka.offset = field::Empty,
        messaging.rabbitmq.destination.routing_key = field::Empty,
        messaging.rabbitmq.message.delivery_tag = field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    match &message.metadata {
        Metadata::Kafka(k) => {
            span.record("messaging.system", "kafka");
            span.record("messaging.destination.name", k.topic.as_str());
            span.record(
                "messaging.message.id",
                field::display(KafkaId(&k.topic, k.partition, k.offset)),
            );
            span.record("messaging.destination.partition.id", k.partition);
            span.record("messaging.kafka.offset", k.offset);
        }
        Metadata::Amqp(a) => {
            span.record("messaging.system", "rabbitmq");
            span.record("messaging.destination.name", a.queue.as_str());
            if let Some(id) = &a.properties.message_id {
                span.record("messaging.message.id", id.as_str());
            }
            span.record(
                "messaging.rabbitmq.destination.routing_key",
                a.routing_key.as_str(),
            );
            span.record("messaging.rabbitmq.message.delivery_tag", a.delivery_tag);
        }
        _ => {}
    }
    super::set_remote_parent(&span, message);
    span
}

/// The child span of one store call (`op`: `claim`, `complete`, `renew`, `release`, …).
pub(crate) fn store_span(op: &'static str) -> Span {
    tracing::info_span!(
        "idemq.store",
        otel.name = store_span_name(op),
        op,
        db.operation.name = op,
    )
}

/// The exported span name of a store call: the operation in it, for the known ones.
fn store_span_name(op: &'static str) -> &'static str {
    match op {
        "claim" => "idemq.store.claim",
        "complete" => "idemq.store.complete",
        "renew" => "idemq.store.renew",
        "release" => "idemq.store.release",
        "begin" => "idemq.store.begin",
        "commit" => "idemq.store.commit",
        "connect" => "idemq.store.connect",
        _ => "idemq.store",
    }
}

/// A Kafka record's identity as `messaging.message.id`: `topic-partition-offset` (Kafka has no
/// message id of its own).
struct KafkaId<'a>(&'a str, i32, i64);

impl fmt::Display for KafkaId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.0, self.1, self.2)
    }
}
