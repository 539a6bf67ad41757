//! How idempotency keys appear in logs and spans.

use sha2::{Digest, Sha256};
use std::fmt;

/// How the engine writes a message's idempotency key into log lines and span fields
/// ([`EngineConfig::log_key`](crate::EngineConfig::log_key)).
///
/// Keys are often business ids, but some hold personal data (an e-mail address, an account
/// number). With [`Hashed`](Self::Hashed) logs and traces show a short hash instead: the same key
/// always gives the same hash, so one message can still be followed through the logs, and the
/// hash can be computed from a known key to search for it ([`KeyLogging::show`]). Dead-letter
/// error texts that name the key (a fingerprint conflict) use the same form. The store still
/// holds the key itself.
///
/// ```
/// use idemq::key::KeyLogging;
///
/// assert_eq!(KeyLogging::Plain.show("jane@example.com").to_string(), "jane@example.com");
/// let hashed = KeyLogging::Hashed.show("jane@example.com").to_string();
/// assert!(hashed.starts_with("sha256:") && hashed.len() == 7 + 16);
/// assert!(!hashed.contains("jane"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyLogging {
    /// The key as it is (default).
    #[default]
    Plain,
    /// `sha256:` and the first 16 hex digits of the SHA-256 of `idemq-key:` followed by the key.
    Hashed,
}

/// Prefix hashed with the key, so the hash is not a bare SHA-256 of it (which precomputed tables
/// of common values, e.g. e-mail addresses, could reverse directly).
const HASH_PREFIX: &[u8] = b"idemq-key:";

impl KeyLogging {
    /// `key` as logs and spans show it; formats lazily (nothing is hashed unless it is written).
    pub fn show(self, key: &str) -> ShownKey<'_> {
        ShownKey { key, how: self }
    }
}

/// An idempotency key as [`KeyLogging`] shows it; see [`KeyLogging::show`].
#[derive(Clone, Copy, Debug)]
pub struct ShownKey<'a> {
    key: &'a str,
    how: KeyLogging,
}

impl fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.how {
            KeyLogging::Plain => f.write_str(self.key),
            KeyLogging::Hashed => {
                let digest = Sha256::new()
                    .chain_update(HASH_PREFIX)
                    .chain_update(self.key.as_bytes())
                    .finalize();
                f.write_str("sha256:")?;
                digest[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_distinct() {
        let a = KeyLogging::Hashed.show("a").to_string();
        assert_eq!(a, KeyLogging::Hashed.show("a").to_string());
        assert_ne!(a, KeyLogging::Hashed.show("b").to_string());
        assert!(a[7..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
