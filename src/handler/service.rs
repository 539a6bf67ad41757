//! `tower::Service`s as handlers (feature `tower`), so tower middleware (timeouts, concurrency
//! and rate limits, your own layers) wraps a handler like any other service.

use super::{Handler, HandlerContext, HandlerError};
use crate::BoxError;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use tower_service::Service;

/// A [`Handler`] that calls a `tower::Service<HandlerContext>`; see [`service`].
pub struct ServiceHandler<S> {
    // A service is called through `&mut self` and is not necessarily `Sync`; each message gets
    // its own clone (the usual tower pattern), made under this lock.
    service: Mutex<S>,
}

impl<S> fmt::Debug for ServiceHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHandler")
            .field("service", &std::any::type_name::<S>())
            .finish()
    }
}

/// Uses a `tower::Service<HandlerContext>` as a handler.
///
/// - Each message is handled by a clone of `service` (tower services share their state, such as
///   a concurrency limit's semaphore, between clones). A service that is not `Clone` can be
///   wrapped in `tower::buffer::Buffer`.
/// - `poll_ready` is awaited before every `call`, so back-pressure layers
///   (`ConcurrencyLimit`, `RateLimit`) hold the message until the service is ready. The
///   engine's handler timeout covers the wait.
/// - The response is stored as the outcome, as a closure handler's `Ok` value is.
/// - Errors: a [`HandlerError`] (returned by the inner service, possibly boxed by a layer on the
///   way out) keeps its classification; any other error (e.g. `tower::timeout`'s `Elapsed`, a
///   load shedder's `Overloaded`) is a **retriable** failure, since middleware errors are about
///   this attempt, not the message.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use idemq::prelude::*;
/// use idemq::handler;
/// use idemq::store::MemoryStore;
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::ServiceBuilder;
///
/// let svc = ServiceBuilder::new()
///     .timeout(Duration::from_secs(5))
///     .concurrency_limit(8)
///     .service_fn(|ctx: HandlerContext| async move {
///         Ok::<_, HandlerError>(ctx.message.payload.len())
///     });
/// let engine = Engine::new(
///     Arc::new(MemoryStore::new()),
///     EngineConfig::new("tower-doc"),
///     handler::service(svc),
/// ).unwrap();
/// let msg = Message::new("hello", Source::Other("doc".into())).with_header("Idempotency-Key", "k1");
/// let d = engine.process(Arc::new(msg), &CancellationToken::new()).await;
/// assert!(matches!(d, Disposition::Processed { .. }));
/// # }
/// ```
pub fn service<S>(service: S) -> ServiceHandler<S>
where
    S: Service<HandlerContext> + Clone + Send + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    ServiceHandler {
        service: Mutex::new(service),
    }
}

impl<S> Handler for ServiceHandler<S>
where
    S: Service<HandlerContext> + Clone + Send + 'static,
    S::Response: Serialize + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Output = S::Response;

    fn handle(
        &self,
        ctx: HandlerContext,
    ) -> impl Future<Output = Result<S::Response, HandlerError>> + Send {
        // A poisoned lock only means another thread panicked while cloning; the service is
        // still there.
        let mut svc = match self.service.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(classify)?;
            svc.call(ctx).await.map_err(classify)
        }
    }
}

/// A service error as a handler failure: a [`HandlerError`] as it is, anything else retriable.
fn classify(err: impl Into<BoxError>) -> HandlerError {
    match err.into().downcast::<HandlerError>() {
        Ok(handler_error) => *handler_error,
        Err(other) => HandlerError::retriable(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeadLetterReason;

    #[test]
    fn handler_errors_keep_their_kind_others_are_retriable() {
        let boxed: BoxError = Box::new(HandlerError::permanent("no such account"));
        let kept = classify(boxed);
        assert_eq!(
            kept.dead_letter_reason(),
            Some(DeadLetterReason::HandlerFailed)
        );
        assert_eq!(kept.error().to_string(), "no such account");
        let other = classify(std::io::Error::other("elapsed"));
        assert!(other.is_retriable());
        assert_eq!(other.error().to_string(), "elapsed");
    }
}
