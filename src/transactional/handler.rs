//! The handler side of the transactional engine: the trait, and closures as handlers.

use super::Transaction;
use crate::handler::{HandlerContext, HandlerError};
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

/// User code that runs inside the transaction in which its key was claimed.
///
/// Three ways to write one, none needing `Box::pin`:
///
/// - an `async fn(HandlerContext, &Transaction<'_>) -> Result<T, HandlerError>` or an async
///   closure `async |ctx, tx| { .. }`, given to [`from_fn`];
/// - an async closure that also receives shared state, `async |state, ctx, tx| { .. }`, given to
///   [`from_fn_with`] together with the state;
/// - a type implementing this trait with an `async fn handle`.
///
/// ```no_run
/// use idemq::prelude::*;
/// use idemq::transactional::{Transaction, TransactionalHandler};
///
/// struct Ledger {
///     table: String,
/// }
///
/// impl TransactionalHandler for Ledger {
///     type Output = u64;
///
///     async fn handle(&self, ctx: HandlerContext, tx: &Transaction<'_>) -> Result<u64, HandlerError> {
///         let sql = format!("INSERT INTO {} (k) VALUES ($1)", self.table);
///         let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
///         tx.execute(&sql, &[&key]).await.retriable()
///     }
/// }
/// ```
///
/// ## Why closures take their state as an argument
///
/// The handler's future borrows the transaction, so its type depends on that borrow's lifetime.
/// Plain closures cannot express such a return type (hence the `Box::pin` this API used to
/// need). Async closures can, but one whose future borrows captured variables implements only
/// `AsyncFn`, and stable Rust cannot require the futures of an `AsyncFn` to be `Send` (the engine
/// runs on a multi-threaded runtime, so they must be). An async closure that captures nothing
/// also implements `Fn` with a lifetime-dependent future, which can be bounded by `Send`; so
/// [`from_fn`] takes such closures, and [`from_fn_with`] passes state in by reference instead of
/// by capture.
pub trait TransactionalHandler: Send + Sync + 'static {
    /// The value stored (as JSON) as the outcome.
    type Output: Serialize + Send + 'static;

    /// Processes one message, writing its effects through `tx`.
    fn handle<'a>(
        &'a self,
        ctx: HandlerContext,
        tx: &'a Transaction<'a>,
    ) -> impl Future<Output = Result<Self::Output, HandlerError>> + Send + 'a;
}

/// A function of `(HandlerContext, &Transaction)` whose future is `Send`, for one lifetime of the
/// transaction borrow; [`from_fn`] requires it for all of them.
///
/// Implemented for every matching function and non-capturing async closure; there is no need to
/// implement it. (It exists because a `Fn` bound alone cannot say that the returned future's type
/// depends on the borrow.)
pub trait TransactionalFn<'a, T>: Send + Sync + 'static {
    /// The future the function returns.
    type Future: Future<Output = Result<T, HandlerError>> + Send + 'a;

    /// Calls the function.
    fn call_tx(&'a self, ctx: HandlerContext, tx: &'a Transaction<'a>) -> Self::Future;
}

impl<'a, F, Fut, T> TransactionalFn<'a, T> for F
where
    F: Fn(HandlerContext, &'a Transaction<'a>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send + 'a,
{
    type Future = Fut;

    fn call_tx(&'a self, ctx: HandlerContext, tx: &'a Transaction<'a>) -> Fut {
        self(ctx, tx)
    }
}

/// Like [`TransactionalFn`], with a reference to state as the first argument; see
/// [`from_fn_with`].
pub trait TransactionalFnWith<'a, S: 'a, T>: Send + Sync + 'static {
    /// The future the function returns.
    type Future: Future<Output = Result<T, HandlerError>> + Send + 'a;

    /// Calls the function.
    fn call_tx(
        &'a self,
        state: &'a S,
        ctx: HandlerContext,
        tx: &'a Transaction<'a>,
    ) -> Self::Future;
}

impl<'a, S: 'a, F, Fut, T> TransactionalFnWith<'a, S, T> for F
where
    F: Fn(&'a S, HandlerContext, &'a Transaction<'a>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, HandlerError>> + Send + 'a,
{
    type Future = Fut;

    fn call_tx(&'a self, state: &'a S, ctx: HandlerContext, tx: &'a Transaction<'a>) -> Fut {
        self(state, ctx, tx)
    }
}

/// A [`TransactionalHandler`] made from a function; see [`from_fn`].
pub struct FnHandler<F, T> {
    f: F,
    // `fn() -> T`: the handler produces `T`s, it holds none (so `T` need not be `Sync`).
    _output: PhantomData<fn() -> T>,
}

impl<F: Clone, T> Clone for FnHandler<F, T> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _output: PhantomData,
        }
    }
}

impl<F, T> fmt::Debug for FnHandler<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHandler").finish_non_exhaustive()
    }
}

/// Uses an `async fn` or a non-capturing async closure `async |ctx, tx| { .. }` as a
/// [`TransactionalHandler`]. A handler that needs state (a table name, a client, counters) gets
/// it with [`from_fn_with`]; see [`TransactionalHandler`] for why it cannot capture it.
///
/// ```no_run
/// use idemq::prelude::*;
/// use idemq::transactional::{from_fn, Transaction};
///
/// async fn book(ctx: HandlerContext, tx: &Transaction<'_>) -> Result<&'static str, HandlerError> {
///     let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
///     tx.execute("INSERT INTO ledger (k) VALUES ($1)", &[&key]).await.retriable()?;
///     Ok("booked")
/// }
/// let from_item = from_fn(book);
/// let from_closure = from_fn(async |ctx, tx| {
///     let n: i64 = tx.query_one("SELECT 1::int8", &[]).await.retriable()?.get(0);
///     Ok(n + i64::from(ctx.attempt))
/// });
/// # let _ = (from_item, from_closure);
/// ```
pub fn from_fn<F, T>(f: F) -> FnHandler<F, T>
where
    // `AsyncFn` lets the compiler infer an async closure's argument types; the higher-ranked
    // `TransactionalFn` makes its future `Send`.
    F: for<'a> TransactionalFn<'a, T>
        + for<'a> AsyncFn(HandlerContext, &'a Transaction<'a>) -> Result<T, HandlerError>,
    T: Serialize + Send + 'static,
{
    FnHandler {
        f,
        _output: PhantomData,
    }
}

impl<F, T> TransactionalHandler for FnHandler<F, T>
where
    F: for<'a> TransactionalFn<'a, T>,
    T: Serialize + Send + 'static,
{
    type Output = T;

    fn handle<'a>(
        &'a self,
        ctx: HandlerContext,
        tx: &'a Transaction<'a>,
    ) -> impl Future<Output = Result<T, HandlerError>> + Send + 'a {
        self.f.call_tx(ctx, tx)
    }
}

/// A [`TransactionalHandler`] made from state and a function; see [`from_fn_with`].
pub struct FnHandlerWith<S, F, T> {
    state: S,
    f: F,
    _output: PhantomData<fn() -> T>,
}

impl<S: Clone, F: Clone, T> Clone for FnHandlerWith<S, F, T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            f: self.f.clone(),
            _output: PhantomData,
        }
    }
}

impl<S: fmt::Debug, F, T> fmt::Debug for FnHandlerWith<S, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHandlerWith")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Uses a non-capturing async closure `async |state, ctx, tx| { .. }` as a
/// [`TransactionalHandler`], handing it `&state` on every call.
///
/// ```no_run
/// use idemq::prelude::*;
/// use idemq::transactional::from_fn_with;
///
/// struct Tables {
///     ledger: String,
/// }
/// let handler = from_fn_with(
///     Tables { ledger: "billing.ledger".into() },
///     async |tables, ctx, tx| {
///         let sql = format!("INSERT INTO {} (k) VALUES ($1)", tables.ledger);
///         let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
///         tx.execute(&sql, &[&key]).await.retriable()?;
///         Ok("booked")
///     },
/// );
/// # let _ = handler;
/// ```
pub fn from_fn_with<S, F, T>(state: S, f: F) -> FnHandlerWith<S, F, T>
where
    S: Send + Sync + 'static,
    F: for<'a> TransactionalFnWith<'a, S, T>
        + for<'a> AsyncFn(&'a S, HandlerContext, &'a Transaction<'a>) -> Result<T, HandlerError>,
    T: Serialize + Send + 'static,
{
    FnHandlerWith {
        state,
        f,
        _output: PhantomData,
    }
}

impl<S, F, T> TransactionalHandler for FnHandlerWith<S, F, T>
where
    S: Send + Sync + 'static,
    F: for<'a> TransactionalFnWith<'a, S, T>,
    T: Serialize + Send + 'static,
{
    type Output = T;

    fn handle<'a>(
        &'a self,
        ctx: HandlerContext,
        tx: &'a Transaction<'a>,
    ) -> impl Future<Output = Result<T, HandlerError>> + Send + 'a {
        self.f.call_tx(&self.state, ctx, tx)
    }
}
