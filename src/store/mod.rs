//! Where claims and outcomes live: the [`Store`] trait and its backends.
//!
//! A record moves through `absent → in_progress → completed`, and [`Store::release`] turns an
//! in-progress record back into "absent" for claiming purposes (it keeps a tombstone with the fencing
//! token so tokens never go backwards, see [`RecordState::Released`]).
//!
//! ## Fencing tokens
//! A key's token grows with every successful claim **for the life of the store**, not only while
//! its record exists: a claim of a key whose record expired (or was purged or forgotten) gets a
//! token larger than any the old record had. So a consumer that stalled longer than the record's
//! lifetime and then tries to complete, release or renew with its old token gets
//! [`Fence::Lost`] instead of overwriting the new owner's claim or outcome. The memory store draws
//! tokens from one store-wide counter; Redis and Postgres make them `max(previous + 1, store clock
//! in ms since the epoch)` (the server's clock, read in the same script or statement), which is
//! monotonic as long as the server clock does not step back by more than a record's lifetime.
//! Tokens are therefore large, non-consecutive numbers; only their order means anything.
//!
//! | backend | feature | use |
//! |---|---|---|
//! | [`MemoryStore`] | always | dev, tests, single-process consumers |
//! | `RedisStore` | `redis` | production, one round trip per operation (concurrent claims / completes batched) |
//! | `PostgresStore` | `postgres` | exactly-once effects with transactional handlers |
//!
//! ```
//! # async fn demo() -> Result<(), idemq::StoreError> {
//! use idemq::store::{Claim, ClaimRequest, MemoryStore, RecordKey, Store};
//! use idemq::{Fingerprint, IdempotencyKey, Outcome};
//! use std::time::Duration;
//!
//! let store = MemoryStore::new();
//! let key = RecordKey::new("billing", IdempotencyKey::new("order-1").unwrap());
//! let fp = Fingerprint::of_bytes(b"payload");
//! let req = ClaimRequest::new(&key, &fp, Duration::from_secs(30), Duration::from_secs(86400));
//! let Claim::Acquired { token, .. } = store.claim(&req).await? else { unreachable!() };
//! store.complete(&key, token, &Outcome::succeeded("ok"), Duration::from_secs(86400)).await?;
//! assert!(matches!(store.claim(&req).await?, Claim::Completed { .. }));
//! # Ok(()) }
//! ```

mod cache;
mod error;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
mod types;

pub use cache::CachedStore;
pub use error::{BoxError, StoreError};
pub use memory::MemoryStore;
pub use types::{
    Claim, ClaimRequest, Fence, Record, RecordKey, RecordState, Release, ScanPage, StateCounts,
    StateFilter, Token, DEFAULT_MAX_OUTCOME_BYTES,
};

use crate::outcome::Outcome;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A backend that holds idempotency records.
///
/// Every method is one atomic operation; implementations must be safe to call concurrently from many
/// processes. Tokens fence every write: `complete`, `release` and `renew` change nothing and return
/// [`Fence::Lost`] unless the token is the record's current one.
///
/// The trait is object safe (`Arc<dyn Store>`) so a backend can be chosen at run time from a URL, see
/// [`connect`].
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `req.key` for one processing attempt.
    ///
    /// Absent or released → `Acquired` with a larger token; in progress with an expired lease →
    /// `Acquired` (takeover, attempt + 1); live lease → `InFlight`; completed → `Completed` with the
    /// stored outcome (in the same round trip); any state with another fingerprint → `Conflict`.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError>;

    /// Stores the outcome and marks the record completed for `retention`.
    ///
    /// Repeating a `complete` that already succeeded with the same token returns [`Fence::Held`], so a
    /// caller may retry after a lost reply. Outcomes above the store's limit fail with
    /// [`StoreError::OutcomeTooLarge`] and change nothing.
    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError>;

    /// Gives an in-progress claim up so the next delivery can claim it at once.
    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError>;

    /// Extends the lease of an in-progress claim to `lease` from now.
    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError>;

    /// Reads a record (operators, tests). Expired records read as `None`.
    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError>;

    /// Deletes a record whatever its state; `true` if one existed.
    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError>;

    /// Lists records of one scope page by page without blocking the store.
    ///
    /// Start with `cursor = None`; continue while [`ScanPage::next`] is `Some`. A page may hold fewer
    /// than `count` records (or none) before the end.
    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError>;

    /// Counts the records of one scope by state, when the backend can do so without reading every
    /// record through [`scan`](Self::scan).
    ///
    /// `Ok(None)` (the default) means "not supported: scan instead"; callers such as
    /// `idemq stats` then page through [`scan`](Self::scan) and count with [`StateCounts::add`].
    /// The memory and Postgres stores count directly (Postgres with one grouped SQL statement);
    /// Redis has no per-scope index, so it does not.
    async fn counts(&self, scope: &str) -> Result<Option<StateCounts>, StoreError> {
        let _ = scope;
        Ok(None)
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        (**self).claim(req).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        (**self).complete(key, token, outcome, retention).await
    }
    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        (**self).release(key, token, mode).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        (**self).renew(key, token, lease).await
    }
    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        (**self).get(key).await
    }
    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        (**self).forget(key).await
    }
    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        (**self).scan(scope, filter, cursor, count).await
    }
    async fn counts(&self, scope: &str) -> Result<Option<StateCounts>, StoreError> {
        (**self).counts(scope).await
    }
}

/// Opens a store from a URL: `memory`, `redis://…` / `rediss://…` and Redis Cluster
/// `redis-cluster://host:port[,host:port…]` / `rediss-cluster://…` (feature `redis`),
/// `postgres://…` (feature `postgres`).
///
/// A scheme whose feature is not compiled in is an [`StoreError::InvalidConfig`] naming the feature.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split("://").next().unwrap_or(url);
    match scheme {
        "memory" | "mem" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => redis::open(url).await,
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => postgres::open(url).await,
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" | "redis-cluster" | "rediss-cluster" => Err(StoreError::InvalidConfig(
            "redis store not compiled in: enable the `redis` feature".into(),
        )),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(StoreError::InvalidConfig(
            "postgres store not compiled in: enable the `postgres` feature".into(),
        )),
        other => Err(StoreError::InvalidConfig(format!(
            "unknown store URL scheme {other:?}: expected memory, redis://, rediss://, redis-cluster://, rediss-cluster:// or postgres://"
        ))),
    }
}
