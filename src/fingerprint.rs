//! Payload fingerprints: SHA-256 over the payload (or the parts a [`FingerprintRule`] chooses)
//! and, optionally, chosen headers.
//!
//! The fingerprint is stored with each record so that a true replay (same key, same content) can be
//! told apart from a key reused for a different message, which is a conflict. See
//! [`FingerprintRule`] for choosing what counts, and the risks of each choice.

mod canonical;
mod rule;

pub use rule::{FingerprintError, FingerprintRule};

use crate::message::Message;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A SHA-256 fingerprint of a message's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of the payload plus the named headers (in the given order).
    ///
    /// Every part is length-prefixed so that moving bytes between parts changes the result.
    pub fn of(message: &Message, headers: &[String]) -> Self {
        let mut h = Sha256::new();
        h.update(b"idemq-fp-v1");
        h.update((message.payload.len() as u64).to_be_bytes());
        h.update(&message.payload);
        hash_headers(&mut h, message, headers);
        Fingerprint(h.finalize().into())
    }

    /// Fingerprint of raw bytes (no header mixing).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Fingerprint(Sha256::digest(bytes).into())
    }

    /// Lower-case hex form, as stored by the text-based stores.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 15) as usize]));
        }
        s
    }
}

/// Mixes the named headers of `message` (name, then absent / no value / value) into `h`.
fn hash_headers(h: &mut Sha256, message: &Message, headers: &[String]) {
    for name in headers {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.to_ascii_lowercase().as_bytes());
        match message.header(name) {
            Some(Some(v)) => {
                h.update([1]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
            Some(None) => h.update([2]),
            None => h.update([0]),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Error parsing a hex fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("fingerprint is not 64 hex digits")]
pub struct ParseFingerprintError;

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(ParseFingerprintError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(ParseFingerprintError)?;
            let lo = hex_val(pair[1]).ok_or(ParseFingerprintError)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Source;

    fn msg(p: &'static str) -> Message {
        Message::new(p, Source::Other("t".into()))
    }

    #[test]
    fn same_payload_same_fingerprint_different_payload_differs() {
        assert_eq!(
            Fingerprint::of(&msg("a"), &[]),
            Fingerprint::of(&msg("a"), &[])
        );
        assert_ne!(
            Fingerprint::of(&msg("a"), &[]),
            Fingerprint::of(&msg("b"), &[])
        );
    }

    #[test]
    fn chosen_headers_take_part() {
        let names = vec!["tenant".to_string()];
        let a = msg("x").with_header("tenant", "1");
        let b = msg("x").with_header("tenant", "2");
        assert_ne!(Fingerprint::of(&a, &names), Fingerprint::of(&b, &names));
        assert_eq!(Fingerprint::of(&a, &[]), Fingerprint::of(&b, &[]));
    }

    #[test]
    fn hex_round_trip() {
        let f = Fingerprint::of(&msg("a"), &[]);
        assert_eq!(f.to_hex().parse::<Fingerprint>().ok(), Some(f));
        assert!("zz".parse::<Fingerprint>().is_err());
    }
}
