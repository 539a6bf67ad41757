//! [`FingerprintRule`]: which parts of a message its fingerprint covers.

use super::canonical::write_canonical;
use super::Fingerprint;
use crate::message::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A payload that a JSON fingerprint rule cannot read.
///
/// The engine dead-letters such a message with reason `invalid-payload` (it would fail the same
/// way on every delivery).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// The rule reads JSON fields and the payload is not JSON (the parser's message).
    #[error("the fingerprint rule reads JSON fields, but the payload is not JSON: {0}")]
    NotJson(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Content {
    #[default]
    WholePayload,
    JsonPointers(Vec<String>),
    ExcludeFields(Vec<String>),
    KeyOnly,
}

/// Which parts of a message its fingerprint covers.
///
/// The fingerprint is stored with a key's record; a later message with the same key and the same
/// fingerprint is a replay (acked with the stored outcome), one with another fingerprint a
/// **conflict** (dead-lettered with `idempotency-key-conflict`). A producer that re-serializes
/// its JSON (other key order, other whitespace) or stamps a field such as `sent_at` on every send
/// turns its own retries into conflicts under the default rule; choose what counts:
///
/// | rule | covers | risk |
/// |---|---|---|
/// | [`whole_payload`](Self::whole_payload) (default) | every payload byte | re-serialized or re-stamped copies conflict |
/// | [`json_pointers`](Self::json_pointers) | only the chosen JSON values | a change anywhere else is not seen: the copy is a replay |
/// | [`exclude_fields`](Self::exclude_fields) | the JSON minus the chosen values | a real change in an excluded field is not seen |
/// | [`key_only`](Self::key_only) | nothing | a producer that reuses a key for a different message is never detected: that message is acked as a replay, and never runs |
///
/// The JSON rules read the payload as JSON and hash a canonical form (object keys sorted, no
/// whitespace), so key order and formatting do not matter; numbers are compared as written
/// (`1.0` and `1` differ). A payload that is not JSON is a permanent failure under them
/// ([`FingerprintError`], dead-letter reason `invalid-payload`). Missing pointers are allowed and
/// count as missing (a value that appears later is a change).
///
/// [`with_headers`](Self::with_headers) adds chosen headers to any rule (with `key_only`, the
/// headers alone are the fingerprint).
///
/// Changing the rule of a running consumer changes the fingerprints of new messages: records
/// written under the old rule then conflict with copies of their messages until they expire
/// (retention). The default rule hashes exactly as earlier versions did.
///
/// ```
/// use idemq::fingerprint::FingerprintRule;
/// use idemq::{Message, Source};
///
/// let rule = FingerprintRule::exclude_fields(["/sent_at"]);
/// let first = Message::new(r#"{"id":1,"amount":5,"sent_at":"10:00"}"#, Source::Other("doc".into()));
/// let retry = Message::new(r#"{ "sent_at": "10:05", "amount": 5, "id": 1 }"#, Source::Other("doc".into()));
/// assert_eq!(rule.fingerprint(&first), rule.fingerprint(&retry));
/// assert_ne!(
///     FingerprintRule::default().fingerprint(&first),
///     FingerprintRule::default().fingerprint(&retry),
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FingerprintRule {
    content: Content,
    headers: Vec<String>,
}

impl FingerprintRule {
    /// Every payload byte (the default).
    pub fn whole_payload() -> Self {
        Self::default()
    }

    /// Only the values at these JSON pointers (RFC 6901, e.g. `/order/id`), in the given order.
    pub fn json_pointers<I, S>(pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_content(Content::JsonPointers(
            pointers.into_iter().map(Into::into).collect(),
        ))
    }

    /// The whole JSON payload without the values at these pointers (e.g. `/sent_at`). Removing an
    /// array element shifts the ones after it, so prefer object fields.
    pub fn exclude_fields<I, S>(pointers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_content(Content::ExcludeFields(
            pointers.into_iter().map(Into::into).collect(),
        ))
    }

    /// No payload fingerprint: a message with a known key is always a replay, never a conflict.
    pub fn key_only() -> Self {
        Self::with_content(Content::KeyOnly)
    }

    /// Adds headers (ASCII case-insensitive names) whose values take part, in this order.
    pub fn with_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.headers.extend(names.into_iter().map(Into::into));
        self
    }

    /// The headers that take part.
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// Whether the rule reads the payload as JSON.
    pub fn reads_json(&self) -> bool {
        matches!(
            self.content,
            Content::JsonPointers(_) | Content::ExcludeFields(_)
        )
    }

    fn with_content(content: Content) -> Self {
        Self {
            content,
            headers: Vec::new(),
        }
    }

    /// Checks the pointers (each must be empty or start with `/`).
    pub fn validate(&self) -> Result<(), String> {
        let pointers = match &self.content {
            Content::JsonPointers(p) | Content::ExcludeFields(p) => p,
            _ => return Ok(()),
        };
        match pointers
            .iter()
            .find(|p| !p.is_empty() && !p.starts_with('/'))
        {
            Some(bad) => Err(format!(
                "fingerprint JSON pointer {bad:?} must start with '/'"
            )),
            None => Ok(()),
        }
    }

    /// The fingerprint of `message` under this rule.
    pub fn fingerprint(&self, message: &Message) -> Result<Fingerprint, FingerprintError> {
        let mut h = Sha256::new();
        match &self.content {
            // Exactly the hash of earlier versions, so existing records keep matching.
            Content::WholePayload => return Ok(Fingerprint::of(message, &self.headers)),
            Content::JsonPointers(pointers) => {
                let doc = parse(message)?;
                h.update(b"idemq-fp-json-pointers-v1");
                let mut buf = Vec::new();
                for p in pointers {
                    put(&mut h, p.as_bytes());
                    match doc.pointer(p) {
                        Some(v) => {
                            buf.clear();
                            write_canonical(v, &mut buf);
                            h.update([1]);
                            put(&mut h, &buf);
                        }
                        None => h.update([0]),
                    }
                }
            }
            Content::ExcludeFields(pointers) => {
                let mut doc = parse(message)?;
                for p in pointers {
                    remove(&mut doc, p);
                }
                let mut buf = Vec::new();
                write_canonical(&doc, &mut buf);
                h.update(b"idemq-fp-json-exclude-v1");
                put(&mut h, &buf);
            }
            Content::KeyOnly => h.update(b"idemq-fp-key-only-v1"),
        }
        super::hash_headers(&mut h, message, &self.headers);
        Ok(Fingerprint(h.finalize().into()))
    }
}

fn parse(message: &Message) -> Result<Value, FingerprintError> {
    serde_json::from_slice(&message.payload).map_err(|e| FingerprintError::NotJson(e.to_string()))
}

/// Length-prefixed, so moving bytes between parts changes the hash.
fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Removes the value at `pointer` (nothing if it is absent; the whole document becomes `null`).
fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        if pointer.is_empty() {
            *doc = Value::Null;
        }
        return;
    };
    let token = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(&token);
        }
        Some(Value::Array(items)) => {
            if let Ok(i) = token.parse::<usize>() {
                if i < items.len() {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Source;

    fn msg(p: &'static str) -> Message {
        Message::new(p, Source::Other("t".into()))
    }

    fn fp(rule: &FingerprintRule, p: &'static str) -> Fingerprint {
        rule.fingerprint(&msg(p)).unwrap()
    }

    #[test]
    fn whole_payload_is_the_historic_hash() {
        let m = msg("a").with_header("tenant", "1");
        let names = vec!["tenant".to_string()];
        assert_eq!(
            FingerprintRule::default().fingerprint(&m).unwrap(),
            Fingerprint::of(&m, &[])
        );
        assert_eq!(
            FingerprintRule::default()
                .with_headers(["tenant"])
                .fingerprint(&m)
                .unwrap(),
            Fingerprint::of(&m, &names)
        );
        // Pinned values (SHA-256 of the documented v1 layout), so records written by earlier
        // versions keep matching.
        assert_eq!(
            FingerprintRule::default()
                .fingerprint(&msg("a"))
                .unwrap()
                .to_hex(),
            "ce0ffdeedc2c7292265adc8d9cb3ecce6040518bde0dd13eb16a3905fe49dfc6"
        );
        assert_eq!(
            FingerprintRule::default()
                .with_headers(["Tenant"])
                .fingerprint(&m)
                .unwrap()
                .to_hex(),
            "a8c7b86a4f6ca102a312de80b770f660f282b6de8dd927f787330a2214612827"
        );
        // Not JSON is fine for the byte rule.
        assert!(FingerprintRule::default()
            .fingerprint(&msg("\u{1}"))
            .is_ok());
    }

    #[test]
    fn json_rules_ignore_key_order_and_whitespace() {
        for rule in [
            FingerprintRule::exclude_fields(Vec::<String>::new()),
            FingerprintRule::json_pointers(["/a", "/b"]),
        ] {
            assert_eq!(
                fp(&rule, r#"{"a":1,"b":{"x":[1,2],"y":"s"}}"#),
                fp(&rule, r#"{ "b": { "y": "s", "x": [1, 2] }, "a": 1 }"#)
            );
            assert_ne!(fp(&rule, r#"{"a":1,"b":2}"#), fp(&rule, r#"{"a":1,"b":3}"#));
        }
    }

    #[test]
    fn pointers_cover_only_their_values() {
        let rule = FingerprintRule::json_pointers(["/id", "/amount"]);
        assert_eq!(
            fp(&rule, r#"{"id":1,"amount":5,"sent_at":"a"}"#),
            fp(&rule, r#"{"id":1,"amount":5,"sent_at":"b"}"#)
        );
        assert_ne!(
            fp(&rule, r#"{"id":1,"amount":5}"#),
            fp(&rule, r#"{"id":1,"amount":6}"#)
        );
        // Absent differs from null and from moved values.
        assert_ne!(
            fp(&rule, r#"{"id":1}"#),
            fp(&rule, r#"{"id":1,"amount":null}"#)
        );
        assert_ne!(
            fp(&rule, r#"{"id":5,"amount":1}"#),
            fp(&rule, r#"{"id":1,"amount":5}"#)
        );
    }

    #[test]
    fn excluded_fields_do_not_count() {
        let rule = FingerprintRule::exclude_fields(["/meta/sent_at", "/items/0", "/a~1b"]);
        assert_eq!(
            fp(
                &rule,
                r#"{"x":1,"meta":{"sent_at":1,"by":"p"},"items":[9,2],"a/b":1}"#
            ),
            fp(
                &rule,
                r#"{"x":1,"meta":{"sent_at":2,"by":"p"},"items":[8,2],"a/b":2}"#
            )
        );
        assert_ne!(
            fp(&rule, r#"{"x":1,"meta":{"by":"p"}}"#),
            fp(&rule, r#"{"x":2,"meta":{"by":"p"}}"#)
        );
    }

    #[test]
    fn key_only_ignores_the_payload_but_not_chosen_headers() {
        let rule = FingerprintRule::key_only();
        assert_eq!(fp(&rule, "a"), fp(&rule, "not json at all"));
        let rule = rule.with_headers(["tenant"]);
        let a = rule
            .fingerprint(&msg("x").with_header("tenant", "1"))
            .unwrap();
        let b = rule
            .fingerprint(&msg("y").with_header("tenant", "2"))
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn non_json_payload_is_a_typed_error() {
        let err = FingerprintRule::json_pointers(["/id"])
            .fingerprint(&msg("<xml/>"))
            .unwrap_err();
        assert!(matches!(err, FingerprintError::NotJson(_)));
        assert!(FingerprintRule::exclude_fields(["/x"])
            .fingerprint(&msg(""))
            .is_err());
    }

    #[test]
    fn pointers_are_validated() {
        assert!(FingerprintRule::json_pointers(["id"]).validate().is_err());
        assert!(FingerprintRule::json_pointers(["/id", ""])
            .validate()
            .is_ok());
    }
}
