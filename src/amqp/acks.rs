//! Ack coalescing: one `basic.ack(multiple = true)` for a run of deliveries whose outcomes are
//! durable, instead of one ack each.
//!
//! Every ack is a frame the client writes and RabbitMQ processes; at high rates that costs both
//! sides about as much as the delivery itself. A multiple ack settles *every* unacknowledged
//! delivery of the channel up to its tag, so it may only be sent when all of those are ready to be
//! acked. The [`Ledger`] knows, per session, which received deliveries are still being processed:
//!
//! - intake records each delivery when it takes it (tags grow in delivery order, so every lower
//!   tag is recorded before a higher one can finish);
//! - a delivery whose outcome is durable is marked *ready*; the longest run of ready deliveries
//!   from the lowest recorded tag goes out as one ack (a plain ack when the run is one delivery);
//! - a ready delivery behind one still running waits at most the configured linger (default
//!   5 ms) for the run to reach it, then is acked on its own, so a slow handler never holds back
//!   the acks of others for long;
//! - a delivery nacked or rejected leaves the ledger once that frame was handed over; one whose
//!   settle failed stays, so no multiple ack ever covers it (its channel is going away anyway).
//!
//! Acks are taken from the ledger and sent under one lock, in tag order, so a tag is never acked
//! twice (which RabbitMQ answers by closing the channel). Nothing is acked before the delivery
//! asked for it, i.e. before its outcome is durable.

use super::stats::{Counters, Live};
use lapin::options::BasicAckOptions;
use lapin::Acker;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Which counter an ack bumps once it was handed to the connection.
pub(crate) type Counter = fn(&Counters) -> &AtomicU64;

fn left_unacked(c: &Counters) -> &AtomicU64 {
    &c.left_unacked
}

/// A delivery that asked to be acked.
pub(crate) struct Ready {
    acker: Acker,
    counter: Counter,
}

/// Received deliveries of one session that have not left it yet, by delivery tag.
#[derive(Debug)]
pub(crate) struct Ledger<R> {
    /// `None` while processing (or when its settle failed); `Some` once ready to be acked.
    open: BTreeMap<u64, Option<R>>,
}

impl<R> Default for Ledger<R> {
    fn default() -> Self {
        Ledger {
            open: BTreeMap::new(),
        }
    }
}

impl<R> Ledger<R> {
    /// Intake took delivery `tag`.
    pub(crate) fn received(&mut self, tag: u64) {
        self.open.insert(tag, None);
    }

    /// Delivery `tag` may be acked. Gives the item back if intake never recorded the tag (then it
    /// must be acked on its own).
    pub(crate) fn ready(&mut self, tag: u64, item: R) -> Result<(), R> {
        match self.open.get_mut(&tag) {
            Some(slot) => {
                *slot = Some(item);
                Ok(())
            }
            None => Err(item),
        }
    }

    /// Delivery `tag` was settled another way (nack, reject): it no longer holds back others.
    pub(crate) fn settled(&mut self, tag: u64) {
        self.open.remove(&tag);
    }

    /// Takes the longest run of ready deliveries starting at the lowest open tag. One multiple
    /// ack with the run's last tag settles exactly these at the broker.
    pub(crate) fn take_run(&mut self) -> Vec<(u64, R)> {
        let mut run = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if entry.get().is_none() {
                break;
            }
            let (tag, item) = entry.remove_entry();
            if let Some(item) = item {
                run.push((tag, item));
            }
        }
        run
    }

    /// Takes delivery `tag` if it is still waiting to be acked (not taken by a run meanwhile).
    pub(crate) fn take_one(&mut self, tag: u64) -> Option<R> {
        match self.open.get(&tag) {
            Some(Some(_)) => self.open.remove(&tag).flatten(),
            _ => None,
        }
    }

    /// Deliveries still open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// The ack side of one session: its ledger and the lock that keeps acks in tag order.
pub(crate) struct Acks {
    ledger: Mutex<Ledger<Ready>>,
    /// Held while taking from the ledger and sending, so runs go out in the order they were taken.
    sending: tokio::sync::Mutex<()>,
    /// Woken after every run sent, so lingering deliveries it covered stop waiting.
    sent: Notify,
    stats: Live,
    settle_timeout: Duration,
    linger: Duration,
}

impl Acks {
    pub(crate) fn new(stats: Live, settle_timeout: Duration, linger: Duration) -> Arc<Self> {
        Arc::new(Acks {
            ledger: Mutex::new(Ledger::default()),
            sending: tokio::sync::Mutex::new(()),
            sent: Notify::new(),
            stats,
            settle_timeout,
            linger,
        })
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger<Ready>> {
        // The ledger is consistent after every call; a panic elsewhere does not corrupt it.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Intake took delivery `tag`.
    pub(crate) fn received(&self, tag: u64) {
        self.ledger().received(tag);
    }

    /// Delivery `tag` was nacked or rejected (the frame was handed to the connection).
    pub(crate) fn settled(&self, tag: u64) {
        self.ledger().settled(tag);
    }

    /// Acks delivery `tag` (its outcome is durable), together with the ready deliveries below and
    /// above it when they form a run; otherwise waits the linger and acks it on its own. Counts
    /// every delivery it acks in its `counter`, or as `left_unacked` when the ack failed.
    pub(crate) async fn ack(&self, tag: u64, acker: Acker, counter: Counter) {
        let recorded = self.ledger().ready(tag, Ready { acker, counter });
        {
            let _order = self.sending.lock().await;
            let run = match recorded {
                Ok(()) => self.ledger().take_run(),
                // Never recorded (cannot happen with intake recording first): ack it alone.
                Err(ready) => vec![(tag, ready)],
            };
            self.send(run).await;
        }
        // Linger until a run takes this delivery or the linger ends.
        let deadline = tokio::time::Instant::now() + self.linger;
        loop {
            let sent = self.sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if !self.waiting(tag) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = &mut sent => {}
            }
        }
        let _order = self.sending.lock().await;
        let run = self.ledger().take_run();
        self.send(run).await;
        let alone = self.ledger().take_one(tag);
        if let Some(ready) = alone {
            self.send(vec![(tag, ready)]).await;
        }
    }

    /// Sends `run` unless it is empty. Most calls have nothing to send (another delivery's run
    /// covered theirs), so the sending future is boxed: it would otherwise enlarge every
    /// delivery task.
    async fn send(&self, run: Vec<(u64, Ready)>) {
        if !run.is_empty() {
            Box::pin(self.send_run(run)).await;
        }
    }

    fn waiting(&self, tag: u64) -> bool {
        matches!(self.ledger().open.get(&tag), Some(Some(_)))
    }

    /// One ack for the whole run, through its last delivery's acker: `multiple` when it covers
    /// several, plain for one.
    async fn send_run(&self, mut run: Vec<(u64, Ready)>) {
        let Some((last_tag, last)) = run.pop() else {
            return;
        };
        let n = run.len() + 1;
        let ack = last.acker.ack(BasicAckOptions { multiple: n > 1 });
        let ok = handed_over("ack", last_tag, n, self.settle_timeout, ack).await;
        if ok {
            self.stats.bump(|c| &c.ack_frames);
        }
        let counters = run.iter().map(|(_, r)| r.counter).chain([last.counter]);
        for counter in counters {
            self.stats.bump(if ok { counter } else { left_unacked });
        }
        self.sent.notify_waiters();
    }
}

/// Waits, at most `timeout`, for an ack, nack or reject covering `deliveries` deliveries up to
/// `tag` to be handed to the connection; `false` (logged) if it was not: the broker redelivers.
///
/// Bounded because lapin can wait forever on a connection the server closed cleanly
/// (amqp-rs/lapin#409); the delivery task must still end and free its concurrency permit.
pub(crate) async fn handed_over(
    op: &str,
    tag: u64,
    deliveries: usize,
    timeout: Duration,
    settle: impl Future<Output = Result<bool, lapin::Error>>,
) -> bool {
    match tokio::time::timeout(timeout, settle).await {
        Ok(Ok(true)) => true,
        Ok(Ok(false)) => {
            info!(
                tag,
                deliveries, "{op} skipped: channel gone; the broker will redeliver"
            );
            false
        }
        Ok(Err(err)) => {
            warn!(tag, deliveries, %err, "{op} failed; the broker will redeliver");
            false
        }
        Err(_) => {
            warn!(
                tag,
                deliveries,
                ?timeout,
                "{op} not taken by the connection in time; the broker will redeliver"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    fn tags(run: Vec<(u64, &str)>) -> Vec<u64> {
        run.into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn a_run_starts_at_the_lowest_open_tag_and_stops_at_one_still_processing() {
        let mut l = Ledger::default();
        for t in 1..=5 {
            l.received(t);
        }
        for (t, v) in [(2, "b"), (3, "c")] {
            assert!(l.ready(t, v).is_ok());
        }
        assert!(
            l.take_run().is_empty(),
            "1 still processing holds back 2 and 3"
        );
        assert!(l.ready(1, "a").is_ok());
        assert!(l.ready(5, "e").is_ok());
        assert_eq!(tags(l.take_run()), vec![1, 2, 3], "4 still processing");
        assert_eq!(l.len(), 2);
        assert!(l.take_run().is_empty());
        assert!(l.ready(4, "d").is_ok());
        assert_eq!(tags(l.take_run()), vec![4, 5]);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn nacked_deliveries_leave_and_failed_ones_keep_blocking() {
        let mut l = Ledger::default();
        for t in 1..=4 {
            l.received(t);
        }
        assert!(l.ready(2, "b").is_ok());
        l.settled(1); // nacked: no longer outstanding at the broker
        assert_eq!(tags(l.take_run()), vec![2]);
        // 3's settle failed: it is never marked ready nor settled, so 4 is never in a run.
        assert!(l.ready(4, "d").is_ok());
        assert!(l.take_run().is_empty());
        assert_eq!(
            l.take_one(4),
            Some("d"),
            "acked on its own after the linger"
        );
        assert_eq!(l.take_one(4), None, "and only once");
        assert!(l.take_run().is_empty());
    }

    #[test]
    fn take_one_leaves_deliveries_that_a_run_already_took_or_that_are_still_processing() {
        let mut l = Ledger::default();
        l.received(7);
        l.received(8);
        assert_eq!(l.take_one(8), None, "still processing");
        assert!(l.ready(7, "g").is_ok());
        assert!(l.ready(8, "h").is_ok());
        assert_eq!(tags(l.take_run()), vec![7, 8]);
        assert_eq!(l.take_one(8), None, "taken by the run");
        assert_eq!(
            l.ready(9, "i"),
            Err("i"),
            "a tag intake never recorded comes back"
        );
        assert_eq!(l.len(), 0);
    }
}
