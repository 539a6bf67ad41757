//! Idempotency keys: where they are read from, what makes one valid, what happens without one,
//! and the [`Scope`] they are claimed in.
//!
//! # The key rule (both brokers)
//!
//! A [`KeyConfig`] holds a list of [`KeySource`]s: a header, the Kafka record key, the AMQP
//! `message_id` or `correlation_id`, a JSON pointer into the payload, or a function of the
//! message. They are tried in order and **the first source present wins**. A present value that
//! is not a valid key (empty, longer than [`KeyConfig::max_len`], not printable UTF-8, a JSON
//! object, a payload that is not JSON under a JSON-pointer source) is an error, never a reason to
//! try the next source: falling through would quietly key the same message two different ways
//! once a producer bug appears. With no source present the key is missing. Missing and invalid
//! keys follow [`MissingKeyPolicy`] (default: dead-letter with `missing-idempotency-key` /
//! `invalid-idempotency-key`). Sources that cannot occur on a broker (the Kafka key on RabbitMQ,
//! AMQP properties on Kafka) are simply never present there, so one configuration serves both.
//!
//! # The scope rule
//!
//! A key is claimed in a scope, and each message in its own: the engine resolves the
//! [`Scope`] for every message before it claims. The Kafka consumer's default is its group id,
//! the AMQP consumer's its queue name; [`Scope::PerTopic`] gives every Kafka topic its own
//! namespace (`{group}/{topic}`), [`Scope::Custom`] lets a function choose. There is no shared
//! default: an [`EngineConfig`](crate::EngineConfig) is always built with a scope.
//!
//! ```
//! use idemq::key::{KeyConfig, KeySource};
//! use idemq::message::{AmqpMetadata, AmqpProperties};
//! use idemq::{Message, MissingKeyPolicy, Source};
//!
//! let config = KeyConfig::default();
//! let msg = Message::new("{}", Source::Other("doc".into())).with_header("Idempotency-Key", "order-42");
//! assert_eq!(config.extract(&msg).unwrap().as_str(), "order-42");
//! assert_eq!(config.missing, MissingKeyPolicy::Reject);
//!
//! // A header first, then the AMQP correlation id.
//! let config = KeyConfig::new([KeySource::header("Idempotency-Key"), KeySource::CorrelationId]);
//! let props = AmqpProperties::default().with_correlation_id("req-7");
//! let msg = Message::from_amqp("{}", AmqpMetadata::new("q", "", "q", 1).with_properties(props));
//! assert_eq!(config.extract(&msg).unwrap().as_str(), "req-7");
//! ```

mod error;
mod logging;
mod scope;
mod source;

pub use error::{InvalidKeyReason, KeyError};
pub use logging::{KeyLogging, ShownKey};
pub use scope::{Scope, ScopeFn};
pub use source::{KeyFn, KeySource};

use crate::fingerprint::Fingerprint;
use crate::headers;
use crate::message::Message;
use std::fmt;

/// Default maximum key length in bytes.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1..=limit bytes of printable UTF-8.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates `raw` against the default length limit.
    pub fn new(raw: impl Into<String>) -> Result<Self, KeyError> {
        let raw = raw.into();
        validate(raw.as_bytes(), DEFAULT_MAX_KEY_LEN).map_err(|reason| KeyError::Invalid {
            origin: "argument".into(),
            reason,
        })?;
        Ok(IdempotencyKey(raw))
    }

    /// Rebuilds a key that a store wrote earlier (e.g. from a Redis key name): printable UTF-8 of
    /// any length, since the configured length limit was applied when the message was read.
    #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_stored(raw: &str) -> Result<Self, KeyError> {
        validate(raw.as_bytes(), usize::MAX)
            .map(|s| IdempotencyKey(s.to_owned()))
            .map_err(|reason| KeyError::Invalid {
                origin: "store".into(),
                reason,
            })
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Serialized as its text, so a key can go straight into logs, JSON lines and outcomes.
impl serde::Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({:?})", self.0)
    }
}

/// What to do with a message whose key is missing or invalid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingKeyPolicy {
    /// Dead-letter it with reason `missing-idempotency-key` / `invalid-idempotency-key` (default).
    #[default]
    Reject,
    /// Run the handler without deduplication and log a warning.
    ProcessWithoutDedup,
    /// Use the SHA-256 of the payload (hex) as the key.
    DeriveFromPayload,
}

/// Where keys come from and what makes them valid.
///
/// The [`sources`](Self::sources) are tried in order and the first one present wins; see
/// [`KeySource`] for what "present" means for each.
///
/// ```
/// use idemq::key::{KeyConfig, KeySource};
/// use idemq::MissingKeyPolicy;
///
/// let keys = KeyConfig::new([KeySource::CorrelationId, KeySource::MessageId])
///     .max_len(128)
///     .missing(MissingKeyPolicy::DeriveFromPayload);
/// assert_eq!(keys.sources.len(), 2);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyConfig {
    /// Where the key is read from, in order; default `[Header("Idempotency-Key")]`.
    pub sources: Vec<KeySource>,
    /// Maximum key length in bytes (default 255).
    pub max_len: usize,
    /// Policy for missing or invalid keys.
    pub missing: MissingKeyPolicy,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self::new([KeySource::header(headers::IDEMPOTENCY_KEY)])
    }
}

impl KeyConfig {
    /// The given sources with the default length limit and [`MissingKeyPolicy::Reject`].
    pub fn new(sources: impl IntoIterator<Item = KeySource>) -> Self {
        Self {
            sources: sources.into_iter().collect(),
            max_len: DEFAULT_MAX_KEY_LEN,
            missing: MissingKeyPolicy::Reject,
        }
    }

    /// Sets the maximum key length in bytes.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Sets the policy for missing or invalid keys.
    pub fn missing(mut self, policy: MissingKeyPolicy) -> Self {
        self.missing = policy;
        self
    }

    /// Reads and validates the key of `msg`. The first configured source present wins, even if its
    /// value is invalid: silently falling through to another source would hide a producer bug.
    pub fn extract(&self, msg: &Message) -> Result<IdempotencyKey, KeyError> {
        let mut json = None;
        for source in &self.sources {
            match source.raw(msg, &mut json) {
                None => continue,
                Some(Err(reason)) => return Err(source.invalid(reason)),
                Some(Ok(raw)) => {
                    return validate(&raw, self.max_len)
                        .map(|s| IdempotencyKey(s.to_owned()))
                        .map_err(|reason| source.invalid(reason))
                }
            }
        }
        Err(KeyError::Missing {
            looked_in: self.sources.iter().map(KeySource::describe).collect(),
        })
    }
}

/// The key [`MissingKeyPolicy::DeriveFromPayload`] uses: hex SHA-256 of the payload.
pub fn derive_from_payload(msg: &Message) -> IdempotencyKey {
    IdempotencyKey(format!(
        "sha256:{}",
        Fingerprint::of_bytes(&msg.payload).to_hex()
    ))
}

/// 1..=`max_len` bytes of printable UTF-8.
fn validate(raw: &[u8], max_len: usize) -> Result<&str, InvalidKeyReason> {
    if raw.is_empty() {
        return Err(InvalidKeyReason::Empty);
    }
    if raw.len() > max_len {
        return Err(InvalidKeyReason::TooLong {
            len: raw.len(),
            max: max_len,
        });
    }
    let s = std::str::from_utf8(raw).map_err(|_| InvalidKeyReason::NotUtf8)?;
    if s.chars().any(char::is_control) {
        return Err(InvalidKeyReason::NotPrintable);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AmqpMetadata, AmqpProperties, Header, KafkaMetadata, Source};

    fn msg() -> Message {
        Message::new("p", Source::Other("t".into()))
    }

    fn invalid(r: Result<IdempotencyKey, KeyError>) -> InvalidKeyReason {
        match r {
            Err(KeyError::Invalid { reason, .. }) => reason,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn reads_default_header_case_insensitively() {
        let m = msg().with_header("idempotency-key", "k1");
        assert_eq!(KeyConfig::default().extract(&m).unwrap().as_str(), "k1");
    }

    #[test]
    fn stored_keys_skip_the_length_limit_but_not_the_character_rules() {
        let long = "k".repeat(DEFAULT_MAX_KEY_LEN + 1);
        assert!(IdempotencyKey::new(long.clone()).is_err());
        assert_eq!(IdempotencyKey::from_stored(&long).unwrap().as_str(), long);
        assert!(IdempotencyKey::from_stored("a\u{1}b").is_err());
        assert!(IdempotencyKey::from_stored("").is_err());
    }

    #[test]
    fn missing_key_is_typed_and_names_the_sources() {
        let cfg = KeyConfig::new([KeySource::header("X"), KeySource::KafkaKey]);
        match cfg.extract(&msg()) {
            Err(KeyError::Missing { looked_in }) => {
                assert_eq!(looked_in, ["header X", "Kafka record key"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_keys_are_rejected_with_reasons() {
        let cfg = KeyConfig::default();
        type Check = fn(&InvalidKeyReason) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![], |r| matches!(r, InvalidKeyReason::Empty)),
            (vec![b'a'; 256], |r| {
                matches!(r, InvalidKeyReason::TooLong { len: 256, max: 255 })
            }),
            (vec![0xff, 0xfe], |r| matches!(r, InvalidKeyReason::NotUtf8)),
            (b"a\nb".to_vec(), |r| {
                matches!(r, InvalidKeyReason::NotPrintable)
            }),
        ];
        for (raw, check) in cases {
            let m = msg().with_header("Idempotency-Key", raw.clone());
            let reason = invalid(cfg.extract(&m));
            assert!(check(&reason), "{raw:?}: {reason:?}");
        }
        assert!(cfg
            .extract(&msg().with_header("Idempotency-Key", vec![b'a'; 255]))
            .is_ok());
    }

    #[test]
    fn header_without_value_is_invalid_not_missing() {
        let mut m = msg();
        m.headers.push(Header {
            name: "Idempotency-Key".into(),
            value: None,
        });
        assert_eq!(
            invalid(KeyConfig::default().extract(&m)),
            InvalidKeyReason::Empty
        );
    }

    #[test]
    fn first_present_source_wins_in_order() {
        let cfg = KeyConfig::new([
            KeySource::header("X-A"),
            KeySource::header("X-B"),
            KeySource::MessageId,
        ]);
        let props = AmqpProperties::default().with_message_id("mid");
        let m = Message::from_amqp(
            "p",
            AmqpMetadata::new("q", "", "q", 1).with_properties(props),
        )
        .with_header("X-B", "b");
        assert_eq!(cfg.extract(&m).unwrap().as_str(), "b");
        let mut m = m;
        m.headers.clear();
        assert_eq!(cfg.extract(&m).unwrap().as_str(), "mid");
        // A present but invalid source does not fall through.
        let m = m.with_header("X-A", "");
        assert_eq!(invalid(cfg.extract(&m)), InvalidKeyReason::Empty);
    }

    #[test]
    fn kafka_key_and_amqp_properties() {
        let cfg = KeyConfig::new([KeySource::KafkaKey, KeySource::CorrelationId]);
        let kafka = |key: Option<&'static str>| {
            let mut meta = KafkaMetadata::new("t", 0, 1);
            meta.key = key.map(|k: &'static str| bytes::Bytes::from_static(k.as_bytes()));
            Message::from_kafka("p", meta)
        };
        assert_eq!(cfg.extract(&kafka(Some("rk"))).unwrap().as_str(), "rk");
        assert_eq!(
            invalid(cfg.extract(&kafka(Some("")))),
            InvalidKeyReason::Empty
        );
        assert!(matches!(
            cfg.extract(&kafka(None)),
            Err(KeyError::Missing { .. })
        ));
        let props = AmqpProperties::default()
            .with_correlation_id("cid")
            .with_message_id("mid");
        let amqp = Message::from_amqp(
            "p",
            AmqpMetadata::new("q", "", "q", 1).with_properties(props),
        );
        assert_eq!(cfg.extract(&amqp).unwrap().as_str(), "cid");
    }

    #[test]
    fn json_pointer_takes_strings_and_numbers() {
        let cfg = KeyConfig::new([
            KeySource::json_pointer("/order/id"),
            KeySource::json_pointer("/id"),
        ]);
        let m = |p: &'static str| Message::new(p, Source::Other("t".into()));
        assert_eq!(
            cfg.extract(&m(r#"{"order":{"id":"o-1"}}"#))
                .unwrap()
                .as_str(),
            "o-1"
        );
        assert_eq!(
            cfg.extract(&m(r#"{"order":{"id":17}}"#)).unwrap().as_str(),
            "17"
        );
        // Absent first pointer: the second is tried.
        assert_eq!(cfg.extract(&m(r#"{"id":"x"}"#)).unwrap().as_str(), "x");
        assert!(matches!(
            cfg.extract(&m("{}")),
            Err(KeyError::Missing { .. })
        ));
        assert_eq!(
            invalid(cfg.extract(&m(r#"{"order":{"id":{"a":1}}}"#))),
            InvalidKeyReason::NotScalar("an object")
        );
        assert_eq!(
            invalid(cfg.extract(&m(r#"{"order":{"id":null}}"#))),
            InvalidKeyReason::NotScalar("null")
        );
        assert!(matches!(
            invalid(cfg.extract(&m("not json"))),
            InvalidKeyReason::NotJson(_)
        ));
        assert!(matches!(
            invalid(cfg.extract(&m(r#"{"order":{"id":""}}"#))),
            InvalidKeyReason::Empty
        ));
    }

    #[test]
    fn custom_sources() {
        let cfg = KeyConfig::new([
            KeySource::custom_checked(|m| m.header("bad").map(|_| Err("bad header".into()))),
            KeySource::custom(|m| Some(format!("len-{}", m.payload.len()))),
        ]);
        assert_eq!(cfg.extract(&msg()).unwrap().as_str(), "len-1");
        match cfg.extract(&msg().with_header("bad", "1")) {
            Err(e @ KeyError::Invalid { .. }) => {
                assert!(
                    e.to_string().contains("custom key function: bad header"),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn derived_key_depends_on_payload_only() {
        let a = derive_from_payload(&msg());
        let b = derive_from_payload(&msg().with_header("x", "y"));
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("sha256:"));
    }
}
