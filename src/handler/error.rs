use crate::BoxError;
use std::fmt;

/// How a handler failed; decides between retrying and dead-lettering.
#[derive(Debug)]
pub enum HandlerError {
    /// Worth retrying (a timeout, a dependency down): the claim is released and the message is
    /// retried with backoff, then dead-lettered after the configured number of attempts.
    Retriable(BoxError),
    /// Retrying will not help (invalid payload, business rule): dead-lettered at once.
    Permanent(BoxError),
}

impl HandlerError {
    /// A retriable failure.
    pub fn retriable(err: impl Into<BoxError>) -> Self {
        HandlerError::Retriable(err.into())
    }

    /// A permanent failure.
    pub fn permanent(err: impl Into<BoxError>) -> Self {
        HandlerError::Permanent(err.into())
    }

    /// Whether the failure is retriable.
    pub fn is_retriable(&self) -> bool {
        matches!(self, HandlerError::Retriable(_))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retriable(e) => write!(f, "retriable: {e}"),
            HandlerError::Permanent(e) => write!(f, "permanent: {e}"),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandlerError::Retriable(e) | HandlerError::Permanent(e) => Some(e.as_ref()),
        }
    }
}
