//! The Kafka consumer's [`HealthHandle`](crate::health::HealthHandle) source.

use super::partitions::Shared;
use super::summary::Stats;
use crate::health::{HealthReport, HealthSource, HealthState, KafkaHealth};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What a report reads. The consumer's shared state is held weakly: a handle kept after the
/// consumer is gone must not keep its store connections or dead-letter producer alive.
pub(crate) struct Probe {
    health: Arc<HealthState>,
    stats: Arc<Stats>,
    shared: Weak<Shared>,
    commit_interval: Duration,
}

impl Probe {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        Self {
            health: shared.health.clone(),
            stats: shared.stats.clone(),
            shared: Arc::downgrade(shared),
            commit_interval: shared.settings.commit_interval,
        }
    }
}

impl HealthSource for Probe {
    fn report(&self, stall_limit: Duration) -> HealthReport {
        let backpressured = self.shared.upgrade().map_or(0, |s| s.backpressured());
        let kafka = KafkaHealth {
            partitions_assigned: self.stats.assigned.load(Ordering::Relaxed),
            unassigned_ms: self
                .stats
                .unassigned_for()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            partitions_backpressured: backpressured,
        };
        // The poll loop beats once per commit interval; a long interval must not read as a stall.
        let limit = stall_limit.max(self.commit_interval * 3);
        self.health
            .report(limit, Some(kafka), None, backpressured > 0)
    }
}
