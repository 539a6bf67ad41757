//! Typed JSON input: [`HandlerContext::json`], and [`Json`] handlers made with [`json`].

use super::{Handler, HandlerContext, HandlerError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

impl HandlerContext {
    /// The payload deserialized from JSON.
    ///
    /// A payload that does not deserialize into `T` is a permanent failure
    /// ([`HandlerError::invalid_payload`]): dead-lettered with `x-idemq-reason: invalid-payload`
    /// and an `x-idemq-error` naming the type and serde's message (e.g. ``payload is not a valid
    /// JSON `shop::Order`: missing field `amount` at line 1 column 12``). A payload cannot become
    /// valid by retrying.
    ///
    /// ```
    /// use idemq::prelude::*;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Order {
    ///     amount: u64,
    /// }
    ///
    /// async fn charge(ctx: HandlerContext) -> Result<u64, HandlerError> {
    ///     let order: Order = ctx.json()?;
    ///     Ok(order.amount)
    /// }
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.message.payload)
            .map_err(|e| HandlerError::invalid_payload(PayloadError::new::<T>(e)))
    }
}

/// Why a payload could not be read as a `T`: the type's name and serde's error.
#[derive(Debug)]
pub struct PayloadError {
    type_name: &'static str,
    source: serde_json::Error,
}

impl PayloadError {
    fn new<T>(source: serde_json::Error) -> Self {
        Self {
            type_name: std::any::type_name::<T>(),
            source,
        }
    }

    /// serde's error (its line and column point into the payload).
    pub fn serde_error(&self) -> &serde_json::Error {
        &self.source
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload is not a valid JSON `{}`: {}",
            self.type_name, self.source
        )
    }
}

impl std::error::Error for PayloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A payload deserialized from JSON, as the second argument of a handler made with [`json`].
///
/// Dereferences to the value; destructure it (`Json(order): Json<Order>`) or call
/// [`into_inner`](Self::into_inner) to own it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// A handler whose payload is deserialized from JSON before it runs; see [`json`].
pub struct JsonHandler<F, T> {
    f: F,
    _input: PhantomData<fn(T)>,
}

impl<F: Clone, T> Clone for JsonHandler<F, T> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _input: PhantomData,
        }
    }
}

impl<F, T> fmt::Debug for JsonHandler<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonHandler")
            .field("input", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// Makes a handler from `|ctx, Json(value): Json<T>| async { .. }`: the payload is deserialized
/// into `T` first, and a payload that does not deserialize is dead-lettered as
/// `invalid-payload` (see [`HandlerContext::json`]) without running `f`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use idemq::prelude::*;
/// use idemq::handler::{self, Json};
/// use idemq::store::MemoryStore;
/// use std::sync::Arc;
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     id: String,
///     amount: u64,
/// }
///
/// let charge = handler::json(|_ctx: HandlerContext, Json(order): Json<Order>| async move {
///     Ok::<_, HandlerError>(format!("charged {} for {}", order.amount, order.id))
/// });
/// let engine = Engine::new(Arc::new(MemoryStore::new()), EngineConfig::new("shop"), charge).unwrap();
/// let stop = CancellationToken::new();
///
/// let bad = Message::new("{\"id\":\"o-1\"}", Source::Other("doc".into()))
///     .with_header("Idempotency-Key", "o-1");
/// match engine.process(Arc::new(bad), &stop).await {
///     Disposition::DeadLetter(dl) => {
///         assert_eq!(dl.reason, DeadLetterReason::InvalidPayload);
///         assert!(dl.error.contains("missing field `amount`"), "{}", dl.error);
///     }
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
///
/// A wrapper function rather than a second argument type accepted by [`Handler`] directly
/// (the way web frameworks pick extractors through a marker type parameter): a marker parameter
/// would have to appear on `Handler` and on everything generic over it (`Engine<H>`, the
/// consumers' builders), and would make closure type inference depend on which impl applies. The
/// wrapper keeps `|ctx: HandlerContext| async { .. }` handlers exactly as they are.
pub fn json<F, Fut, T, O>(f: F) -> JsonHandler<F, T>
where
    F: Fn(HandlerContext, Json<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, HandlerError>> + Send,
    T: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    JsonHandler {
        f,
        _input: PhantomData,
    }
}

impl<F, Fut, T, O> Handler for JsonHandler<F, T>
where
    F: Fn(HandlerContext, Json<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, HandlerError>> + Send,
    T: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    type Output = O;

    fn handle(&self, ctx: HandlerContext) -> impl Future<Output = Result<O, HandlerError>> + Send {
        let run = ctx.json::<T>().map(|value| (self.f)(ctx, Json(value)));
        async move { run?.await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeadLetterReason, Message, Source};
    use std::sync::Arc;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        amount: u64,
    }

    fn ctx(payload: &str) -> HandlerContext {
        HandlerContext {
            message: Arc::new(Message::new(payload.to_string(), Source::Other("t".into()))),
            key: None,
            scope: "s".into(),
            attempt: 1,
            token: None,
        }
    }

    #[test]
    fn json_reads_the_payload() {
        let order: Order = ctx("{\"amount\":5}").json().unwrap();
        assert_eq!(order, Order { amount: 5 });
    }

    #[test]
    fn bad_json_is_an_invalid_payload_naming_serde_and_the_type() {
        let err = ctx("{\"amount\":\"five\"}").json::<Order>().unwrap_err();
        assert!(!err.is_retriable());
        assert_eq!(
            err.dead_letter_reason(),
            Some(DeadLetterReason::InvalidPayload)
        );
        let text = err.error().to_string();
        assert!(text.contains("invalid type: string \"five\""), "{text}");
        assert!(text.contains("Order"), "{text}");
        let payload = err.error().downcast_ref::<PayloadError>().unwrap();
        assert!(payload.serde_error().is_data());
    }

    #[tokio::test]
    async fn json_handler_runs_with_the_value_or_not_at_all() {
        let h = json(|_ctx, Json(order): Json<Order>| async move {
            Ok::<_, HandlerError>(order.amount * 2)
        });
        assert_eq!(h.handle(ctx("{\"amount\":4}")).await.unwrap(), 8);
        let err = h.handle(ctx("not json")).await.unwrap_err();
        assert_eq!(
            err.dead_letter_reason(),
            Some(DeadLetterReason::InvalidPayload)
        );
    }
}
