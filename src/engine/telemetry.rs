//! Metrics and store-call timing.

use super::Disposition;
use crate::store::StoreError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{MESSAGES_TOTAL, STORE_LATENCY};

/// Counts one message under its decision. Label values are static strings or the shared scope, so
/// counting allocates nothing beyond the key (it runs once per message).
pub(crate) fn record_decision(scope: &Arc<str>, d: &Disposition) {
    let (decision, scope) = (d.decision(), scope.clone());
    match d {
        Disposition::DeadLetter(dl) => metrics::counter!(
            MESSAGES_TOTAL, "decision" => decision, "scope" => scope, "reason" => dl.reason.as_str()
        )
        .increment(1),
        _ => {
            metrics::counter!(MESSAGES_TOTAL, "decision" => decision, "scope" => scope).increment(1)
        }
    }
}

/// Runs one store operation under the configured deadline and records its latency.
pub(crate) async fn timed<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let fut = tracing::Instrument::instrument(fut, crate::traces::store_span(op));
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { op, after: timeout }),
    };
    metrics::histogram!(STORE_LATENCY, "op" => op).record(start.elapsed().as_secs_f64());
    result
}
