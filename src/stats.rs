//! What a consumer did, in one shape for both brokers: [`ConsumerStats`] (a snapshot) and
//! [`StatsHandle`] (live, readable while the consumer runs).
//!
//! The common fields count the engine's decisions and mean the same for Kafka and RabbitMQ; what
//! only one broker has (commits and rebalances, acks and reconnects) lives in [`KafkaStats`] and
//! [`AmqpStats`], which stay zero for the other broker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Counts per decision since the consumer started, returned by `run` and by
/// [`StatsHandle::snapshot`].
///
/// [`finished`](Self::finished) messages reached a final broker action (committed, acked,
/// dead-lettered); `retries` and `store_unavailable` count attempts and waits, not messages (Kafka
/// retries a record in place, RabbitMQ requeues it and receives it again); `abandoned` messages
/// are redelivered later. The counters are independent atomics: a snapshot taken while the
/// consumer runs may be a few events apart between fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Messages received from the broker (redeliveries and duplicates included).
    pub received: u64,
    /// The handler ran and its outcome is durable; the message was committed (Kafka: marked for
    /// the next commit) or acked (RabbitMQ).
    pub processed: u64,
    /// The key was already completed: finished without running the handler (RabbitMQ republishes
    /// the stored reply to `reply_to`).
    pub replayed: u64,
    /// Our lease was taken over by another consumer, which records the outcome; finished.
    pub superseded: u64,
    /// Run without deduplication (missing key under `ProcessWithoutDedup`); finished.
    pub unkeyed: u64,
    /// Published to the dead-letter topic or exchange, confirmed by the broker, then finished.
    pub dead_lettered: u64,
    /// Times a message was handed back to be tried again (retriable handler failure, key held by
    /// another consumer).
    pub retries: u64,
    /// Times processing waited because the store was unavailable (intake paused meanwhile).
    pub store_unavailable: u64,
    /// Messages left unfinished by shutdown (or, on Kafka, a revocation); the broker redelivers
    /// them.
    pub abandoned: u64,
    /// Messages received and not finished yet, when the snapshot was taken (a gauge).
    pub in_progress: u64,
    /// Kafka-only counters (zero for a RabbitMQ consumer).
    #[serde(skip_serializing_if = "KafkaStats::is_zero")]
    pub kafka: KafkaStats,
    /// RabbitMQ-only counters (zero for a Kafka consumer).
    #[serde(skip_serializing_if = "AmqpStats::is_zero")]
    pub amqp: AmqpStats,
}

impl ConsumerStats {
    /// Messages that reached a final broker action: processed, replayed, superseded, unkeyed,
    /// dead-lettered, and on RabbitMQ rejected.
    pub fn finished(&self) -> u64 {
        self.processed
            + self.replayed
            + self.superseded
            + self.unkeyed
            + self.dead_lettered
            + self.amqp.rejected
    }
}

/// What only a Kafka consumer counts; part of [`ConsumerStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct KafkaStats {
    /// Dead-letter publishes that failed and were tried again.
    pub dead_letter_failures: u64,
    /// Commits issued.
    pub commits: u64,
    /// Commits the broker rejected (retried with the next flush).
    pub commit_failures: u64,
    /// Partition revocations handled.
    pub revocations: u64,
    /// Times a partition was paused (backpressure or store outage).
    pub pauses: u64,
    /// Partitions assigned when the snapshot was taken (a gauge).
    pub partitions_assigned: u64,
    /// How long the consumer had held no partition when the snapshot was taken, in milliseconds
    /// (0 while it holds some). A member of a group with at least as many partitions as members
    /// should never stay at zero for long; the consumer logs a warning when it does.
    pub unassigned_ms: u64,
}

impl KafkaStats {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// What only a RabbitMQ consumer counts; part of [`ConsumerStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AmqpStats {
    /// Rejected without requeue (no dead-letter exchange configured; the queue's own DLX applies).
    pub rejected: u64,
    /// `basic.nack(requeue)` sent: retries, shutdown, panics.
    pub requeued: u64,
    /// Not settled because the channel was gone; the broker redelivers them.
    pub left_unacked: u64,
    /// Replies published for request/reply deliveries (first runs and replays).
    pub replies: u64,
    /// Sessions re-established after a connection or channel loss.
    pub reconnects: u64,
    /// `basic.ack` frames handed to the connection; one can settle a run of deliveries.
    pub ack_frames: u64,
}

impl AmqpStats {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// Where a [`StatsHandle`] reads from: the live counters of one consumer.
pub(crate) trait StatsSource: Send + Sync + fmt::Debug {
    fn snapshot(&self) -> ConsumerStats;
    fn in_progress(&self) -> u64;
    fn assigned_partitions(&self) -> u64 {
        0
    }
    fn unassigned_for(&self) -> Option<Duration> {
        None
    }
}

/// A cheap, cloneable handle on a running consumer's counters (progress bars, metrics, idle
/// detection, tests); the same type for both brokers.
#[derive(Clone, Debug)]
pub struct StatsHandle(Arc<dyn StatsSource>);

impl StatsHandle {
    #[cfg_attr(not(any(feature = "kafka", feature = "amqp")), allow(dead_code))]
    pub(crate) fn new(source: Arc<dyn StatsSource>) -> Self {
        Self(source)
    }

    /// The counters right now.
    pub fn snapshot(&self) -> ConsumerStats {
        self.0.snapshot()
    }

    /// Messages received but not finished yet (in a handler, waiting for a retry, or queued).
    pub fn in_progress(&self) -> u64 {
        self.0.in_progress()
    }

    /// Kafka: partitions currently assigned to this consumer (0 before the first assignment).
    /// Always 0 for RabbitMQ.
    pub fn assigned_partitions(&self) -> u64 {
        self.0.assigned_partitions()
    }

    /// Kafka: how long this consumer has held no partition (`None` while it holds some), counted
    /// from its creation if it never got one. Always `None` for RabbitMQ.
    pub fn unassigned_for(&self) -> Option<Duration> {
        self.0.unassigned_for()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_counts_every_final_broker_action_of_both_brokers() {
        let mut s = ConsumerStats {
            processed: 1,
            replayed: 2,
            superseded: 3,
            unkeyed: 4,
            dead_lettered: 5,
            retries: 100,
            store_unavailable: 100,
            abandoned: 100,
            ..ConsumerStats::default()
        };
        assert_eq!(s.finished(), 15);
        s.amqp.rejected = 6;
        s.amqp.requeued = 100;
        assert_eq!(s.finished(), 21);
    }

    #[test]
    fn the_other_brokers_counters_are_left_out_of_the_json() {
        let mut s = ConsumerStats {
            received: 3,
            ..ConsumerStats::default()
        };
        s.kafka.commits = 2;
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["received"], 3);
        assert_eq!(json["kafka"]["commits"], 2);
        assert!(json.get("amqp").is_none(), "{json}");
        let json = serde_json::to_value(ConsumerStats::default()).unwrap();
        assert!(json.get("kafka").is_none() && json.get("amqp").is_none());
        assert_eq!(json["processed"], 0);
    }
}
