//! Redis key layout: `{prefix}:{<hash tag>}:<scope>:<key>`.
//!
//! - The hash tag is 16 hex digits of SHA-256 over the length-prefixed (scope, key), so every key of
//!   one record lands in one Cluster slot while records spread evenly over slots.
//! - The scope is percent-encoded for `%` and `:` so it never contains the separator; a SCAN pattern
//!   for one scope therefore cannot match another scope (`a` vs `a:b`, or `a` vs `a-x`).
//! - The idempotency key is stored verbatim at the end (it may contain anything printable).

use crate::key::IdempotencyKey;
use crate::store::RecordKey;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// Length of the hex hash tag between the braces.
const TAG_LEN: usize = 16;

/// Key names for one prefix.
#[derive(Clone, Debug)]
pub(crate) struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// A layout for `prefix`; the prefix must not contain braces (they would move the hash tag).
    pub(crate) fn new(prefix: &str) -> Result<Self, String> {
        if prefix.is_empty() {
            return Err("key prefix must not be empty".into());
        }
        if prefix.contains(['{', '}']) {
            return Err(format!(
                "key prefix {prefix:?} must not contain '{{' or '}}': they would change the Cluster hash tag"
            ));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// The Redis key holding the record of `key`.
    pub(crate) fn record(&self, record: &RecordKey) -> String {
        // Built by hand: this runs twice per message (claim and complete), and `format!` plus a
        // `format!` per hex digit pair showed up in the consumer's profile.
        let key = record.key.as_str();
        let scope = encode_scope(&record.scope);
        let mut out =
            String::with_capacity(self.prefix.len() + TAG_LEN + scope.len() + key.len() + 6);
        out.push_str(&self.prefix);
        out.push_str(":{");
        out.push_str(&hash_tag(&record.scope, key));
        out.push_str("}:");
        out.push_str(&scope);
        out.push(':');
        out.push_str(key);
        out
    }

    /// A SCAN `MATCH` pattern selecting exactly the records of `scope`.
    pub(crate) fn scan_pattern(&self, scope: &str) -> String {
        format!(
            "{}:{{{}}}:{}:*",
            escape_glob(&self.prefix),
            "?".repeat(TAG_LEN),
            escape_glob(&encode_scope(scope))
        )
    }

    /// Parses a Redis key back into the record key; `Err` explains why it is not one of ours.
    pub(crate) fn parse(&self, redis_key: &[u8]) -> Result<RecordKey, String> {
        let text =
            std::str::from_utf8(redis_key).map_err(|_| "key name is not UTF-8".to_string())?;
        let rest = text
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(":{"))
            .ok_or("key name does not start with the prefix")?;
        let (tag, rest) = rest
            .split_at_checked(TAG_LEN)
            .ok_or("key name has no hash tag")?;
        let rest = rest.strip_prefix("}:").ok_or("key name has no hash tag")?;
        let (scope, key) = rest.split_once(':').ok_or("key name has no scope")?;
        let scope = decode_scope(scope).ok_or("scope is not validly encoded")?;
        let key =
            IdempotencyKey::from_stored(key).map_err(|e| format!("stored key is invalid: {e}"))?;
        if hash_tag(&scope, key.as_str()) != tag {
            return Err("hash tag does not match scope and key".into());
        }
        Ok(RecordKey::new(scope, key))
    }
}

fn hash_tag(scope: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update((scope.len() as u64).to_be_bytes());
    h.update(scope.as_bytes());
    h.update(key.as_bytes());
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut tag = String::with_capacity(TAG_LEN);
    for b in &digest[..TAG_LEN / 2] {
        tag.push(char::from(HEX[usize::from(b >> 4)]));
        tag.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    tag
}

fn encode_scope(scope: &str) -> Cow<'_, str> {
    if scope.contains(['%', ':']) {
        Cow::Owned(scope.replace('%', "%25").replace(':', "%3A"))
    } else {
        Cow::Borrowed(scope)
    }
}

fn decode_scope(encoded: &str) -> Option<String> {
    let mut out = String::with_capacity(encoded.len());
    let mut parts = encoded.split('%');
    out.push_str(parts.next()?);
    for part in parts {
        match part.get(..2) {
            Some("25") => out.push('%'),
            Some("3A") => out.push(':'),
            _ => return None,
        }
        out.push_str(&part[2..]);
    }
    Some(out)
}

/// Escapes the characters Redis glob patterns treat specially.
fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rk(scope: &str, key: &str) -> RecordKey {
        RecordKey::new(scope, IdempotencyKey::new(key).unwrap())
    }

    #[test]
    fn layout_has_prefix_hash_tag_scope_and_key() {
        let l = KeyLayout::new("idemq").unwrap();
        let k = l.record(&rk("billing", "order-1"));
        let (head, tail) = k.split_once("}:").unwrap();
        assert!(head.starts_with("idemq:{"));
        assert_eq!(head.len(), "idemq:{".len() + TAG_LEN);
        assert_eq!(tail, "billing:order-1");
    }

    #[test]
    fn names_are_what_the_format_says_so_existing_records_stay_found() {
        // The layout written out the slow, obvious way; the fast path must match it exactly.
        let l = KeyLayout::new("idemq").unwrap();
        for (scope, key) in [("billing", "order-1"), ("a:b%c", "k:1"), ("", "x")] {
            let mut h = Sha256::new();
            h.update((scope.len() as u64).to_be_bytes());
            h.update(scope.as_bytes());
            h.update(key.as_bytes());
            let tag: String = h.finalize()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let scope_enc = scope.replace('%', "%25").replace(':', "%3A");
            let expected = format!("idemq:{{{tag}}}:{scope_enc}:{key}");
            assert_eq!(l.record(&rk(scope, key)), expected);
        }
    }

    #[test]
    fn scope_separators_cannot_collide() {
        let l = KeyLayout::new("p").unwrap();
        let a = l.record(&rk("a", "b:c"));
        let b = l.record(&rk("a:b", "c"));
        assert_ne!(a, b);
        assert_eq!(l.parse(a.as_bytes()).unwrap(), rk("a", "b:c"));
        assert_eq!(l.parse(b.as_bytes()).unwrap(), rk("a:b", "c"));
    }

    #[test]
    fn awkward_scopes_round_trip() {
        let l = KeyLayout::new("p:q").unwrap();
        for scope in ["%3A", "a%b", "x:y:z", "*?[", "{t}", ""] {
            let k = rk(scope, "{k}:*");
            assert_eq!(l.parse(l.record(&k).as_bytes()).unwrap(), k, "{scope}");
        }
    }

    #[test]
    fn keys_longer_than_the_default_limit_parse() {
        // A consumer may raise `KeyConfig::max_len`; scan must still read such records back.
        let l = KeyLayout::new("p").unwrap();
        let long = "k".repeat(1000);
        let k = RecordKey::new("s", IdempotencyKey::from_stored(&long).unwrap());
        assert_eq!(l.parse(l.record(&k).as_bytes()).unwrap(), k);
    }

    #[test]
    fn tampered_names_are_rejected() {
        let l = KeyLayout::new("p").unwrap();
        let k = l.record(&rk("s", "k"));
        assert!(l.parse(k.replace(":s:", ":t:").as_bytes()).is_err());
        assert!(l.parse(b"p:{short}:s:k").is_err());
        assert!(l.parse(b"other:{0123456789abcdef}:s:k").is_err());
    }

    #[test]
    fn glob_characters_are_escaped() {
        let l = KeyLayout::new("a*").unwrap();
        assert_eq!(
            l.scan_pattern("s?[x]"),
            format!("a\\*:{{{}}}:s\\?\\[x\\]:*", "?".repeat(TAG_LEN))
        );
    }

    #[test]
    fn braces_in_prefix_are_refused() {
        assert!(KeyLayout::new("a{b").is_err());
        assert!(KeyLayout::new("").is_err());
    }
}
