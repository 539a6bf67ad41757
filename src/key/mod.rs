//! Idempotency keys: where they are read from, what makes one valid, and what happens without one.
//!
//! ```
//! use idemq::{KeyConfig, Message, MissingKeyPolicy, Source};
//!
//! let config = KeyConfig::default();
//! let msg = Message::new("{}", Source::Other("doc".into())).with_header("Idempotency-Key", "order-42");
//! assert_eq!(config.extract(&msg).unwrap().as_str(), "order-42");
//! assert_eq!(config.missing, MissingKeyPolicy::Reject);
//! ```

mod error;

pub use error::{InvalidKeyReason, KeyError};

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
        validate(raw.as_bytes(), DEFAULT_MAX_KEY_LEN, "<argument>")?;
        Ok(IdempotencyKey(raw))
    }

    /// Rebuilds a key that a store wrote earlier (e.g. from a Redis key name): printable UTF-8 of
    /// any length, since the configured length limit was applied when the message was read.
    #[cfg_attr(not(any(feature = "redis", feature = "postgres")), allow(dead_code))]
    pub(crate) fn from_stored(raw: &str) -> Result<Self, KeyError> {
        validate(raw.as_bytes(), usize::MAX, "store").map(|s| IdempotencyKey(s.to_owned()))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
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
#[derive(Clone, Debug)]
pub struct KeyConfig {
    /// Header names tried in order (ASCII case-insensitive); default `["Idempotency-Key"]`.
    pub headers: Vec<String>,
    /// Fall back to the AMQP `message_id` property when no header is present.
    pub use_message_id: bool,
    /// Maximum key length in bytes (default 255).
    pub max_len: usize,
    /// Policy for missing or invalid keys.
    pub missing: MissingKeyPolicy,
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            headers: vec![headers::IDEMPOTENCY_KEY.to_string()],
            use_message_id: false,
            max_len: DEFAULT_MAX_KEY_LEN,
            missing: MissingKeyPolicy::Reject,
        }
    }
}

impl KeyConfig {
    /// Reads and validates the key of `msg`. The first configured header present wins, even if its
    /// value is invalid: silently falling through to another header would hide a producer bug.
    pub fn extract(&self, msg: &Message) -> Result<IdempotencyKey, KeyError> {
        for name in &self.headers {
            if let Some(value) = msg.header(name) {
                let value = value.unwrap_or_default();
                return validate(value, self.max_len, name).map(|s| IdempotencyKey(s.to_owned()));
            }
        }
        if self.use_message_id {
            if let Some(id) = &msg.message_id {
                return validate(id.as_bytes(), self.max_len, "message_id")
                    .map(|s| IdempotencyKey(s.to_owned()));
            }
        }
        Err(KeyError::Missing {
            looked_in: self.headers.clone(),
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

fn validate<'a>(raw: &'a [u8], max_len: usize, source: &str) -> Result<&'a str, KeyError> {
    let invalid = |reason| KeyError::Invalid {
        origin: source.to_string(),
        reason,
    };
    if raw.is_empty() {
        return Err(invalid(InvalidKeyReason::Empty));
    }
    if raw.len() > max_len {
        return Err(invalid(InvalidKeyReason::TooLong {
            len: raw.len(),
            max: max_len,
        }));
    }
    let s = std::str::from_utf8(raw).map_err(|_| invalid(InvalidKeyReason::NotUtf8))?;
    if s.chars().any(char::is_control) {
        return Err(invalid(InvalidKeyReason::NotPrintable));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Header, Source};

    fn msg() -> Message {
        Message::new("p", Source::Other("t".into()))
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
    fn missing_key_is_typed() {
        let err = KeyConfig::default().extract(&msg()).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert_eq!(err.reason(), crate::DeadLetterReason::MissingKey);
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
            match cfg.extract(&m) {
                Err(KeyError::Invalid { reason, .. }) => {
                    assert!(check(&reason), "{raw:?}: {reason:?}")
                }
                other => panic!("{raw:?}: expected invalid, got {other:?}"),
            }
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
        assert!(matches!(
            KeyConfig::default().extract(&m),
            Err(KeyError::Invalid {
                reason: InvalidKeyReason::Empty,
                ..
            })
        ));
    }

    #[test]
    fn message_id_fallback_and_header_order() {
        let cfg = KeyConfig {
            headers: vec!["X-A".into(), "X-B".into()],
            use_message_id: true,
            ..KeyConfig::default()
        };
        let mut m = msg().with_header("X-B", "b");
        m.message_id = Some("mid".into());
        assert_eq!(cfg.extract(&m).unwrap().as_str(), "b");
        m.headers.clear();
        assert_eq!(cfg.extract(&m).unwrap().as_str(), "mid");
    }

    #[test]
    fn derived_key_depends_on_payload_only() {
        let a = derive_from_payload(&msg());
        let b = derive_from_payload(&msg().with_header("x", "y"));
        assert_eq!(a, b);
        assert!(a.as_str().starts_with("sha256:"));
    }
}
