//! Decoding script replies into store types. Nothing here panics: an unexpected reply is an error.

use super::scripts;
use crate::fingerprint::Fingerprint;
use crate::outcome::{Outcome, OutcomeStatus};
use crate::store::{Claim, Fence, Record, RecordKey, RecordState, StoreError, Token};
use redis::Value;
use std::time::{Duration, SystemTime};

/// A script reply: `{tag, fields…}`.
pub(crate) struct Reply<'a> {
    op: &'static str,
    key: &'a str,
    items: Vec<Value>,
}

impl<'a> Reply<'a> {
    /// Splits `value` for operation `op` on Redis key `key`; `{'corrupt', why}` becomes
    /// [`StoreError::Corrupt`].
    pub(crate) fn new(op: &'static str, key: &'a str, value: Value) -> Result<Self, StoreError> {
        let items = match value {
            Value::Array(items) => items,
            other => return Err(bad(op, format!("expected an array, got {other:?}"))),
        };
        let reply = Self { op, key, items };
        if reply.tag()? == "corrupt" {
            return Err(StoreError::Corrupt {
                key: key.to_string(),
                detail: reply.text(1)?,
            });
        }
        Ok(reply)
    }

    pub(crate) fn tag(&self) -> Result<String, StoreError> {
        self.text(0)
    }

    fn bytes(&self, i: usize) -> Result<&[u8], StoreError> {
        match self.items.get(i) {
            Some(Value::BulkString(b)) => Ok(b),
            Some(Value::SimpleString(s)) => Ok(s.as_bytes()),
            Some(Value::VerbatimString { text, .. }) => Ok(text.as_bytes()),
            other => Err(bad(
                self.op,
                format!("item {i}: expected a string, got {other:?}"),
            )),
        }
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        String::from_utf8(self.bytes(i)?.to_vec())
            .map_err(|_| bad(self.op, format!("item {i} is not UTF-8")))
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.items.get(i) {
            Some(Value::Int(n)) => Ok(*n),
            _ => self
                .text(i)?
                .parse()
                .map_err(|_| bad(self.op, format!("item {i}: expected an integer"))),
        }
    }

    fn unsigned(&self, i: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(i)?).map_err(|_| self.corrupt(format!("item {i} is negative")))
    }

    fn attempt(&self, i: usize) -> Result<u32, StoreError> {
        u32::try_from(self.unsigned(i)?).map_err(|_| self.corrupt("attempt out of range".into()))
    }

    fn fingerprint(&self, i: usize) -> Result<Fingerprint, StoreError> {
        self.text(i)?
            .parse()
            .map_err(|_| self.corrupt("bad field fp".into()))
    }

    fn outcome(&self, status: usize, body: usize) -> Result<Outcome, StoreError> {
        let status = OutcomeStatus::parse(&self.text(status)?)
            .ok_or_else(|| self.corrupt("bad field os".into()))?;
        Ok(Outcome {
            status,
            body: bytes::Bytes::copy_from_slice(self.bytes(body)?),
        })
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            key: self.key.to_string(),
            detail,
        }
    }

    /// `{'acquired', tok, att}`, `{'inflight', ms}`, `{'completed', os, ob}`, `{'conflict', fp}`.
    pub(crate) fn claim(self) -> Result<Claim, StoreError> {
        match self.tag()?.as_str() {
            "acquired" => Ok(Claim::Acquired {
                token: Token(self.unsigned(1)?),
                attempt: self.attempt(2)?,
            }),
            "inflight" => Ok(Claim::InFlight {
                retry_after: Duration::from_millis(self.unsigned(1)?),
            }),
            "completed" => Ok(Claim::Completed {
                outcome: self.outcome(1, 2)?,
            }),
            "conflict" => Ok(Claim::Conflict {
                stored: self.fingerprint(1)?,
            }),
            other => Err(bad(self.op, format!("unknown reply {other:?}"))),
        }
    }

    /// `{'held'}` or `{'lost'}`.
    pub(crate) fn fence(self) -> Result<Fence, StoreError> {
        match self.tag()?.as_str() {
            "held" => Ok(Fence::Held),
            "lost" => Ok(Fence::Lost),
            other => Err(bad(self.op, format!("unknown reply {other:?}"))),
        }
    }

    /// `{'absent'}` or `{'record', now, pttl, st, tok, fp, att, lease_left, os, ob, ca}`.
    pub(crate) fn record(self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        match self.tag()?.as_str() {
            "absent" => return Ok(None),
            "record" => {}
            other => return Err(bad(self.op, format!("unknown reply {other:?}"))),
        }
        let pttl = self.int(2)?;
        let state = match self.text(3)?.as_str() {
            "p" => RecordState::InProgress {
                lease_remaining: Duration::from_millis(self.unsigned(7)?),
            },
            "r" => RecordState::Released,
            "c" => RecordState::Completed {
                outcome: self.outcome(8, 9)?,
                completed_at: SystemTime::UNIX_EPOCH + Duration::from_millis(self.unsigned(10)?),
            },
            other => return Err(self.corrupt(format!("bad field st {other:?}"))),
        };
        Ok(Some(Record {
            key: key.clone(),
            token: Token(self.unsigned(4)?),
            fingerprint: self.fingerprint(5)?,
            attempt: self.attempt(6)?,
            state,
            // -1: no expiry set (only if someone PERSISTed the key).
            expires_in: u64::try_from(pttl).ok().map(Duration::from_millis),
        }))
    }
}

/// A record's value (format 2, see `scripts.rs`) as a plain `SET … NX GET` answers it, when it is
/// well-formed by the checks of the scripts' `parse`; only the fields a claim decides by.
#[derive(Debug, PartialEq)]
pub(crate) enum Stored<'a> {
    /// State `p`: the fingerprint and the lease end (server ms).
    InProgress { fp: &'a str, lease_end: u64 },
    /// State `r`.
    Released,
    /// State `c`: the fingerprint and the outcome.
    Completed { fp: &'a str, outcome: Outcome },
}

/// Parses a record's value: `2|<st>|<tok>|<att>|<lu>|<ca>|<os>|<fp>|<ob>`, each field checked as
/// the scripts' `parse` checks it (digits, lower-case hex fingerprint of 64, the fields the state
/// does not use empty). `None` for anything else (another version, a malformed field), which the
/// caller leaves to the script, whose answer names what is wrong.
pub(crate) fn stored(value: &[u8]) -> Option<Stored<'_>> {
    let mut fields = value.splitn(9, |b| *b == b'|');
    let mut next = || fields.next();
    let (version, st, tok, att) = (next()?, next()?, next()?, next()?);
    let (lu, ca, os, fp) = (next()?, next()?, next()?, next()?);
    let body = next()?;
    let digits = |f: &[u8]| f.iter().all(u8::is_ascii_digit);
    let number = |f: &[u8]| -> Option<u64> { std::str::from_utf8(f).ok()?.parse().ok() };
    let fields_ok = version == scripts::FORMAT_VERSION.as_bytes()
        && !tok.is_empty()
        && digits(tok)
        && !att.is_empty()
        && digits(att)
        && digits(lu)
        && digits(ca)
        && fp.len() == 64
        && fp.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !fields_ok {
        return None;
    }
    // Checked above: 64 ASCII hex digits.
    let fp = std::str::from_utf8(fp).ok()?;
    match st {
        b"c" if lu.is_empty() && !ca.is_empty() => {
            let status = OutcomeStatus::parse(std::str::from_utf8(os).ok()?)?;
            Some(Stored::Completed {
                fp,
                outcome: Outcome {
                    status,
                    body: bytes::Bytes::copy_from_slice(body),
                },
            })
        }
        b"p" if ca.is_empty() && os.is_empty() && body.is_empty() && !lu.is_empty() => {
            Some(Stored::InProgress {
                fp,
                lease_end: number(lu)?,
            })
        }
        b"r" if ca.is_empty() && os.is_empty() && body.is_empty() && lu.is_empty() => {
            Some(Stored::Released)
        }
        _ => None,
    }
}

/// An answer of the wrong shape: the server is not speaking our protocol, so transient.
pub(crate) fn bad(op: &'static str, detail: String) -> StoreError {
    StoreError::unavailable(op, format!("unexpected reply from Redis: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdempotencyKey;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    #[test]
    fn corrupt_reply_names_the_key() {
        let v = Value::Array(vec![s("corrupt"), s("bad field fp")]);
        match Reply::new("claim", "idemq:{x}:s:k", v) {
            Err(StoreError::Corrupt { key, detail }) => {
                assert_eq!(key, "idemq:{x}:s:k");
                assert_eq!(detail, "bad field fp");
            }
            _ => panic!("expected Corrupt"),
        }
    }

    #[test]
    fn odd_replies_are_errors_not_panics() {
        for v in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![s("acquired")]),
            Value::Array(vec![s("acquired"), Value::Int(-1), Value::Int(1)]),
            Value::Array(vec![s("acquired"), Value::Int(1), Value::Int(1 << 40)]),
            Value::Array(vec![s("completed"), s("maybe"), s("")]),
            Value::Array(vec![s("conflict"), s("zz")]),
            Value::Array(vec![s("what")]),
        ] {
            let r = Reply::new("claim", "k", v.clone()).and_then(Reply::claim);
            assert!(r.is_err(), "{v:?}");
        }
        let key = RecordKey::new("s", IdempotencyKey::new("k").unwrap());
        let v = Value::Array(vec![s("record"), Value::Int(0), Value::Int(5), s("q")]);
        assert!(Reply::new("get", "k", v)
            .and_then(|r| r.record(&key))
            .is_err());
    }

    #[test]
    fn stored_values_parse_as_the_scripts_parse_them() {
        let fp = Fingerprint::of_bytes(b"a").to_hex();
        let v = |s: &str| s.replace("FP", &fp).into_bytes();
        let done = v("2|c|17|2||1700000000000|failed|FP|x|2|c|");
        assert_eq!(
            stored(&done),
            Some(Stored::Completed {
                fp: &fp,
                outcome: Outcome::failed("x|2|c|")
            })
        );
        let empty = v("2|c|1|1||5|succeeded|FP|");
        assert_eq!(
            stored(&empty),
            Some(Stored::Completed {
                fp: &fp,
                outcome: Outcome::succeeded("")
            })
        );
        let p = v("2|p|1|3|1700000000000|||FP|");
        assert_eq!(
            stored(&p),
            Some(Stored::InProgress {
                fp: &fp,
                lease_end: 1_700_000_000_000
            })
        );
        assert_eq!(stored(&v("2|r|1|1||||FP|")), Some(Stored::Released));
        for bad in [
            "2|c|1|1||5|succeeded|FP",            // no separator after fp
            "2|c|1|1|9|5|succeeded|FP|",          // lease end set
            "2|c||1||5|succeeded|FP|",            // empty token
            "2|c|1|x||5|succeeded|FP|",           // bad attempt
            "2|c|1|1|||succeeded|FP|",            // no completed-at
            "2|c|1|1||5|done|FP|",                // bad status
            "3|c|1|1||5|succeeded|FP|",           // another version
            "2|c|1|1||5|succeeded|FPFP|",         // longer fingerprint
            "2|p|1|1||||FP|",                     // no lease end
            "2|p|1|1|5||failed|FP|",              // status in progress
            "2|p|1|1|5|||FP|x",                   // body in progress
            "2|r|1|1|5|||FP|",                    // lease end released
            "2|x|1|1|5|||FP|",                    // unknown state
            "2|p|1|1|99999999999999999999|||FP|", // lease end out of range
        ] {
            assert_eq!(stored(&v(bad)), None, "{bad}");
        }
        let upper = format!("2|c|1|1||5|succeeded|{}|", fp.to_uppercase());
        assert_eq!(stored(upper.as_bytes()), None, "upper-case fingerprint");
    }

    #[test]
    fn claim_replies_decode() {
        let fp = Fingerprint::of_bytes(b"a");
        let cases = [
            (
                Value::Array(vec![s("acquired"), Value::Int(3), Value::Int(2)]),
                Claim::Acquired {
                    token: Token(3),
                    attempt: 2,
                },
            ),
            (
                Value::Array(vec![s("inflight"), Value::Int(1500)]),
                Claim::InFlight {
                    retry_after: Duration::from_millis(1500),
                },
            ),
            (
                Value::Array(vec![s("completed"), s("failed"), s("{}")]),
                Claim::Completed {
                    outcome: Outcome::failed("{}"),
                },
            ),
            (
                Value::Array(vec![s("conflict"), s(&fp.to_hex())]),
                Claim::Conflict { stored: fp },
            ),
        ];
        for (v, want) in cases {
            assert_eq!(Reply::new("claim", "k", v).unwrap().claim().unwrap(), want);
        }
    }
}
