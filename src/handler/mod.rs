//! Handlers: the user code idemq runs at most once per key.
//!
//! A handler is any `Fn(HandlerContext) -> impl Future<Output = Result<T, HandlerError>>` where `T`
//! is `serde::Serialize`; the engine stores `T` as JSON and hands it back on replays (and as the
//! reply body for AMQP request/reply).
//!
//! ```
//! use idemq::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     amount: u64,
//! }
//!
//! async fn charge(ctx: HandlerContext) -> Result<serde_json::Value, HandlerError> {
//!     // Bad JSON: dead-lettered as `invalid-payload`, with serde's message.
//!     let order: Order = ctx.json()?;
//!     // An error from a dependency: retried with backoff.
//!     let receipt = bank_transfer(order.amount).await.retriable()?;
//!     Ok(serde_json::json!({ "charged": order.amount, "receipt": receipt }))
//! }
//! # async fn bank_transfer(_amount: u64) -> Result<String, std::io::Error> { Ok("r-1".into()) }
//! ```
//!
//! What this module offers around that shape:
//!
//! - **Typed input**: [`HandlerContext::json`] inside any handler, or [`json`] to write the
//!   handler as `|ctx, Json(order): Json<Order>| async { .. }`. A payload that does not
//!   deserialize is a permanent failure with dead-letter reason `invalid-payload`.
//! - **Error classification**: [`ResultExt`] turns any error into a retriable or permanent
//!   [`HandlerError`] with `?`; [`HandlerError::retry_after`] asks for a specific delay before the
//!   next attempt (clamped to the configured `retry_backoff.max`).
//! - **tower** (feature `tower`): `handler::service` runs any `tower::Service<HandlerContext>`, so tower
//!   middleware (timeouts, concurrency and rate limits, your own layers) composes with handlers.
//! - **State**: implement [`Handler`] on your own type, or capture `Arc`s in the closure.
//!
//! ## Design: wrappers, not a marker type parameter
//!
//! Typed input could have been a second argument type that [`Handler`] accepts directly, picked
//! through a marker type parameter as web frameworks pick extractors. That parameter would have
//! to appear on `Handler` and on everything generic over it (`Engine<H>`, the consumers'
//! builders), and closure type inference would depend on which implementation applies. Wrapping
//! functions ([`json`], `service`) produce ordinary [`Handler`]s instead, so
//! `|ctx: HandlerContext| async { .. }` closures keep working unchanged and the engine never
//! learns about input types.
//!
//! Closures stay the default shape because a handler is then a single function users can call in
//! their own tests; the broker adapters already bound concurrency, so most handlers need no
//! `poll_ready`. Where middleware helps, `handler::service` adapts a service instead of making every
//! handler one.

mod error;
mod json;
mod metadata;
#[cfg(feature = "tower")]
mod service;

pub use error::{HandlerError, ResultExt};
pub use json::{json, Json, JsonHandler, PayloadError};
#[cfg(feature = "tower")]
pub use service::{service, ServiceHandler};

use crate::key::IdempotencyKey;
use crate::message::Message;
use crate::store::Token;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// What a handler gets for one run.
///
/// The engine builds it; to call a handler directly (a unit test), build one with
/// [`HandlerContext::new`]:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use idemq::prelude::*;
/// use std::sync::Arc;
///
/// async fn charge(ctx: HandlerContext) -> Result<u64, HandlerError> {
///     let order: serde_json::Value = ctx.json()?;
///     Ok(order["amount"].as_u64().unwrap_or(0))
/// }
///
/// let msg = Message::new(r#"{"amount":5}"#, Source::Other("test".into()));
/// let ctx = HandlerContext::new(Arc::new(msg)).with_key(idemq::IdempotencyKey::new("k-1").unwrap());
/// assert_eq!(charge(ctx).await.unwrap(), 5);
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HandlerContext {
    /// The message being processed.
    pub message: Arc<Message>,
    /// Its idempotency key; `None` when run without deduplication
    /// ([`MissingKeyPolicy::ProcessWithoutDedup`](crate::MissingKeyPolicy::ProcessWithoutDedup)).
    pub key: Option<IdempotencyKey>,
    /// The scope the key was claimed in.
    pub scope: Arc<str>,
    /// Attempt number (1 on the first run; grows with retries and takeovers).
    pub attempt: u32,
    /// The fencing token of the claim; `None` without deduplication.
    pub token: Option<Token>,
}

impl HandlerContext {
    /// A context for `message` as on its first run without a key: no key, no token, attempt 1,
    /// empty scope. For calling handlers outside the engine (tests); the engine fills in the rest.
    pub fn new(message: Arc<Message>) -> Self {
        Self {
            message,
            key: None,
            scope: Arc::from(""),
            attempt: 1,
            token: None,
        }
    }

    /// Sets the idempotency key.
    pub fn with_key(mut self, key: IdempotencyKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the scope.
    pub fn with_scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Sets the attempt number (1 on a first run).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }
}

/// User code run for each message whose key is claimed.
///
/// Implemented for every matching async closure; implement it by hand for handlers with state.
pub trait Handler: Send + Sync + 'static {
    /// The value stored as the outcome.
    type Output: Serialize + Send + 'static;

    /// Processes one message.
    fn handle(
        &self,
        ctx: HandlerContext,
    ) -> impl Future<Output = Result<Self::Output, HandlerError>> + Send;
}

impl<F, Fut, T> Handler for F
where
    F: Fn(HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send,
    T: Serialize + Send + 'static,
{
    type Output = T;

    fn handle(&self, ctx: HandlerContext) -> impl Future<Output = Result<T, HandlerError>> + Send {
        self(ctx)
    }
}
