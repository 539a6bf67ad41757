/// Why a present key was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidKeyReason {
    /// The value is empty.
    #[error("key is empty")]
    Empty,
    /// The value exceeds the configured length limit.
    #[error("key is {len} bytes, over the limit of {max}")]
    TooLong {
        /// Actual length in bytes.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The value is not UTF-8.
    #[error("key is not valid UTF-8")]
    NotUtf8,
    /// The value contains control characters.
    #[error("key contains control characters")]
    NotPrintable,
    /// A JSON-pointer source met a payload that is not JSON (the parser's message).
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// A JSON-pointer source found a value that is neither a string nor a number.
    #[error("key is {0}, not a string or a number")]
    NotScalar(&'static str),
    /// A custom key function rejected the key (its reason).
    #[error("{0}")]
    Rejected(String),
}

/// A message's idempotency key could not be used.
///
/// The engine dead-letters a missing key with reason `missing-idempotency-key` and an invalid one
/// with `invalid-idempotency-key` (under [`MissingKeyPolicy::Reject`](super::MissingKeyPolicy)).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// None of the configured sources is present.
    #[error("no idempotency key: none of {looked_in:?} is present")]
    Missing {
        /// The sources that were tried, as [`KeySource::describe`](super::KeySource::describe)
        /// puts them.
        looked_in: Vec<String>,
    },
    /// A key is present but not valid.
    #[error("invalid idempotency key in {origin}: {reason}")]
    Invalid {
        /// The source the key came from (e.g. `header Idempotency-Key`, `JSON pointer /id`).
        origin: String,
        /// What is wrong with it.
        reason: InvalidKeyReason,
    },
}
