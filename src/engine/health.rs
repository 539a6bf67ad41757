//! Store health as the engines see it: timed store calls and the backoff suggested while the store
//! is down.

use super::config::Backoff;
use super::telemetry::timed;
use super::{Disposition, RetryCause};
use crate::metrics::StoreUptime;
use crate::store::StoreError;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Consecutive transient store failures, shared by all messages of one engine, so the suggested
/// backoff grows while the store stays down and resets on the first success.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    failures: AtomicU32,
    uptime: StoreUptime,
}

impl StoreHealth {
    /// A store not seen failing yet, reported under `scope`.
    pub(crate) fn new(scope: Arc<str>) -> Self {
        Self {
            failures: AtomicU32::new(0),
            uptime: StoreUptime::new(scope),
        }
    }

    /// Runs one store operation under `timeout`, recording latency and the failure streak.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let r = timed(op, timeout, fut).await;
        match &r {
            Err(e) if e.is_transient() => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.uptime.failed();
            }
            _ => self.succeeded(),
        }
        r
    }

    /// Records a store success made outside [`call`](Self::call).
    pub(crate) fn succeeded(&self) {
        // Read first: the common case (no failures) then writes nothing to the shared line.
        if self.failures.load(Ordering::Relaxed) > 0 && self.failures.swap(0, Ordering::Relaxed) > 0
        {
            self.uptime.recovered();
        }
    }

    /// The disposition for a message that could not reach the store: retry after a backoff that
    /// grows with the failure streak.
    pub(crate) fn unavailable(&self, err: StoreError, backoff: &Backoff) -> Disposition {
        let n = self.failures.load(Ordering::Relaxed).max(1);
        Disposition::Retry {
            after: backoff.delay(n),
            cause: RetryCause::StoreUnavailable {
                error: err.to_string(),
            },
        }
    }
}
