//! The AMQP consumer's [`HealthHandle`](crate::health::HealthHandle) source.

use super::stats::Live;
use crate::health::{AmqpHealth, HealthReport, HealthSource, HealthState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The consumer's health state, with what a report reads besides it: the counters (reconnects)
/// and the concurrency slots (backpressure).
pub(crate) struct Probe {
    pub(crate) state: HealthState,
    pub(crate) stats: Live,
    /// The consumer's concurrency slots; intake waits while none is free.
    pub(crate) permits: Arc<Semaphore>,
}

impl HealthSource for Probe {
    fn report(&self, stall_limit: Duration) -> HealthReport {
        let (channel_open, closed_for) = self.state.channel_state();
        let amqp = AmqpHealth {
            channel_open,
            channel_closed_ms: u64::try_from(closed_for.as_millis()).unwrap_or(u64::MAX),
            reconnects: self.stats.snapshot().amqp.reconnects,
        };
        let busy = self.permits.available_permits() == 0;
        self.state.report(stall_limit, None, Some(amqp), busy)
    }
}
