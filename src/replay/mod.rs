//! Safe dead-letter replay: classify every dead-lettered message against the store before moving it.
//!
//! After a bug fix, operators move a dead-letter queue back to the main queue. Messages whose key
//! already completed must not run again, and messages that can never succeed (conflicting payload,
//! no key) must not bounce between the queues. [`Classifier`] decides per message:
//!
//! | class | store says | real run |
//! |---|---|---|
//! | [`ReplayClass::WouldRun`] | no record, released, or in progress | republish, then remove from the DLQ |
//! | [`ReplayClass::WouldSkip`] | completed with the same fingerprint | remove without republishing |
//! | [`ReplayClass::Conflict`] | recorded with another fingerprint | keep (it would be dead-lettered again) |
//! | [`ReplayClass::NoKey`] | key missing or invalid, policy `Reject`; or a payload the fingerprint rule cannot read | keep |
//!
//! Keyless messages follow the consumer's [`MissingKeyPolicy`] (from the [`KeyConfig`] the
//! classifier is given, which must match the consumer's): `Reject` → `NoKey`;
//! `DeriveFromPayload` → classified under the payload-derived key like any keyed message;
//! `ProcessWithoutDedup` → `WouldRun` (the consumer runs it without a record).
//!
//! Republished copies carry the original payload and headers minus idemq's `x-idemq-*` dead-letter
//! headers, plus `x-idemq-replayed: N` (see [`replay_headers`]). Each message is removed from the
//! dead-letter queue only after the broker confirmed the republish, so a replay killed midway at
//! worst leaves a message both in the DLQ and republished, which the consumer's deduplication makes
//! harmless. The broker drivers live in `kafka::replay` and `amqp::replay`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use idemq::replay::{Classifier, ReplayClass};
//! use idemq::{store::MemoryStore, KeyConfig, Message, Source};
//! use std::sync::Arc;
//!
//! let classifier = Classifier::new(Arc::new(MemoryStore::new()), "orders", KeyConfig::default());
//! let msg = Message::new("{}", Source::Other("dlq".into())).with_header("Idempotency-Key", "k1");
//! assert_eq!(classifier.classify(&msg).await.unwrap().class, ReplayClass::WouldRun);
//! # }
//! ```

use crate::fingerprint::FingerprintRule;
use crate::headers;
use crate::key::{derive_from_payload, KeyConfig, MissingKeyPolicy};
use crate::message::{Header, Message};
use crate::store::{RecordKey, RecordState, Store, StoreError};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// How many example keys the report keeps per class.
pub const SAMPLES_PER_CLASS: usize = 5;

/// What a replay would do with one dead-lettered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplayClass {
    /// No completed record: the consumer will run it.
    WouldRun,
    /// Completed already: the consumer would only ack it as a replay.
    WouldSkip,
    /// The key is recorded with another payload: the consumer would dead-letter it again.
    Conflict,
    /// No usable key and the consumer's policy is `Reject`: it would dead-letter it again.
    NoKey,
}

impl ReplayClass {
    /// Every class, in report order.
    pub const ALL: [ReplayClass; 4] = [
        ReplayClass::WouldRun,
        ReplayClass::WouldSkip,
        ReplayClass::Conflict,
        ReplayClass::NoKey,
    ];

    /// `would_run`, `would_skip`, `conflict`, `no_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayClass::WouldRun => "would_run",
            ReplayClass::WouldSkip => "would_skip",
            ReplayClass::Conflict => "conflict",
            ReplayClass::NoKey => "no_key",
        }
    }

    /// What a real (not dry) run does with a message of this class.
    pub fn action(self) -> ReplayAction {
        match self {
            ReplayClass::WouldRun => ReplayAction::Republish,
            ReplayClass::WouldSkip => ReplayAction::Remove,
            ReplayClass::Conflict | ReplayClass::NoKey => ReplayAction::Keep,
        }
    }
}

impl fmt::Display for ReplayClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the broker driver does with a message in a real run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayAction {
    /// Publish to the target, wait for the broker's confirmation, then remove from the DLQ.
    Republish,
    /// Remove from the DLQ without publishing.
    Remove,
    /// Leave in the DLQ (Kafka: not republished; the topic keeps it until its retention).
    Keep,
}

/// One message's classification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The class.
    pub class: ReplayClass,
    /// The key, when the message has a valid one.
    pub key: Option<String>,
    /// Why, in a few words (record state, or the key error).
    pub detail: String,
}

/// Classifies dead-lettered messages against a store, with the consumer's key and fingerprint
/// settings (they must match the consumer's, or fingerprints will not compare).
#[derive(Clone, Debug)]
pub struct Classifier {
    store: Arc<dyn Store>,
    scope: String,
    key: KeyConfig,
    fingerprint: FingerprintRule,
}

impl Classifier {
    /// A classifier for `scope` with the given key settings and a payload-only fingerprint.
    pub fn new(store: Arc<dyn Store>, scope: impl Into<String>, key: KeyConfig) -> Self {
        Self {
            store,
            scope: scope.into(),
            key,
            fingerprint: FingerprintRule::default(),
        }
    }

    /// The fingerprint rule, as configured on the consumer.
    pub fn fingerprint(mut self, rule: FingerprintRule) -> Self {
        self.fingerprint = rule;
        self
    }

    /// Headers that take part in the whole-payload fingerprint, as configured on the consumer.
    #[deprecated(note = "use `fingerprint(FingerprintRule::whole_payload().with_headers(..))`")]
    pub fn fingerprint_headers(self, names: Vec<String>) -> Self {
        self.fingerprint(FingerprintRule::whole_payload().with_headers(names))
    }

    /// Classifies one message (one store read).
    pub async fn classify(&self, msg: &Message) -> Result<Classified, StoreError> {
        // The consumer's missing-key policy decides, as it does in the engine.
        let key = match self.key.extract(msg) {
            Ok(k) => k,
            Err(e) => match self.key.missing {
                MissingKeyPolicy::Reject => {
                    return Ok(Classified {
                        class: ReplayClass::NoKey,
                        key: None,
                        detail: e.to_string(),
                    })
                }
                MissingKeyPolicy::ProcessWithoutDedup => {
                    return Ok(Classified {
                        class: ReplayClass::WouldRun,
                        key: None,
                        detail: format!("{e}; the consumer processes it without deduplication"),
                    })
                }
                MissingKeyPolicy::DeriveFromPayload => derive_from_payload(msg),
            },
        };
        let fingerprint = match self.fingerprint.fingerprint(msg) {
            Ok(f) => f,
            // The consumer dead-letters such a message again: it cannot be fingerprinted.
            Err(e) => {
                return Ok(Classified {
                    class: ReplayClass::NoKey,
                    key: Some(key.as_str().to_string()),
                    detail: e.to_string(),
                })
            }
        };
        let record = self
            .store
            .get(&RecordKey::new(self.scope.clone(), key.clone()))
            .await?;
        let (class, detail) = match record {
            None => (ReplayClass::WouldRun, "no record".to_string()),
            Some(r) if matches!(r.state, RecordState::Released) => (
                ReplayClass::WouldRun,
                "released after a failure".to_string(),
            ),
            Some(r) if r.fingerprint != fingerprint => (
                ReplayClass::Conflict,
                format!("recorded with fingerprint {}", r.fingerprint),
            ),
            Some(r) => match r.state {
                RecordState::Completed { outcome, .. } => (
                    ReplayClass::WouldSkip,
                    format!("completed ({})", outcome.status.as_str()),
                ),
                _ => (ReplayClass::WouldRun, "in progress".to_string()),
            },
        };
        Ok(Classified {
            class,
            key: Some(key.as_str().to_string()),
            detail,
        })
    }
}

/// Headers for a republished copy: the originals without idemq's dead-letter headers, plus
/// `x-idemq-replayed` counting replays (previous value + 1).
pub fn replay_headers(original: &[Header]) -> Vec<Header> {
    let mut out: Vec<Header> = original
        .iter()
        .filter(|h| !is_dead_letter_header(&h.name))
        .cloned()
        .collect();
    out.push(Header::new(
        headers::REPLAYED,
        next_replay_count(original).to_string(),
    ));
    out
}

/// The `x-idemq-replayed` value for the next replay: the current one (0 if absent or unreadable)
/// plus one.
pub fn next_replay_count(original: &[Header]) -> u64 {
    original
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(headers::REPLAYED))
        .and_then(|h| h.value.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        + 1
}

/// Whether a header is one idemq adds when dead-lettering (or the replay counter).
pub fn is_dead_letter_header(name: &str) -> bool {
    // Compared as bytes: slicing the `str` at the prefix length panics when that byte falls inside
    // a multi-byte character (`tenant-ü`).
    let prefix = headers::DEAD_LETTER_PREFIX.as_bytes();
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Counts and samples of a replay run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Whether this was a dry run (nothing moved).
    pub dry_run: bool,
    /// Messages read from the dead-letter queue.
    pub examined: u64,
    /// Messages per class.
    pub counts: BTreeMap<ReplayClass, u64>,
    /// Up to [`SAMPLES_PER_CLASS`] `key: detail` lines per class.
    pub samples: BTreeMap<ReplayClass, Vec<String>>,
    /// Republished with confirmation and removed from the DLQ.
    pub republished: u64,
    /// Removed from the DLQ without republishing (already completed).
    pub removed: u64,
    /// Left in the DLQ.
    pub kept: u64,
    /// The last message handled (republished, removed or kept), so an operator whose run stopped
    /// midway knows where it got to: Kafka `topic[partition]@offset` (its offset is committed),
    /// RabbitMQ `key K` (or `delivery N` for a message without a key).
    pub last_handled: Option<String>,
}

impl ReplayReport {
    /// Records one classified message.
    pub fn note(&mut self, c: &Classified) {
        self.examined += 1;
        *self.counts.entry(c.class).or_default() += 1;
        let samples = self.samples.entry(c.class).or_default();
        if samples.len() < SAMPLES_PER_CLASS {
            samples.push(format!("{}: {}", c.key.as_deref().unwrap_or("-"), c.detail));
        }
    }

    /// Count of one class.
    pub fn count(&self, class: ReplayClass) -> u64 {
        self.counts.get(&class).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Claim, ClaimRequest, MemoryStore, Release};
    use crate::{Fingerprint, IdempotencyKey, Outcome, Source};
    use std::time::Duration;

    #[test]
    fn non_ascii_header_names_are_not_dead_letter_headers_and_do_not_panic() {
        assert!(!is_dead_letter_header("trace-\u{fffd}"));
        assert!(!is_dead_letter_header("ééééé"));
        assert!(is_dead_letter_header("X-IDEMQ-reason"));
    }

    fn msg(key: Option<&str>, payload: &str) -> Message {
        let m = Message::new(payload.to_string(), Source::Other("dlq".into()));
        match key {
            Some(k) => m.with_header("Idempotency-Key", k.to_string()),
            None => m,
        }
    }

    #[tokio::test]
    async fn classes_follow_the_store() {
        let store = Arc::new(MemoryStore::new());
        let c = Classifier::new(store.clone(), "s", KeyConfig::default());
        let claim = |k: &'static str, p: &'static str| {
            let store = store.clone();
            async move {
                let key = RecordKey::new("s", IdempotencyKey::new(k).unwrap());
                let f = Fingerprint::of(&msg(Some(k), p), &[]);
                let req =
                    ClaimRequest::new(&key, &f, Duration::from_secs(30), Duration::from_secs(60));
                let Claim::Acquired { token, .. } = store.claim(&req).await.unwrap() else {
                    panic!()
                };
                (key, token)
            }
        };
        let (done, t) = claim("done", "p").await;
        store
            .complete(&done, t, &Outcome::succeeded("1"), Duration::from_secs(60))
            .await
            .unwrap();
        let (failed, t) = claim("failed", "p").await;
        store.release(&failed, t, Release::Reset).await.unwrap();

        let class = |m: Message| {
            let c = c.clone();
            async move { c.classify(&m).await.unwrap().class }
        };
        assert_eq!(class(msg(Some("done"), "p")).await, ReplayClass::WouldSkip);
        assert_eq!(
            class(msg(Some("done"), "other")).await,
            ReplayClass::Conflict
        );
        assert_eq!(class(msg(Some("failed"), "p")).await, ReplayClass::WouldRun);
        assert_eq!(class(msg(Some("new"), "p")).await, ReplayClass::WouldRun);
        assert_eq!(class(msg(None, "p")).await, ReplayClass::NoKey);
        assert_eq!(class(msg(Some(""), "p")).await, ReplayClass::NoKey);
    }

    #[tokio::test]
    async fn keyless_messages_follow_the_consumers_missing_key_policy() {
        let store = Arc::new(MemoryStore::new());
        let keys = |missing| KeyConfig {
            missing,
            ..KeyConfig::default()
        };
        // A keyless message the consumer (DeriveFromPayload) already completed.
        let done = msg(None, "done");
        let key = RecordKey::new("s", derive_from_payload(&done));
        let f = Fingerprint::of(&done, &[]);
        let req = ClaimRequest::new(&key, &f, Duration::from_secs(30), Duration::from_secs(60));
        let Claim::Acquired { token, .. } = store.claim(&req).await.unwrap() else {
            panic!()
        };
        store
            .complete(
                &key,
                token,
                &Outcome::succeeded("1"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();

        let derive = Classifier::new(
            store.clone(),
            "s",
            keys(MissingKeyPolicy::DeriveFromPayload),
        );
        let c = derive.classify(&msg(None, "new")).await.unwrap();
        assert_eq!(c.class, ReplayClass::WouldRun);
        assert_eq!(
            c.key,
            Some(derive_from_payload(&msg(None, "new")).as_str().to_string())
        );
        let c = derive.classify(&done).await.unwrap();
        assert_eq!(c.class, ReplayClass::WouldSkip);
        // Invalid keys are derived too, as the engine does.
        let c = derive.classify(&msg(Some(""), "new")).await.unwrap();
        assert_eq!(c.class, ReplayClass::WouldRun);

        let process = Classifier::new(
            store.clone(),
            "s",
            keys(MissingKeyPolicy::ProcessWithoutDedup),
        );
        let c = process.classify(&done).await.unwrap();
        assert_eq!((c.class, c.key), (ReplayClass::WouldRun, None));

        let reject = Classifier::new(store, "s", keys(MissingKeyPolicy::Reject));
        assert_eq!(
            reject.classify(&done).await.unwrap().class,
            ReplayClass::NoKey
        );
    }

    #[test]
    fn header_names_with_multi_byte_characters_at_the_prefix_length_do_not_panic() {
        // `ü` occupies bytes 7..9, so byte 8 (the prefix length) is inside it.
        assert!(!is_dead_letter_header("tenant-ü"));
        assert!(!is_dead_letter_header("x-idemq"));
        assert!(!is_dead_letter_header("ü"));
        assert!(!is_dead_letter_header(""));
        assert!(is_dead_letter_header("X-IDEMQ-reason"));
        assert!(is_dead_letter_header("x-idemq-ü"));
        let out = replay_headers(&[
            Header::new("tenant-ü", "7"),
            Header::new("x-idemq-error", "e"),
        ]);
        let names: Vec<&str> = out.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["tenant-ü", "x-idemq-replayed"]);
    }

    #[test]
    fn replay_headers_drop_dead_letter_headers_and_count() {
        let original = vec![
            Header::new("Idempotency-Key", "k"),
            Header::new("x-idemq-reason", "handler-failed"),
            Header::new("X-Idemq-Error", "boom"),
            Header::new("x-idemq-replayed", "2"),
            Header::new("tenant", "7"),
        ];
        let out = replay_headers(&original);
        let names: Vec<&str> = out.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Idempotency-Key", "tenant", "x-idemq-replayed"]);
        assert_eq!(out[2].value.as_deref(), Some(&b"3"[..]));
        assert_eq!(replay_headers(&[])[0].value.as_deref(), Some(&b"1"[..]));
    }
}
