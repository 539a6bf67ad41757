//! The Kafka consumer's live counters, read as an [`idemq::stats::ConsumerStats`](crate::stats::ConsumerStats).

use crate::engine::{Disposition, RetryCause};
use crate::stats::{ConsumerStats, KafkaStats, StatsSource};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Kafka consumer's counters; kept under its old name for one release.
#[deprecated(note = "use idemq::stats::ConsumerStats (the same type for both brokers)")]
pub type ConsumerSummary = ConsumerStats;

/// Live counters shared by the consumer's tasks; see [`StatsHandle::snapshot`].
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    processed: AtomicU64,
    replayed: AtomicU64,
    superseded: AtomicU64,
    unkeyed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    retries: AtomicU64,
    store_unavailable: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) dead_letter_failures: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) revocations: AtomicU64,
    pub(crate) pauses: AtomicU64,
    /// Messages received and not finished or abandoned yet.
    pub(crate) in_progress: AtomicU64,
    /// Partitions currently assigned.
    pub(crate) assigned: AtomicU64,
    /// Since when the consumer holds no partition (`None` while it holds some).
    unassigned_since: Mutex<Option<Instant>>,
}

impl Default for Stats {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            received: z(),
            processed: z(),
            replayed: z(),
            superseded: z(),
            unkeyed: z(),
            dead_lettered: z(),
            retries: z(),
            store_unavailable: z(),
            abandoned: z(),
            dead_letter_failures: z(),
            commits: z(),
            commit_failures: z(),
            revocations: z(),
            pauses: z(),
            in_progress: z(),
            assigned: z(),
            // A new consumer holds nothing until its first assignment.
            unassigned_since: Mutex::new(Some(Instant::now())),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Counts an engine decision (dead-letters are counted once the publish is confirmed).
    pub(crate) fn record(&self, d: &Disposition) {
        match d {
            Disposition::Processed { .. } => bump(&self.processed),
            Disposition::Replayed { .. } => bump(&self.replayed),
            Disposition::Superseded => bump(&self.superseded),
            Disposition::Unkeyed { .. } => bump(&self.unkeyed),
            Disposition::Retry {
                cause: RetryCause::StoreUnavailable { .. },
                ..
            } => bump(&self.store_unavailable),
            Disposition::Retry { .. } => bump(&self.retries),
            Disposition::DeadLetter(_) | Disposition::Abandoned => {}
        }
    }

    /// Records whether the consumer now holds no partition.
    pub(crate) fn set_unassigned(&self, none: bool) {
        let mut since = self
            .unassigned_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (none, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
    }

    /// How long the consumer has held no partition, if it holds none.
    pub(crate) fn unassigned_for(&self) -> Option<Duration> {
        self.unassigned_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    pub(crate) fn snapshot(&self) -> ConsumerStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut stats = ConsumerStats {
            received: g(&self.received),
            processed: g(&self.processed),
            replayed: g(&self.replayed),
            superseded: g(&self.superseded),
            unkeyed: g(&self.unkeyed),
            dead_lettered: g(&self.dead_lettered),
            retries: g(&self.retries),
            store_unavailable: g(&self.store_unavailable),
            abandoned: g(&self.abandoned),
            in_progress: g(&self.in_progress),
            ..ConsumerStats::default()
        };
        stats.kafka = KafkaStats {
            dead_letter_failures: g(&self.dead_letter_failures),
            commits: g(&self.commits),
            commit_failures: g(&self.commit_failures),
            revocations: g(&self.revocations),
            pauses: g(&self.pauses),
            partitions_assigned: g(&self.assigned),
            unassigned_ms: self
                .unassigned_for()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        };
        stats
    }
}

impl StatsSource for Stats {
    fn snapshot(&self) -> ConsumerStats {
        Stats::snapshot(self)
    }

    fn in_progress(&self) -> u64 {
        self.in_progress.load(Ordering::Relaxed)
    }

    fn assigned_partitions(&self) -> u64 {
        self.assigned.load(Ordering::Relaxed)
    }

    fn unassigned_for(&self) -> Option<Duration> {
        Stats::unassigned_for(self)
    }
}
