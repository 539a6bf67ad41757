use crate::engine::DeadLetterReason;

/// Why a present key was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
}

/// A message's idempotency key could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// None of the configured headers (nor `message_id`, when enabled) is present.
    #[error("no idempotency key: none of the headers {looked_in:?} is present")]
    Missing {
        /// Header names that were tried.
        looked_in: Vec<String>,
    },
    /// A key is present but not valid.
    #[error("invalid idempotency key in {origin}: {reason}")]
    Invalid {
        /// Header name (or `message_id`) the key came from.
        origin: String,
        /// What is wrong with it.
        reason: InvalidKeyReason,
    },
}

impl KeyError {
    /// The dead-letter reason this error maps to.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            KeyError::Missing { .. } => DeadLetterReason::MissingKey,
            KeyError::Invalid { .. } => DeadLetterReason::InvalidKey,
        }
    }
}
