//! Transactional handlers (feature `postgres`): the claim, the handler's own writes and the
//! outcome commit in one Postgres transaction, so the handler's effects happen exactly once per
//! key.
//!
//! This is a [`Processor`] beside [`Engine`](crate::Engine), built on the
//! [`PostgresStore`]: it drives the same claim protocol, with every step written in the
//! handler's transaction.
//!
//! For each message the [`TransactionalEngine`] opens a transaction on the store's pool, claims the
//! key in it (the claim's upsert takes the record's row lock), sets a savepoint, and runs the
//! handler with that transaction. Then, in the same transaction:
//!
//! | handler result | in the transaction | then |
//! |---|---|---|
//! | `Ok(outcome)` | store the outcome, `COMMIT` | ack (`Processed`) |
//! | `Ok(outcome)`, record expired during the handler | claim again in the transaction, store the outcome, `COMMIT` (re-created, as `Engine` does) | ack (`Processed`) |
//! | retriable error / panic (also before the handler returns its future, or in the outcome's `Serialize`) | roll back to the savepoint (effects gone), release (attempt counted), `COMMIT` | retry after the backoff (or the error's `retry_after` hint, clamped to `retry_backoff.max`); dead-letter after `max_attempts` |
//! | running longer than `handler_timeout` | handler dropped, its statement cancelled (`pg_cancel_backend`), then as for a retriable error | retry; effects outside the database may have happened |
//! | permanent error | roll back to the savepoint, release (or store the failure, per `store_permanent_failures`), `COMMIT` | dead-letter `handler-failed` (`invalid-payload` for [`HandlerError::invalid_payload`](crate::HandlerError::invalid_payload)) |
//! | outcome too large | roll back to the savepoint, release, `COMMIT` | dead-letter `outcome-too-large` |
//! | failure whose fenced release / outcome matches no row (record expired during the handler) | `ROLLBACK` of everything, claim included | retry or dead-letter as for the failure |
//! | crash, dropped future, lost connection, failed `COMMIT` | nothing commits: the server rolls back | redelivery runs again on a clean slate |
//! | host vanished / handler stalled with the transaction idle for a lease | the server ends the session (`idle_in_transaction_session_timeout` = lease): rollback, row lock freed | a duplicate is processed within lease + one retry |
//!
//! The transaction is `READ COMMITTED` whatever the session default (the claim relies on it).
//!
//! A duplicate arriving meanwhile (another consumer, another partition, a redelivery) blocks on
//! the row lock in its own claim; once the first transaction commits it sees the completed record
//! and replays the outcome without running the handler. Lock waits are bounded by the engine's
//! in-flight wait (`lock_timeout`), after which the duplicate is retried later.
//!
//! Rules for handlers: do every write that must happen exactly once through the given
//! transaction; never `COMMIT` or `ROLLBACK` it yourself (savepoints are fine); effects outside
//! the database (HTTP calls, e-mails) are still at-least-once; do not leave the transaction idle
//! (between statements) for longer than the lease, or the server ends the session. Each running handler holds one
//! pooled connection, so size the pool above the adapter's concurrency.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idemq::prelude::*;
//! use idemq::store::postgres::PostgresStore;
//! use idemq::transactional::{from_fn, TransactionalEngine};
//!
//! let store = PostgresStore::connect("postgres://app@db/billing").await?;
//! store.migrate().await?;
//! let engine = TransactionalEngine::new(store, EngineConfig::new("billing"), from_fn(
//!     async |ctx, tx| {
//!         let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
//!         tx.execute("INSERT INTO ledger (idempotency_key, amount) VALUES ($1, 5)", &[&key])
//!             .await
//!             .retriable()?;
//!         Ok("booked")
//!     },
//! ))?;
//! // Hand `engine` to the Kafka or AMQP consumer like any other `idemq::Processor`.
//! # let _ = engine; Ok(()) }
//! ```
//!
//! Handlers are written without `Box::pin`: an `async fn`, an async closure given to
//! [`from_fn`] (state it needs goes through [`from_fn_with`]), or a type implementing
//! [`TransactionalHandler`] with an `async fn handle`. See [`TransactionalHandler`] for why
//! closures take their state as an argument.

mod handler;
mod run;

pub use crate::store::postgres::Transaction;
pub use handler::{
    from_fn, from_fn_with, FnHandler, FnHandlerWith, TransactionalFn, TransactionalFnWith,
    TransactionalHandler,
};

use crate::engine::EngineCore;
use crate::engine::{ConfigError, Disposition, EngineConfig, Processor};
use crate::message::Message;
use crate::store::postgres::PostgresStore;
use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A [`Processor`] whose handler's writes commit atomically with the claim and the outcome.
///
/// Uses the same [`EngineConfig`] as [`Engine`](crate::Engine) (scope, key sources, fingerprint
/// rule, retries, backoffs, outcome limit, handler timeout, shutdown grace), validated the same
/// way; `renew_every` is not used, because
/// the row lock held by the open transaction already keeps duplicates out. Cheap to clone.
pub struct TransactionalEngine<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for TransactionalEngine<H> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<H> {
    core: EngineCore<PostgresStore>,
    handler: H,
}

// The processing code (`run.rs`) reads `self.config`, `self.store`, … as if they were its own.
impl<H> std::ops::Deref for Inner<H> {
    type Target = EngineCore<PostgresStore>;

    fn deref(&self) -> &Self::Target {
        &self.core
    }
}

impl<H: TransactionalHandler> TransactionalEngine<H> {
    /// Builds the engine; fails if the configuration contradicts itself.
    pub fn new(
        store: PostgresStore,
        config: EngineConfig,
        handler: H,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            inner: Arc::new(Inner {
                core: EngineCore::new(store, config)?,
                handler,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store (for reads such as `get`, and for `purge_expired`).
    pub fn store(&self) -> &PostgresStore {
        &self.inner.store
    }

    /// Processes one message; see [`Processor::process`].
    pub async fn process(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
    ) -> Disposition {
        self.inner.process(message, shutdown).await
    }
}

#[async_trait]
impl<H: TransactionalHandler> Processor for TransactionalEngine<H> {
    async fn process(&self, message: Arc<Message>, shutdown: &CancellationToken) -> Disposition {
        self.inner.process(message, shutdown).await
    }

    fn scope(&self) -> &str {
        &self.inner.scope
    }
}
