//! Turning an AMQP delivery into the broker-neutral [`Message`].

use crate::message::{AmqpMetadata, AmqpProperties, Header, Message};
use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

/// Builds the engine's view of a delivery: headers as bytes, payload, origin, and the delivery's
/// metadata (exchange, routing key, basic properties, redelivered flag).
pub(crate) fn to_message(
    queue: &str,
    exchange: &str,
    routing_key: &str,
    delivery_tag: u64,
    redelivered: bool,
    properties: &BasicProperties,
    payload: Bytes,
) -> Message {
    let headers = properties
        .headers()
        .as_ref()
        .map(headers_of)
        .unwrap_or_default();
    let meta = AmqpMetadata::new(queue, exchange, routing_key, delivery_tag)
        .with_redelivered(redelivered)
        .with_properties(properties_of(properties));
    let mut message = Message::from_amqp(payload, meta);
    message.headers = headers;
    message
}

/// The basic properties users read, as owned strings.
fn properties_of(p: &BasicProperties) -> AmqpProperties {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_string());
    AmqpProperties {
        message_id: text(p.message_id()),
        correlation_id: text(p.correlation_id()),
        reply_to: text(p.reply_to()),
        content_type: text(p.content_type()),
        content_encoding: text(p.content_encoding()),
        timestamp: *p.timestamp(),
        message_type: text(p.kind()),
        app_id: text(p.app_id()),
        user_id: text(p.user_id()),
        priority: *p.priority(),
        expiration: text(p.expiration()),
        delivery_mode: *p.delivery_mode(),
    }
}

/// Header table → ordered headers; `Void` values become headers without a value.
pub(crate) fn headers_of(table: &FieldTable) -> Vec<Header> {
    table
        .into_iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_string(),
            value: value_bytes(value),
        })
        .collect()
}

/// The bytes of one header value.
///
/// Strings and byte arrays are taken as they are (producers put keys there); numbers, booleans and
/// timestamps as their decimal text, so a key published as an integer still works; nested arrays
/// and tables as JSON, which is stable and only matters if such a header is fingerprinted.
pub(crate) fn value_bytes(value: &AMQPValue) -> Option<Bytes> {
    let text = |s: String| Some(Bytes::from(s));
    match value {
        AMQPValue::LongString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Bytes::copy_from_slice(s.as_str().as_bytes())),
        AMQPValue::ByteArray(b) => Some(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Boolean(b) => text(b.to_string()),
        AMQPValue::ShortShortInt(n) => text(n.to_string()),
        AMQPValue::ShortShortUInt(n) => text(n.to_string()),
        AMQPValue::ShortInt(n) => text(n.to_string()),
        AMQPValue::ShortUInt(n) => text(n.to_string()),
        AMQPValue::LongInt(n) => text(n.to_string()),
        AMQPValue::LongUInt(n) => text(n.to_string()),
        AMQPValue::LongLongInt(n) => text(n.to_string()),
        AMQPValue::Timestamp(n) => text(n.to_string()),
        AMQPValue::Float(f) => text(f.to_string()),
        AMQPValue::Double(f) => text(f.to_string()),
        AMQPValue::DecimalValue(d) => text(decimal_text(d.value, d.scale)),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => {
            serde_json::to_vec(value).ok().map(Bytes::from)
        }
        AMQPValue::Void => None,
    }
}

fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Total of the `count` fields of the `x-death` header: how many times RabbitMQ dead-lettered this
/// message (rejections, TTL expiries, …) before this delivery. 0 without the header.
pub(crate) fn x_death_count(properties: &BasicProperties) -> u64 {
    let Some(AMQPValue::FieldArray(deaths)) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return 0;
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => t.inner().get("count").and_then(as_u64),
            _ => None,
        })
        // Saturating: the header is the sender's to write, and an overflowing sum would panic
        // (debug builds) in the intake loop.
        .fold(0u64, u64::saturating_add)
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Source;
    use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString, ShortString};

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(k), v);
        }
        t
    }

    #[test]
    fn header_values_become_bytes() {
        let t = table(vec![
            ("a-long", AMQPValue::LongString(LongString::from("k-1"))),
            ("b-short", AMQPValue::ShortString(ShortString::from("k-2"))),
            (
                "c-bytes",
                AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2])),
            ),
            ("d-int", AMQPValue::LongLongInt(-42)),
            ("e-bool", AMQPValue::Boolean(true)),
            ("f-void", AMQPValue::Void),
            (
                "g-dec",
                AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 }),
            ),
        ]);
        let h = headers_of(&t);
        let get = |n: &str| h.iter().find(|x| x.name == n).and_then(|x| x.value.clone());
        assert_eq!(get("a-long").as_deref(), Some(&b"k-1"[..]));
        assert_eq!(get("b-short").as_deref(), Some(&b"k-2"[..]));
        assert_eq!(get("c-bytes").as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(get("d-int").as_deref(), Some(&b"-42"[..]));
        assert_eq!(get("e-bool").as_deref(), Some(&b"true"[..]));
        assert_eq!(get("f-void"), None);
        assert_eq!(get("g-dec").as_deref(), Some(&b"0.05"[..]));
        assert_eq!(h.len(), 7);
    }

    #[test]
    fn message_carries_properties_source_and_redelivered() {
        let props = BasicProperties::default()
            .with_message_id("mid-1".into())
            .with_correlation_id("cid-1".into())
            .with_reply_to("replies".into())
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_timestamp(1_700_000_000)
            .with_type("order.created".into())
            .with_app_id("shop".into())
            .with_user_id("guest".into())
            .with_priority(3)
            .with_expiration("60000".into())
            .with_delivery_mode(2)
            .with_headers(table(vec![(
                "Idempotency-Key",
                AMQPValue::LongString("k".into()),
            )]));
        let m = to_message("q", "ex", "rk", 7, true, &props, Bytes::from_static(b"p"));
        let a = m.amqp().unwrap();
        assert_eq!(
            (
                a.queue.as_str(),
                a.exchange.as_str(),
                a.routing_key.as_str()
            ),
            ("q", "ex", "rk")
        );
        assert_eq!(a.delivery_tag, 7);
        assert!(a.redelivered);
        let p = &a.properties;
        assert_eq!(p.message_id.as_deref(), Some("mid-1"));
        assert_eq!(p.correlation_id.as_deref(), Some("cid-1"));
        assert_eq!(p.reply_to.as_deref(), Some("replies"));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.message_type.as_deref(), Some("order.created"));
        assert_eq!(p.app_id.as_deref(), Some("shop"));
        assert_eq!(p.user_id.as_deref(), Some("guest"));
        assert_eq!(p.priority, Some(3));
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(p.delivery_mode, Some(2));
        assert!(m.kafka().is_none());
        assert_eq!(m.header("idempotency-key"), Some(Some(&b"k"[..])));
        assert!(matches!(
            m.source,
            Source::Amqp {
                delivery_tag: 7,
                ..
            }
        ));
    }

    #[test]
    fn x_death_counts_are_summed() {
        let death = |n| {
            AMQPValue::FieldTable(table(vec![
                ("count", AMQPValue::LongLongInt(n)),
                ("reason", AMQPValue::LongString("rejected".into())),
            ]))
        };
        let props = BasicProperties::default().with_headers(table(vec![(
            "x-death",
            AMQPValue::FieldArray(FieldArray::from(vec![death(2), death(3)])),
        )]));
        assert_eq!(x_death_count(&props), 5);
        assert_eq!(x_death_count(&BasicProperties::default()), 0);
    }

    #[test]
    fn x_death_count_overflow_saturates() {
        let death = |n| AMQPValue::FieldTable(table(vec![("count", AMQPValue::LongLongInt(n))]));
        let props = BasicProperties::default().with_headers(table(vec![(
            "x-death",
            AMQPValue::FieldArray(FieldArray::from(vec![
                death(i64::MAX),
                death(i64::MAX),
                death(7),
            ])),
        )]));
        assert_eq!(x_death_count(&props), u64::MAX);
    }
}
