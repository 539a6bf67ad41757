//! Metrics and store-call timing.

use super::Disposition;
use crate::store::StoreError;
use std::future::Future;
use std::time::{Duration, Instant};

/// Counter of processed messages by decision.
pub const MESSAGES_TOTAL: &str = "idemq_messages_total";
/// Histogram of store operation latency in seconds, by operation.
pub const STORE_LATENCY: &str = "idemq_store_latency_seconds";

pub(crate) fn record_decision(scope: &str, d: &Disposition) {
    let mut labels = vec![
        ("decision", d.decision().to_string()),
        ("scope", scope.to_string()),
    ];
    if let Disposition::DeadLetter(dl) = d {
        labels.push(("reason", dl.reason.as_str().to_string()));
    }
    metrics::counter!(MESSAGES_TOTAL, &labels).increment(1);
}

/// Runs one store operation under the configured deadline and records its latency.
pub(crate) async fn timed<T>(
    op: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { op, after: timeout }),
    };
    metrics::histogram!(STORE_LATENCY, "op" => op).record(start.elapsed().as_secs_f64());
    result
}
