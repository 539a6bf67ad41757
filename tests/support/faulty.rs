//! A store wrapper whose operations can be switched to fail, for outage and corruption tests.

use async_trait::async_trait;
use idemq::store::{
    Claim, ClaimRequest, Fence, Record, RecordKey, Release, ScanPage, StateFilter, Store,
    StoreError, Token,
};
use idemq::Outcome;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Wraps a store; each switch makes the matching operations fail until turned off.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    /// Every operation fails with `Unavailable`.
    pub down: AtomicBool,
    /// `renew` fails with `Unavailable`.
    pub renew_down: AtomicBool,
    /// The next N `complete` calls fail with `Unavailable`.
    pub complete_failures: AtomicU32,
    /// `claim` and `get` report the record as corrupt.
    pub corrupt: AtomicBool,
    /// Calls that reached the inner store, by operation.
    pub claims: AtomicU32,
    /// Completed `complete` calls.
    pub completes: AtomicU32,
    /// Every `complete` waits for a permit of this gate before it reaches the inner store (open:
    /// `Semaphore::MAX_PERMITS`; close it with `forget_permits`, reopen with `add_permits`).
    pub complete_gate: tokio::sync::Semaphore,
}

impl FaultyStore {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(false),
            renew_down: AtomicBool::new(false),
            complete_failures: AtomicU32::new(0),
            corrupt: AtomicBool::new(false),
            claims: AtomicU32::new(0),
            completes: AtomicU32::new(0),
            complete_gate: tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS),
        })
    }

    /// Switches the whole store off or on.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self, op: &'static str) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable(op, "injected outage"));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        self.check("claim")?;
        if self.corrupt.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt {
                key: req.key.to_string(),
                detail: "injected corruption".into(),
            });
        }
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(req).await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        self.check("complete")?;
        let left = self.complete_failures.load(Ordering::SeqCst);
        if left > 0 {
            self.complete_failures.store(left - 1, Ordering::SeqCst);
            return Err(StoreError::unavailable("complete", "injected failure"));
        }
        drop(self.complete_gate.acquire().await);
        let r = self.inner.complete(key, token, outcome, retention).await;
        self.completes.fetch_add(1, Ordering::SeqCst);
        r
    }

    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        self.check("release")?;
        self.inner.release(key, token, mode).await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        self.check("renew")?;
        if self.renew_down.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("renew", "injected failure"));
        }
        self.inner.renew(key, token, lease).await
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        self.check("get")?;
        self.inner.get(key).await
    }

    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        self.check("forget")?;
        self.inner.forget(key).await
    }

    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        self.check("scan")?;
        self.inner.scan(scope, filter, cursor, count).await
    }
}
