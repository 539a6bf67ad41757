use crate::engine::DeadLetterReason;
use crate::BoxError;
use std::fmt;
use std::time::Duration;

/// How a handler failed; decides between retrying and dead-lettering.
///
/// Built with [`retriable`](Self::retriable), [`permanent`](Self::permanent) or
/// [`invalid_payload`](Self::invalid_payload), or from any `Result` with
/// [`ResultExt`](super::ResultExt):
///
/// ```
/// use idemq::prelude::*;
/// use std::time::Duration;
///
/// fn check(amount: i64) -> Result<(), HandlerError> {
///     if amount < 0 {
///         // Dead-lettered at once with reason `handler-failed`.
///         return Err(HandlerError::permanent("negative amount"));
///     }
///     // Retried; the next attempt waits 5 s instead of the configured backoff.
///     Err(HandlerError::retriable("rate limited").retry_after(Duration::from_secs(5)))
/// }
/// let err = check(1).unwrap_err();
/// assert!(err.is_retriable());
/// assert_eq!(err.retry_delay(), Some(Duration::from_secs(5)));
/// ```
///
/// A struct rather than an enum so that hints (the retry delay, the dead-letter reason) can be
/// added without breaking code that inspects errors; use the accessors to look inside.
pub struct HandlerError {
    kind: Kind,
    error: BoxError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Retriable { after: Option<Duration> },
    Permanent(DeadLetterReason),
}

impl HandlerError {
    /// A retriable failure (a timeout, a dependency down): the claim is released and the message
    /// is retried after the configured backoff (or [`retry_after`](Self::retry_after)), then
    /// dead-lettered with `retries-exhausted` after `max_attempts`.
    pub fn retriable(err: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Retriable { after: None },
            error: err.into(),
        }
    }

    /// A permanent failure (a business rule, a bad request): retrying will not help, so the
    /// message is dead-lettered at once with reason `handler-failed` and the error text in
    /// `x-idemq-error`.
    pub fn permanent(err: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Permanent(DeadLetterReason::HandlerFailed),
            error: err.into(),
        }
    }

    /// A payload the handler cannot read (bad JSON, a missing field): permanent, dead-lettered
    /// with reason `invalid-payload`. [`HandlerContext::json`](super::HandlerContext::json) and
    /// [`Json`](super::Json) return it for payloads that do not deserialize.
    pub fn invalid_payload(err: impl Into<BoxError>) -> Self {
        Self {
            kind: Kind::Permanent(DeadLetterReason::InvalidPayload),
            error: err.into(),
        }
    }

    /// Asks for the next attempt after `delay` instead of the configured
    /// [`retry_backoff`](crate::EngineConfig::retry_backoff), e.g. from a `Retry-After` header of
    /// a rate-limited dependency.
    ///
    /// The engine clamps it to `retry_backoff.max` (default 30 s), so a dependency cannot stall a
    /// Kafka partition (which retries in place) for longer than the configuration allows. Ignored
    /// on permanent failures, which are not retried.
    pub fn retry_after(mut self, delay: Duration) -> Self {
        if let Kind::Retriable { after } = &mut self.kind {
            *after = Some(delay);
        }
        self
    }

    /// Whether the failure is retriable.
    pub fn is_retriable(&self) -> bool {
        matches!(self.kind, Kind::Retriable { .. })
    }

    /// The delay asked for with [`retry_after`](Self::retry_after), before clamping.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.kind {
            Kind::Retriable { after } => after,
            Kind::Permanent(_) => None,
        }
    }

    /// The dead-letter reason of a permanent failure (`handler-failed` or `invalid-payload`);
    /// `None` for a retriable one.
    pub fn dead_letter_reason(&self) -> Option<DeadLetterReason> {
        match self.kind {
            Kind::Retriable { .. } => None,
            Kind::Permanent(reason) => Some(reason),
        }
    }

    /// The underlying error; its text is what the engine reports (`x-idemq-error`, the retry
    /// cause).
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }

    /// The underlying error, by value.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Retriable { .. } => write!(f, "retriable: {}", self.error),
            Kind::Permanent(DeadLetterReason::InvalidPayload) => {
                write!(f, "invalid payload: {}", self.error)
            }
            Kind::Permanent(_) => write!(f, "permanent: {}", self.error),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// Classifies any error as a [`HandlerError`] with `?`, without `map_err` boilerplate.
///
/// Implemented for every `Result<T, E>` whose error converts into [`BoxError`] (any
/// `std::error::Error + Send + Sync + 'static`, `String`, `&str`).
///
/// ```
/// use idemq::prelude::*;
///
/// async fn handle(ctx: HandlerContext) -> Result<u64, HandlerError> {
///     let text = std::str::from_utf8(&ctx.message.payload).permanent()?;
///     let n: u64 = text.trim().parse().permanent()?;
///     let doubled = call_dependency(n).await.retriable()?;
///     Ok(doubled)
/// }
/// # async fn call_dependency(n: u64) -> Result<u64, std::io::Error> { Ok(n * 2) }
/// ```
pub trait ResultExt<T> {
    /// A failure becomes [`HandlerError::retriable`].
    fn retriable(self) -> Result<T, HandlerError>;

    /// A failure becomes [`HandlerError::permanent`].
    fn permanent(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn retriable(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::retriable)
    }

    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_hints() {
        let r = HandlerError::retriable("busy").retry_after(Duration::from_secs(3));
        assert!(r.is_retriable());
        assert_eq!(r.retry_delay(), Some(Duration::from_secs(3)));
        assert_eq!(r.dead_letter_reason(), None);
        assert_eq!(r.to_string(), "retriable: busy");
        assert_eq!(r.error().to_string(), "busy");

        let p = HandlerError::permanent("no").retry_after(Duration::from_secs(3));
        assert!(!p.is_retriable());
        assert_eq!(p.retry_delay(), None, "permanent failures are not retried");
        assert_eq!(
            p.dead_letter_reason(),
            Some(DeadLetterReason::HandlerFailed)
        );

        let i = HandlerError::invalid_payload("eof");
        assert_eq!(
            i.dead_letter_reason(),
            Some(DeadLetterReason::InvalidPayload)
        );
        assert_eq!(i.to_string(), "invalid payload: eof");
    }

    #[test]
    fn result_ext_classifies() {
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("down"));
        let e = io.retriable().unwrap_err();
        assert!(e.is_retriable());
        assert_eq!(e.error().to_string(), "down");
        let parsed = "x".parse::<u32>().permanent().unwrap_err();
        assert_eq!(
            parsed.dead_letter_reason(),
            Some(DeadLetterReason::HandlerFailed)
        );
        assert_eq!(Ok::<_, &str>(7).retriable().unwrap(), 7);
    }
}
