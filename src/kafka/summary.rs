//! Counters of what the consumer did, readable while it runs and returned when it stops.

use crate::engine::{Disposition, RetryCause};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What an [`IdempotentConsumer`](super::IdempotentConsumer) did, per decision.
///
/// `processed` counts handler runs whose outcome was stored; `replayed` counts copies of completed
/// keys that were committed without running the handler.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerSummary {
    /// Records received from the broker (including copies that were later replayed).
    pub received: u64,
    /// Handler ran and its outcome is durable.
    pub processed: u64,
    /// The key was already completed; committed without running the handler.
    pub replayed: u64,
    /// Our lease was taken over; the new owner records the outcome.
    pub superseded: u64,
    /// Run without deduplication (missing key under `ProcessWithoutDedup`).
    pub unkeyed: u64,
    /// Published to the dead-letter topic (with confirmation) and committed.
    pub dead_lettered: u64,
    /// Times a message was scheduled to be tried again (handler failure, key busy elsewhere).
    pub retries: u64,
    /// Times processing waited because the store was unavailable.
    pub store_unavailable: u64,
    /// Messages left unfinished by shutdown or revocation (redelivered later).
    pub abandoned: u64,
    /// Dead-letter publishes that failed and were retried.
    pub dead_letter_failures: u64,
    /// Commits issued.
    pub commits: u64,
    /// Commits the broker rejected (retried with the next flush).
    pub commit_failures: u64,
    /// Partition revocations handled.
    pub revocations: u64,
    /// Times a partition was paused (backpressure or store outage).
    pub pauses: u64,
    /// Partitions assigned when the snapshot was taken (a gauge, not a counter).
    pub partitions_assigned: u64,
    /// How long the consumer had held no partition when the snapshot was taken, in milliseconds
    /// (0 while it holds some). A member of a group with at least as many partitions as members
    /// should never stay at zero for long; the consumer logs a warning when it does.
    pub unassigned_ms: u64,
}

impl ConsumerSummary {
    /// Messages finished (committable): processed, replayed, superseded, unkeyed, dead-lettered.
    pub fn finished(&self) -> u64 {
        self.processed + self.replayed + self.superseded + self.unkeyed + self.dead_lettered
    }
}

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

    pub(crate) fn snapshot(&self) -> ConsumerSummary {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConsumerSummary {
            received: g(&self.received),
            processed: g(&self.processed),
            replayed: g(&self.replayed),
            superseded: g(&self.superseded),
            unkeyed: g(&self.unkeyed),
            dead_lettered: g(&self.dead_lettered),
            retries: g(&self.retries),
            store_unavailable: g(&self.store_unavailable),
            abandoned: g(&self.abandoned),
            dead_letter_failures: g(&self.dead_letter_failures),
            commits: g(&self.commits),
            commit_failures: g(&self.commit_failures),
            revocations: g(&self.revocations),
            pauses: g(&self.pauses),
            partitions_assigned: g(&self.assigned),
            unassigned_ms: self
                .unassigned_for()
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A cheap handle for reading a running consumer's counters (progress bars, idle detection, tests).
#[derive(Clone, Debug)]
pub struct StatsHandle(pub(crate) Arc<Stats>);

impl StatsHandle {
    /// The counters right now.
    pub fn snapshot(&self) -> ConsumerSummary {
        self.0.snapshot()
    }

    /// Messages received but not yet finished (in a handler, waiting for a retry, or queued).
    pub fn in_progress(&self) -> u64 {
        self.0.in_progress.load(Ordering::Relaxed)
    }

    /// Partitions currently assigned to this consumer (0 before the first assignment).
    pub fn assigned_partitions(&self) -> u64 {
        self.0.assigned.load(Ordering::Relaxed)
    }

    /// How long this consumer has held no partition (`None` while it holds some). Starts at
    /// creation: a consumer that never got a partition counts from then.
    pub fn unassigned_for(&self) -> Option<Duration> {
        self.0.unassigned_for()
    }
}
