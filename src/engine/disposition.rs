use crate::fingerprint::FingerprintError;
use crate::key::KeyError;
use crate::outcome::Outcome;
use std::fmt;
use std::time::Duration;

/// Why a message goes to the dead-letter destination; the string form is the `x-idemq-reason`
/// header value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The key is recorded with a different payload fingerprint.
    Conflict,
    /// None of the key sources is present.
    MissingKey,
    /// A key that is empty, too long, not UTF-8 or not printable (or unreadable, such as a JSON
    /// pointer into a payload that is not JSON).
    InvalidKey,
    /// The handler failed permanently.
    HandlerFailed,
    /// Retriable failures exceeded the attempt limit.
    RetriesExhausted,
    /// The outcome exceeded the size limit.
    OutcomeTooLarge,
    /// The stored record stayed unreadable after bounded retries.
    CorruptRecord,
    /// The payload cannot be read as required: bad JSON for
    /// [`HandlerContext::json`](crate::HandlerContext::json) or [`Json`](crate::handler::Json), or
    /// not JSON under a JSON [`FingerprintRule`](crate::fingerprint::FingerprintRule); permanent.
    InvalidPayload,
}

impl DeadLetterReason {
    /// Header value, e.g. `idempotency-key-conflict`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Conflict => "idempotency-key-conflict",
            DeadLetterReason::MissingKey => "missing-idempotency-key",
            DeadLetterReason::InvalidKey => "invalid-idempotency-key",
            DeadLetterReason::HandlerFailed => "handler-failed",
            DeadLetterReason::RetriesExhausted => "retries-exhausted",
            DeadLetterReason::OutcomeTooLarge => "outcome-too-large",
            DeadLetterReason::CorruptRecord => "corrupt-record",
            DeadLetterReason::InvalidPayload => "invalid-payload",
        }
    }

    /// Every reason, for docs and exhaustive tests.
    pub const ALL: [DeadLetterReason; 8] = [
        DeadLetterReason::Conflict,
        DeadLetterReason::MissingKey,
        DeadLetterReason::InvalidKey,
        DeadLetterReason::HandlerFailed,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::OutcomeTooLarge,
        DeadLetterReason::CorruptRecord,
        DeadLetterReason::InvalidPayload,
    ];

    /// Parses [`as_str`](Self::as_str)'s form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

// The mapping lives here, not in `key`, so the key module does not depend on the engine.
impl From<&KeyError> for DeadLetterReason {
    fn from(err: &KeyError) -> Self {
        match err {
            KeyError::Missing { .. } => DeadLetterReason::MissingKey,
            KeyError::Invalid { .. } => DeadLetterReason::InvalidKey,
        }
    }
}

impl From<&FingerprintError> for DeadLetterReason {
    fn from(_: &FingerprintError) -> Self {
        DeadLetterReason::InvalidPayload
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the adapter should try the same message again later.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryCause {
    /// The handler failed retriably; the claim was released.
    HandlerFailed {
        /// Attempt that failed.
        attempt: u32,
        /// Error text.
        error: String,
    },
    /// Another consumer still holds the key after the in-flight wait bound.
    InFlightElsewhere,
    /// The claim's lease ran out while the message waited for a handler slot (see
    /// [`HandlerSlots`](crate::HandlerSlots)) and could not be renewed; the handler did not run.
    LeaseLost,
    /// The store did not answer; nothing ran.
    StoreUnavailable {
        /// Error text.
        error: String,
    },
}

/// What the broker adapter must do with a message after the engine is done with it.
///
/// `Processed`, `Replayed`, `Superseded` and `Unkeyed` mean acknowledge (commit); `DeadLetter` means
/// publish to the dead-letter destination, wait for the broker's confirmation, then acknowledge;
/// `Retry` and `Abandoned` mean do **not** acknowledge.
///
/// Deliberately exhaustive (unlike [`DeadLetterReason`] and [`RetryCause`]): every broker adapter
/// must handle every decision, so a new one is a breaking change, never a silent fall-through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The handler ran and its outcome is durable.
    Processed {
        /// The stored outcome (the reply body for AMQP request/reply).
        outcome: Outcome,
    },
    /// The key was already completed; the handler did not run.
    Replayed {
        /// The stored outcome, to be replayed as the reply.
        outcome: Outcome,
    },
    /// Our lease expired and another consumer took the key over; it records the outcome.
    Superseded,
    /// Run without deduplication under
    /// [`MissingKeyPolicy::ProcessWithoutDedup`](crate::MissingKeyPolicy::ProcessWithoutDedup).
    Unkeyed {
        /// The handler's outcome (not stored).
        outcome: Outcome,
    },
    /// Try the same message again after `after` without acknowledging it.
    Retry {
        /// Suggested delay.
        after: Duration,
        /// Why.
        cause: RetryCause,
    },
    /// Publish to the dead-letter destination with these headers, then acknowledge.
    DeadLetter(DeadLetter),
    /// Shutdown interrupted processing; leave the message unacknowledged for redelivery.
    Abandoned,
}

/// Dead-letter details; build one with [`Disposition::dead_letter`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// `x-idemq-reason`.
    pub reason: DeadLetterReason,
    /// `x-idemq-error`.
    pub error: String,
}

impl Disposition {
    /// A dead-letter disposition.
    pub fn dead_letter(reason: DeadLetterReason, error: impl Into<String>) -> Self {
        Disposition::DeadLetter(DeadLetter {
            reason,
            error: error.into(),
        })
    }

    /// `retries-exhausted` after `attempt` failed attempts.
    pub fn retries_exhausted(attempt: u32, last_error: &str) -> Self {
        Self::dead_letter(
            DeadLetterReason::RetriesExhausted,
            format!("failed {attempt} attempts; last error: {last_error}"),
        )
    }

    /// `handler-failed` for a handler output that cannot be serialized as the outcome.
    pub fn unserializable(err: &serde_json::Error) -> Self {
        Self::dead_letter(
            DeadLetterReason::HandlerFailed,
            format!("outcome could not be serialized: {err}"),
        )
    }

    /// Whether the message may be acknowledged right away (dead-letters need a confirmed publish
    /// first).
    pub fn is_ack(&self) -> bool {
        matches!(
            self,
            Disposition::Processed { .. }
                | Disposition::Replayed { .. }
                | Disposition::Superseded
                | Disposition::Unkeyed { .. }
        )
    }

    /// Metric label: `processed`, `replayed`, `superseded`, `unkeyed`, `retry`, `dead_letter`,
    /// `abandoned`.
    pub fn decision(&self) -> &'static str {
        match self {
            Disposition::Processed { .. } => "processed",
            Disposition::Replayed { .. } => "replayed",
            Disposition::Superseded => "superseded",
            Disposition::Unkeyed { .. } => "unkeyed",
            Disposition::Retry { .. } => "retry",
            Disposition::DeadLetter(_) => "dead_letter",
            Disposition::Abandoned => "abandoned",
        }
    }
}
