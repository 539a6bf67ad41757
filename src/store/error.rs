use std::time::Duration;

/// Boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with an error; transient, retry later.
    #[error("store unavailable during {op}: {source}")]
    Unavailable {
        /// Operation that failed (`claim`, `complete`, …).
        op: &'static str,
        /// Underlying client error.
        #[source]
        source: BoxError,
    },
    /// The store did not answer in time; transient.
    #[error("store timed out during {op} after {after:?}")]
    Timeout {
        /// Operation that timed out.
        op: &'static str,
        /// Configured timeout.
        after: Duration,
    },
    /// A stored record could not be read (corrupt, or written by another format version).
    #[error("record {key} is unreadable: {detail}")]
    Corrupt {
        /// The store's name for the record.
        key: String,
        /// What could not be parsed.
        detail: String,
    },
    /// The outcome exceeds the store's size limit; nothing was written.
    #[error("outcome of {size} bytes exceeds the limit of {limit} bytes")]
    OutcomeTooLarge {
        /// Outcome size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The store was configured wrongly (bad URL, unknown scheme, missing feature).
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
}

impl StoreError {
    /// Wraps a client error as [`StoreError::Unavailable`].
    pub fn unavailable(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Unavailable {
            op,
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. }
        )
    }
}
