//! [`KeySource`]: one place a key may be read from.

use super::error::{InvalidKeyReason, KeyError};
use crate::message::Message;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A user function that finds a message's key: `None` when the message has none (the next source
/// is tried), `Some(Err(why))` when it has one that cannot be used (dead-lettered as an invalid
/// key).
pub type KeyFn = Arc<dyn Fn(&Message) -> Option<Result<String, String>> + Send + Sync>;

/// One place an idempotency key may be read from. A [`KeyConfig`](super::KeyConfig) tries its
/// sources in order and the **first one present wins**, even when its value is invalid.
///
/// | source | present when | Kafka | AMQP |
/// |---|---|---|---|
/// | [`Header`](Self::Header) | the header exists (ASCII case-insensitive name) | ✓ | ✓ |
/// | [`KafkaKey`](Self::KafkaKey) | the record key is not null | ✓ | never |
/// | [`MessageId`](Self::MessageId) | the `message_id` property is set | never | ✓ |
/// | [`CorrelationId`](Self::CorrelationId) | the `correlation_id` property is set | never | ✓ |
/// | [`JsonPointer`](Self::JsonPointer) | the payload is not JSON, or the pointer resolves | ✓ | ✓ |
/// | [`Custom`](Self::Custom) | the function returns `Some` | ✓ | ✓ |
///
/// A JSON pointer ([RFC 6901](https://www.rfc-editor.org/rfc/rfc6901), e.g. `/order/id`) takes a
/// string as it is and a number as its decimal text; `null`, booleans, arrays and objects are
/// invalid keys, and so is every key of a payload that is not JSON (a JSON-pointer source cannot
/// tell whether a non-JSON payload "has" the field, so it does not fall through).
///
/// ```
/// use idemq::key::{KeyConfig, KeySource};
/// use idemq::message::{KafkaMetadata, Message};
///
/// let keys = KeyConfig::new([
///     KeySource::header("Idempotency-Key"),
///     KeySource::json_pointer("/order/id"),
///     KeySource::KafkaKey,
/// ]);
/// let msg = Message::from_kafka(r#"{"order":{"id":42}}"#, KafkaMetadata::new("t", 0, 0).with_key("rk"));
/// assert_eq!(keys.extract(&msg).unwrap().as_str(), "42");
///
/// let tenant_and_id = KeySource::custom(|m: &Message| {
///     let tenant = m.header("tenant")??;
///     Some(format!("{}:{}", String::from_utf8_lossy(tenant), m.kafka()?.offset))
/// });
/// let msg = msg.with_header("tenant", "acme");
/// assert_eq!(KeyConfig::new([tenant_and_id]).extract(&msg).unwrap().as_str(), "acme:0");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// A header, by name (ASCII case-insensitive). A header present without a value is an
    /// invalid (empty) key.
    Header(String),
    /// The Kafka record key (its bytes must be printable UTF-8). An empty key is invalid; a null
    /// key is absent.
    KafkaKey,
    /// The AMQP `message_id` property.
    MessageId,
    /// The AMQP `correlation_id` property.
    CorrelationId,
    /// A JSON pointer into the payload.
    JsonPointer(String),
    /// A user function; see [`KeyFn`].
    Custom(KeyFn),
}

impl KeySource {
    /// [`KeySource::Header`].
    pub fn header(name: impl Into<String>) -> Self {
        KeySource::Header(name.into())
    }

    /// [`KeySource::JsonPointer`], e.g. `"/order/id"`.
    pub fn json_pointer(pointer: impl Into<String>) -> Self {
        KeySource::JsonPointer(pointer.into())
    }

    /// [`KeySource::Custom`] from a function that returns the key, or `None` when the message has
    /// none.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&Message) -> Option<String> + Send + Sync + 'static,
    {
        KeySource::Custom(Arc::new(move |m| f(m).map(Ok)))
    }

    /// [`KeySource::Custom`] from a function that can also reject a present key with a reason
    /// (dead-lettered as `invalid-idempotency-key`).
    pub fn custom_checked<F>(f: F) -> Self
    where
        F: Fn(&Message) -> Option<Result<String, String>> + Send + Sync + 'static,
    {
        KeySource::Custom(Arc::new(f))
    }

    /// Where this source looks, for error messages and logs.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Header(name) => format!("header {name}"),
            KeySource::KafkaKey => "Kafka record key".into(),
            KeySource::MessageId => "message_id".into(),
            KeySource::CorrelationId => "correlation_id".into(),
            KeySource::JsonPointer(p) => format!("JSON pointer {p}"),
            KeySource::Custom(_) => "custom key function".into(),
        }
    }

    /// The raw key of `msg` from this source: `None` when absent, `Err` when present but unusable
    /// before validation (not JSON, not a scalar, rejected by a custom function).
    pub(super) fn raw<'m>(
        &self,
        msg: &'m Message,
        json: &mut Option<Result<Value, String>>,
    ) -> Option<Result<Cow<'m, [u8]>, InvalidKeyReason>> {
        match self {
            KeySource::Header(name) => msg
                .header(name)
                .map(|v| Ok(Cow::Borrowed(v.unwrap_or_default()))),
            KeySource::KafkaKey => msg.kafka()?.key.as_deref().map(|k| Ok(Cow::Borrowed(k))),
            KeySource::MessageId => {
                let id = msg.amqp()?.properties.message_id.as_deref()?;
                Some(Ok(Cow::Borrowed(id.as_bytes())))
            }
            KeySource::CorrelationId => {
                let id = msg.amqp()?.properties.correlation_id.as_deref()?;
                Some(Ok(Cow::Borrowed(id.as_bytes())))
            }
            KeySource::JsonPointer(pointer) => {
                // Parsed at most once per message, however many pointer sources are configured.
                let parsed = json.get_or_insert_with(|| {
                    serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())
                });
                let value = match parsed {
                    Ok(value) => value.pointer(pointer)?,
                    Err(e) => return Some(Err(InvalidKeyReason::NotJson(e.clone()))),
                };
                Some(match value {
                    Value::String(s) => Ok(Cow::Owned(s.clone().into_bytes())),
                    Value::Number(n) => Ok(Cow::Owned(n.to_string().into_bytes())),
                    other => Err(InvalidKeyReason::NotScalar(json_kind(other))),
                })
            }
            KeySource::Custom(f) => Some(
                f(msg)?
                    .map(|s| Cow::Owned(s.into_bytes()))
                    .map_err(InvalidKeyReason::Rejected),
            ),
        }
    }

    /// The error for a key this source found but that cannot be used.
    pub(super) fn invalid(&self, reason: InvalidKeyReason) -> KeyError {
        KeyError::Invalid {
            origin: self.describe(),
            reason,
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeySource::KafkaKey => f.write_str("KafkaKey"),
            KeySource::MessageId => f.write_str("MessageId"),
            KeySource::CorrelationId => f.write_str("CorrelationId"),
            KeySource::JsonPointer(p) => f.debug_tuple("JsonPointer").field(p).finish(),
            KeySource::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}
