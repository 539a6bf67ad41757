//! The Kafka consumer's [`HealthHandle`](crate::health::HealthHandle) source.

use super::partitions::Shared;
use crate::health::{HealthReport, HealthSource, KafkaHealth};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Reads the consumer's shared state; holding it keeps nothing running.
pub(crate) struct Probe(pub(crate) Arc<Shared>);

impl HealthSource for Probe {
    fn report(&self, stall_limit: Duration) -> HealthReport {
        let shared = &self.0;
        let backpressured = shared.backpressured();
        let kafka = KafkaHealth {
            partitions_assigned: shared.stats.assigned.load(Ordering::Relaxed),
            unassigned_ms: shared
                .stats
                .unassigned_for()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            partitions_backpressured: backpressured,
        };
        // The poll loop beats once per commit interval; a long interval must not read as a stall.
        let limit = stall_limit.max(shared.settings.commit_interval * 3);
        shared
            .health
            .report(limit, Some(kafka), None, backpressured > 0)
    }
}
