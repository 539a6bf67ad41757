//! Handlers: the user code idemq runs at most once per key.
//!
//! A handler is any `Fn(HandlerContext) -> impl Future<Output = Result<T, HandlerError>>` where `T`
//! is `serde::Serialize`; the engine stores `T` as JSON and hands it back on replays (and as the
//! reply body for AMQP request/reply).
//!
//! ```
//! use idemq::{HandlerContext, HandlerError};
//!
//! async fn charge(ctx: HandlerContext) -> Result<serde_json::Value, HandlerError> {
//!     let order: serde_json::Value =
//!         serde_json::from_slice(&ctx.message.payload).map_err(HandlerError::permanent)?;
//!     Ok(serde_json::json!({ "charged": order["amount"] }))
//! }
//! ```
//!
//! Why a plain async closure rather than a `tower::Service`: the broker adapters already bound
//! concurrency and own back-pressure, so `poll_ready` would have nothing to say, and a closure keeps
//! the handler a single function users can test directly. A `Service` can be wrapped in a closure.

mod error;
mod metadata;

pub use error::HandlerError;

use crate::key::IdempotencyKey;
use crate::message::Message;
use crate::store::Token;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// What a handler gets for one run.
#[derive(Clone, Debug)]
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
