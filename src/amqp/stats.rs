//! Counters of what the consumer decided, readable while it runs and returned on shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts per decision since the consumer started.
///
/// Every delivery ends in exactly one of `acked_*`, `dead_lettered`, `rejected`, `requeued` or
/// `left_unacked`; `store_retries`, `replies`, `reconnects` and `ack_frames` count events, not
/// deliveries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerStats {
    /// Deliveries received from the broker.
    pub received: u64,
    /// Handler ran, outcome stored, delivery acked.
    pub acked_processed: u64,
    /// Key already completed: acked without running the handler (stored reply republished).
    pub acked_replayed: u64,
    /// Our lease had been taken over; acked, the new owner records the outcome.
    pub acked_superseded: u64,
    /// Run without deduplication (`ProcessWithoutDedup`) and acked.
    pub acked_unkeyed: u64,
    /// Published to the dead-letter exchange (confirmed) and acked.
    pub dead_lettered: u64,
    /// Rejected without requeue (no dead-letter exchange configured; the queue's own DLX applies).
    pub rejected: u64,
    /// Nacked with requeue after a delay (retriable handler failure, key held elsewhere, shutdown).
    pub requeued: u64,
    /// Not settled because the channel was gone; the broker redelivers them.
    pub left_unacked: u64,
    /// Store-unavailable answers that paused intake and were retried in place.
    pub store_retries: u64,
    /// Replies published for request/reply deliveries (first runs and replays).
    pub replies: u64,
    /// Sessions re-established after a connection or channel loss.
    pub reconnects: u64,
    /// `basic.ack` frames handed to the connection; one can settle a run of deliveries (see
    /// [`AmqpConsumerBuilder::ack_linger`](super::AmqpConsumerBuilder::ack_linger)).
    pub ack_frames: u64,
}

impl ConsumerStats {
    /// Deliveries that reached a final broker action (acked, dead-lettered or rejected).
    pub fn settled(&self) -> u64 {
        self.acked_processed
            + self.acked_replayed
            + self.acked_superseded
            + self.acked_unkeyed
            + self.dead_lettered
            + self.rejected
    }
}

/// Live counters shared by the consumer's tasks; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Counters>);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) acked_processed: AtomicU64,
    pub(crate) acked_replayed: AtomicU64,
    pub(crate) acked_superseded: AtomicU64,
    pub(crate) acked_unkeyed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) left_unacked: AtomicU64,
    pub(crate) store_retries: AtomicU64,
    pub(crate) replies: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) ack_frames: AtomicU64,
}

impl StatsHandle {
    /// The counts right now.
    pub fn snapshot(&self) -> ConsumerStats {
        let c = &self.0;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            received: g(&c.received),
            acked_processed: g(&c.acked_processed),
            acked_replayed: g(&c.acked_replayed),
            acked_superseded: g(&c.acked_superseded),
            acked_unkeyed: g(&c.acked_unkeyed),
            dead_lettered: g(&c.dead_lettered),
            rejected: g(&c.rejected),
            requeued: g(&c.requeued),
            left_unacked: g(&c.left_unacked),
            store_retries: g(&c.store_retries),
            replies: g(&c.replies),
            reconnects: g(&c.reconnects),
            ack_frames: g(&c.ack_frames),
        }
    }

    pub(crate) fn bump(&self, pick: impl FnOnce(&Counters) -> &AtomicU64) {
        pick(&self.0).fetch_add(1, Ordering::Relaxed);
    }
}
