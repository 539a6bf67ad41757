//! The AMQP consumer's live counters, read as an [`idemq::stats::ConsumerStats`](crate::stats::ConsumerStats).

use crate::stats::{AmqpStats, ConsumerStats, StatsSource};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Live counters shared by the consumer's tasks; cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Live(Arc<Counters>);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) acked_processed: AtomicU64,
    pub(crate) acked_replayed: AtomicU64,
    pub(crate) acked_superseded: AtomicU64,
    pub(crate) acked_unkeyed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// Engine decisions to try again (counted at the decision, like Kafka's).
    pub(crate) retries: AtomicU64,
    /// Deliveries given back at shutdown (counted at the decision).
    pub(crate) abandoned: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) left_unacked: AtomicU64,
    pub(crate) store_retries: AtomicU64,
    pub(crate) replies: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) ack_frames: AtomicU64,
}

impl Live {
    /// The counts right now.
    pub(crate) fn snapshot(&self) -> ConsumerStats {
        self.0.snapshot()
    }

    pub(crate) fn bump(&self, pick: impl FnOnce(&Counters) -> &AtomicU64) {
        pick(&self.0).fetch_add(1, Ordering::Relaxed);
    }

    /// A public handle on these counters.
    pub(crate) fn handle(&self) -> crate::stats::StatsHandle {
        crate::stats::StatsHandle::new(self.0.clone())
    }
}

impl Counters {
    /// Deliveries that ended: every delivery ends in exactly one broker action (ack after one of
    /// the four decisions, dead-letter, reject, requeue) or is left unacknowledged.
    fn ended(&self) -> u64 {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        g(&self.acked_processed)
            + g(&self.acked_replayed)
            + g(&self.acked_superseded)
            + g(&self.acked_unkeyed)
            + g(&self.dead_lettered)
            + g(&self.rejected)
            + g(&self.requeued)
            + g(&self.left_unacked)
    }
}

impl StatsSource for Counters {
    fn snapshot(&self) -> ConsumerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut stats = ConsumerStats {
            received: g(&self.received),
            processed: g(&self.acked_processed),
            replayed: g(&self.acked_replayed),
            superseded: g(&self.acked_superseded),
            unkeyed: g(&self.acked_unkeyed),
            dead_lettered: g(&self.dead_lettered),
            retries: g(&self.retries),
            store_unavailable: g(&self.store_retries),
            abandoned: g(&self.abandoned),
            in_progress: self.in_progress(),
            ..ConsumerStats::default()
        };
        stats.amqp = AmqpStats {
            rejected: g(&self.rejected),
            requeued: g(&self.requeued),
            left_unacked: g(&self.left_unacked),
            replies: g(&self.replies),
            reconnects: g(&self.reconnects),
            ack_frames: g(&self.ack_frames),
        };
        stats
    }

    fn in_progress(&self) -> u64 {
        // Read `received` last: a delivery counted as ended was received before.
        let ended = self.ended();
        self.received.load(Ordering::Relaxed).saturating_sub(ended)
    }
}
