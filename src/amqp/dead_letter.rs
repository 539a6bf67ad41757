//! Publishing a message to the dead-letter exchange.

use super::config::DeadLetterTarget;
use crate::engine::DeadLetter;
use crate::headers;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Longest `x-idemq-error` value; error texts can embed payload fragments.
const MAX_ERROR_LEN: usize = 4096;

/// Exchange, routing key and properties for dead-lettering a delivery: the original properties and
/// headers plus the reason, the error and where the message came from.
pub(crate) fn dead_letter_publish(
    target: &DeadLetterTarget,
    dead_letter: &DeadLetter,
    original: &BasicProperties,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> (String, BasicProperties) {
    let mut table = original.headers().clone().unwrap_or_default();
    let mut put = |name: &str, value: &str| {
        table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    };
    put(headers::REASON, dead_letter.reason.as_str());
    put(headers::ERROR, truncate(&dead_letter.error, MAX_ERROR_LEN));
    put(headers::SOURCE_QUEUE, queue);
    put(headers::SOURCE_EXCHANGE, exchange);
    put(headers::SOURCE_ROUTING_KEY, routing_key);
    // With `otel`, the copy continues the trace from the process span.
    if let Some(trace) = crate::traces::outgoing() {
        crate::traces::inject_amqp(&mut table, trace);
    }
    let key = target
        .routing_key
        .clone()
        .unwrap_or_else(|| routing_key.to_string());
    (key, original.clone().with_headers(table))
}

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

/// Reads a string header back (tests, replay tools).
pub fn header_text(table: &FieldTable, name: &str) -> Option<String> {
    table
        .inner()
        .get(name)
        .and_then(super::convert::value_bytes)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadLetterReason;

    #[test]
    fn keeps_original_headers_and_adds_reason_and_source() {
        let mut original = FieldTable::default();
        original.insert("Idempotency-Key".into(), AMQPValue::LongString("k".into()));
        let props = BasicProperties::default()
            .with_headers(original)
            .with_message_id("m".into());
        let target = DeadLetterTarget {
            exchange: "dlx".into(),
            routing_key: None,
        };
        let dl = DeadLetter {
            reason: DeadLetterReason::Conflict,
            error: "é".repeat(5000),
        };
        let (key, out) = dead_letter_publish(&target, &dl, &props, "q", "ex", "rk");
        assert_eq!(key, "rk");
        let h = out.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&h, "Idempotency-Key").as_deref(), Some("k"));
        assert_eq!(
            header_text(&h, headers::REASON).as_deref(),
            Some("idempotency-key-conflict")
        );
        assert_eq!(header_text(&h, headers::SOURCE_QUEUE).as_deref(), Some("q"));
        assert!(header_text(&h, headers::ERROR).unwrap().len() <= MAX_ERROR_LEN);
        assert_eq!(out.message_id().as_ref().map(|m| m.as_str()), Some("m"));
    }
}
