//! State shared by the poll loop, the partition workers and the rebalance callback: which
//! partitions are assigned, their offset trackers, pause requests, and commits.

use super::config::LoopSettings;
use super::dead_letter::DeadLetterProducer;
use super::summary::{bump, Stats};
use super::tracker::OffsetTracker;
use super::worker::{partition_worker, Work};
use super::IdemqContext;
use crate::engine::{HandlerSlots, Processor, RetryCause, RECORDS_PER_SLOT};
use crate::health::{HealthState, StoreDown};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Topic and partition.
pub(crate) type Tp = (String, i32);

/// One assigned partition.
struct Partition {
    /// Distinguishes this assignment from an earlier one of the same partition, so work that
    /// finishes after a revocation never touches the new assignment's offsets.
    epoch: u64,
    tracker: OffsetTracker,
    /// Cancelled on revocation and on shutdown: stop dispatching, stop waiting.
    cancel: CancellationToken,
    queue: mpsc::UnboundedSender<Work>,
    /// Messages queued for the worker and not started yet.
    buffered: usize,
    /// Messages of this partition being processed.
    in_flight: Arc<AtomicUsize>,
    /// Tasks of this partition currently waiting for the store to answer: the partition stays
    /// paused while there is any (one task seeing the store back does not resume it while
    /// another still sees it down).
    store_waiters: usize,
    pause_for_backpressure: bool,
}

/// The assigned partitions, and which partitions librdkafka holds paused on our request.
#[derive(Default)]
struct Parts {
    map: HashMap<Tp, Partition>,
    /// Partitions we paused through librdkafka and have not resumed yet, assigned or not:
    /// librdkafka keeps the pause flag across revoke and assign, so a revoked partition stays in
    /// here until the poll loop resumes it (never from inside the rebalance callback).
    lib_paused: HashSet<Tp>,
}

/// Everything the consumer's tasks share.
pub(crate) struct Shared {
    parts: Mutex<Parts>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) settings: LoopSettings,
    pub(crate) processor: Arc<dyn Processor>,
    pub(crate) dead_letter: Option<DeadLetterProducer>,
    /// Cancelled when shutdown starts; every partition token is a child of it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) runtime: Handle,
    /// Bounds records in process over all partitions (claimed, running or storing the outcome).
    pub(crate) global: Arc<Semaphore>,
    /// Bounds handlers running over all partitions (`max_in_flight`).
    pub(crate) handler_slots: HandlerSlots,
    pub(crate) commit_wanted: Notify,
    pub(crate) pauses_changed: Notify,
    /// Processing tasks running; shutdown waits for it to reach zero.
    pub(crate) active: AtomicUsize,
    pub(crate) idle: Notify,
    next_epoch: AtomicU64,
    /// Run state, heartbeat and store reachability, read by `KafkaConsumer::health`.
    pub(crate) health: Arc<HealthState>,
}

impl Shared {
    pub(crate) fn new(
        settings: LoopSettings,
        processor: Arc<dyn Processor>,
        dead_letter: Option<DeadLetterProducer>,
        runtime: Handle,
    ) -> Self {
        Self {
            parts: Mutex::new(Parts::default()),
            stats: Arc::new(Stats::default()),
            global: Arc::new(Semaphore::new(
                settings.max_in_flight.saturating_mul(RECORDS_PER_SLOT),
            )),
            handler_slots: HandlerSlots::new(settings.max_in_flight),
            settings,
            processor,
            dead_letter,
            shutdown: CancellationToken::new(),
            runtime,
            commit_wanted: Notify::new(),
            pauses_changed: Notify::new(),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            next_epoch: AtomicU64::new(1),
            health: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Parts> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters
        // more than stopping the consumer would, so poisoning is ignored.
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New partitions: create their state and start a worker for each.
    pub(crate) fn on_assign(self: &Arc<Self>, tpl: &TopicPartitionList) {
        let mut parts = self.lock();
        let mut still_paused = false;
        for el in tpl.elements() {
            let tp = (el.topic().to_string(), el.partition());
            if parts.map.contains_key(&tp) {
                continue;
            }
            let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
            let cancel = self.shutdown.child_token();
            let (tx, rx) = mpsc::unbounded_channel();
            let in_flight = Arc::new(AtomicUsize::new(0));
            info!(topic = %tp.0, partition = tp.1, "partition assigned");
            self.stats.assigned.fetch_add(1, Ordering::Relaxed);
            // Paused in an earlier assignment and not resumed yet: the poll loop resumes it.
            still_paused |= parts.lib_paused.contains(&tp);
            self.runtime.spawn(partition_worker(
                self.clone(),
                tp.clone(),
                epoch,
                rx,
                cancel.clone(),
                in_flight.clone(),
            ));
            parts.map.insert(
                tp,
                Partition {
                    epoch,
                    tracker: OffsetTracker::default(),
                    cancel,
                    queue: tx,
                    buffered: 0,
                    in_flight,
                    store_waiters: 0,
                    pause_for_backpressure: false,
                },
            );
        }
        self.stats.set_unassigned(parts.map.is_empty());
        crate::metrics::kafka_assigned(self.processor.scope(), parts.map.len());
        if still_paused {
            self.pauses_changed.notify_one();
        }
    }

    /// Revoked partitions: stop dispatching, wait (bounded) for in-flight work, commit what
    /// finished, forget them. Unfinished work is redelivered to the next owner.
    pub(crate) fn on_revoke<C: Consumer<IdemqContext>>(
        &self,
        consumer: &C,
        tpl: &TopicPartitionList,
    ) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|el| (el.topic().to_string(), el.partition()))
            .collect();
        let counters: Vec<Arc<AtomicUsize>> = {
            let parts = self.lock();
            tps.iter()
                .filter_map(|tp| parts.map.get(tp))
                .map(|p| {
                    p.cancel.cancel();
                    p.in_flight.clone()
                })
                .collect()
        };
        let busy = || counters.iter().any(|c| c.load(Ordering::Acquire) > 0);
        if busy() {
            let deadline = Instant::now() + self.settings.revoke_timeout;
            let wait = || {
                while busy() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            // librdkafka calls us from inside `recv()` on a runtime thread. On the multi-thread
            // runtime, `block_in_place` lets the in-flight tasks run elsewhere meanwhile; on a
            // current-thread runtime they cannot run at all, so waiting would only add delay.
            match Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(RuntimeFlavor::CurrentThread) => {
                    warn!("revocation on a current-thread runtime: in-flight work cannot finish first; use the multi-thread runtime")
                }
                Ok(_) => tokio::task::block_in_place(wait),
                Err(_) => wait(),
            }
            if busy() {
                warn!(timeout = ?self.settings.revoke_timeout, "revoked partitions still have work in flight; it will be redelivered to the next owner");
            }
        }
        self.commit_ready(consumer, Some(&tps), CommitMode::Sync);
        let mut parts = self.lock();
        // A partition we paused stays paused in librdkafka across revoke and assign. It is resumed
        // by the poll loop once this callback has returned (see `apply_pauses`), not from here:
        // pausing or resuming inside the rebalance callback, next to the synchronous commit above,
        // left the consumer without any partition after the rebalance in rare runs.
        let mut resume_later = false;
        for tp in &tps {
            if let Some(p) = parts.map.remove(tp) {
                self.stats
                    .in_progress
                    .fetch_sub(p.tracker.unfinished() as u64, Ordering::Relaxed);
                self.stats.assigned.fetch_sub(1, Ordering::Relaxed);
                info!(topic = %tp.0, partition = tp.1, "partition revoked");
            }
            resume_later |= parts.lib_paused.contains(tp);
        }
        if parts.map.is_empty() {
            info!("no partition assigned now; waiting for the group to assign some");
        }
        self.stats.set_unassigned(parts.map.is_empty());
        crate::metrics::kafka_assigned(self.processor.scope(), parts.map.len());
        drop(parts);
        if resume_later {
            self.pauses_changed.notify_one();
        }
        bump(&self.stats.revocations);
    }

    /// Hands a received record to its partition's worker. Records of partitions we do not own (a
    /// race with a revocation) are dropped: they are not committed, so the owner gets them.
    pub(crate) fn dispatch(&self, tp: Tp, work: Work) {
        let mut parts = self.lock();
        let Some(p) = parts.map.get_mut(&tp) else {
            debug!(topic = %tp.0, partition = tp.1, "record for an unassigned partition dropped");
            return;
        };
        if !p.tracker.track(work.offset) {
            debug!(offset = work.offset, "record already seen; dropped");
            return;
        }
        bump(&self.stats.received);
        bump(&self.stats.in_progress);
        if p.queue.send(work).is_err() {
            // The worker is gone (revocation in progress); the record stays unfinished and
            // uncommitted.
            return;
        }
        p.buffered += 1;
        if p.buffered >= self.settings.max_buffered_per_partition && !p.pause_for_backpressure {
            p.pause_for_backpressure = true;
            self.pauses_changed.notify_one();
        }
    }

    /// A worker took a record off its queue.
    pub(crate) fn dequeued(&self, tp: &Tp, epoch: u64) {
        let mut parts = self.lock();
        if let Some(p) = parts.map.get_mut(tp).filter(|p| p.epoch == epoch) {
            p.buffered = p.buffered.saturating_sub(1);
            if p.pause_for_backpressure
                && p.buffered <= self.settings.max_buffered_per_partition / 2
            {
                p.pause_for_backpressure = false;
                self.pauses_changed.notify_one();
            }
        }
    }

    /// Registers a task of the partition as waiting for the store: the partition is paused
    /// (and the store counts as unreachable) until every registration is dropped (also when the
    /// task ends or unwinds).
    pub(crate) fn wait_for_store<'a>(
        &'a self,
        tp: &'a Tp,
        epoch: u64,
        cause: &RetryCause,
    ) -> StoreWait<'a> {
        self.store_waiters(tp, epoch, true);
        let error = match cause {
            RetryCause::StoreUnavailable { error } => error.as_str(),
            _ => "store unavailable",
        };
        StoreWait {
            shared: self,
            tp,
            epoch,
            _down: self.health.store_unavailable(error),
        }
    }

    /// Assigned partitions paused because their buffer is full (health reports).
    pub(crate) fn backpressured(&self) -> u64 {
        let parts = self.lock();
        parts
            .map
            .values()
            .filter(|p| p.pause_for_backpressure)
            .count() as u64
    }

    fn store_waiters(&self, tp: &Tp, epoch: u64, add: bool) {
        let mut parts = self.lock();
        if let Some(p) = parts.map.get_mut(tp).filter(|p| p.epoch == epoch) {
            let before = p.store_waiters > 0;
            p.store_waiters = if add {
                p.store_waiters + 1
            } else {
                p.store_waiters.saturating_sub(1)
            };
            if before != (p.store_waiters > 0) {
                self.pauses_changed.notify_one();
            }
        }
    }

    /// Whether the partition wants to be paused now (tests).
    #[cfg(test)]
    fn wants_pause(&self, tp: &Tp) -> bool {
        self.lock()
            .map
            .get(tp)
            .is_some_and(|p| p.store_waiters > 0 || p.pause_for_backpressure)
    }

    /// Applies pause requests to librdkafka (called from the poll loop only, never from a
    /// rebalance callback). Also resumes partitions that were revoked while paused.
    pub(crate) fn apply_pauses<C: Consumer<IdemqContext>>(&self, consumer: &C) {
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        {
            let mut guard = self.lock();
            let parts = &mut *guard;
            for (tp, p) in parts.map.iter() {
                let want = p.store_waiters > 0 || p.pause_for_backpressure;
                if want != parts.lib_paused.contains(tp) {
                    let list = if want { &mut pause } else { &mut resume };
                    list.add_partition(&tp.0, tp.1);
                }
            }
            for tp in parts.lib_paused.iter() {
                if !parts.map.contains_key(tp) {
                    resume.add_partition(&tp.0, tp.1);
                }
            }
            for el in pause.elements() {
                parts
                    .lib_paused
                    .insert((el.topic().to_string(), el.partition()));
            }
            for el in resume.elements() {
                parts
                    .lib_paused
                    .remove(&(el.topic().to_string(), el.partition()));
            }
            if pause.count() + resume.count() > 0 {
                crate::metrics::kafka_paused(self.processor.scope(), parts.lib_paused.len());
            }
        }
        let names = |l: &TopicPartitionList| -> Vec<Tp> {
            l.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        if pause.count() > 0 {
            self.stats
                .pauses
                .fetch_add(pause.count() as u64, Ordering::Relaxed);
            info!(partitions = ?names(&pause), "pausing");
            if let Err(err) = consumer.pause(&pause) {
                warn!(%err, "pausing partitions failed");
            }
        }
        if resume.count() > 0 {
            info!(partitions = ?names(&resume), "resuming");
            if let Err(err) = consumer.resume(&resume) {
                warn!(%err, "resuming partitions failed");
            }
        }
    }

    /// Marks an offset finished (outcome durable, replayed, or dead-lettered with confirmation).
    pub(crate) fn finish(&self, tp: &Tp, epoch: u64, offset: i64) {
        let mut parts = self.lock();
        if let Some(p) = parts.map.get_mut(tp).filter(|p| p.epoch == epoch) {
            let before = p.tracker.unfinished();
            let since_commit = p.tracker.finish(offset);
            if p.tracker.unfinished() < before {
                self.stats.in_progress.fetch_sub(1, Ordering::Relaxed);
            }
            if since_commit >= self.settings.commit_every {
                self.commit_wanted.notify_one();
            }
        }
    }

    /// Commits every partition (or the given ones) whose committable position moved.
    pub(crate) fn commit_ready<C: Consumer<IdemqContext>>(
        &self,
        consumer: &C,
        only: Option<&[Tp]>,
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        let mut positions = Vec::new();
        {
            let mut parts = self.lock();
            for (tp, p) in parts.map.iter_mut() {
                if only.is_some_and(|o| !o.contains(tp)) {
                    continue;
                }
                if let Some(pos) = p.tracker.committable() {
                    if tpl
                        .add_partition_offset(&tp.0, tp.1, Offset::Offset(pos))
                        .is_ok()
                    {
                        p.tracker.mark_committed(pos);
                        positions.push((tp.clone(), pos));
                    }
                }
            }
        }
        if positions.is_empty() {
            return;
        }
        bump(&self.stats.commits);
        debug!(?positions, ?mode, "committing");
        if let Err(err) = consumer.commit(&tpl, mode) {
            self.commit_failed(&tpl, &err);
        }
    }

    /// A commit failed: count it and let the next flush retry those positions.
    pub(crate) fn commit_failed(&self, tpl: &TopicPartitionList, err: &KafkaError) {
        bump(&self.stats.commit_failures);
        crate::metrics::kafka_commit_failed(self.processor.scope());
        warn!(%err, "offset commit failed; it is retried with the next flush");
        let mut parts = self.lock();
        for el in tpl.elements() {
            if let Offset::Offset(pos) = el.offset() {
                let tp = (el.topic().to_string(), el.partition());
                if let Some(p) = parts.map.get_mut(&tp) {
                    p.tracker.commit_failed(pos);
                }
            }
        }
    }

    /// A processing task ended.
    pub(crate) fn task_done(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// One task's registration as waiting for the store; see [`Shared::wait_for_store`].
pub(crate) struct StoreWait<'a> {
    shared: &'a Shared,
    tp: &'a Tp,
    epoch: u64,
    _down: StoreDown<'a>,
}

impl Drop for StoreWait<'_> {
    fn drop(&mut self) {
        self.shared.store_waiters(self.tp, self.epoch, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Disposition;
    use crate::message::Message;

    struct Nothing;

    #[async_trait::async_trait]
    impl Processor for Nothing {
        async fn process(&self, _m: Arc<Message>, _s: &CancellationToken) -> Disposition {
            Disposition::Abandoned
        }
        fn scope(&self) -> &str {
            "test"
        }
    }

    /// Issue 12: with several tasks of a partition waiting for the store, the first one to see
    /// the store answer must not resume the partition while another still sees it down.
    #[tokio::test]
    async fn the_partition_stays_paused_while_any_of_its_tasks_waits_for_the_store() {
        let settings = LoopSettings {
            topics: vec!["t".into()],
            dead_letter_topic: None,
            partition_concurrency: 4,
            max_in_flight: 4,
            max_buffered_per_partition: 10,
            commit_every: 10,
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(1),
            dead_letter_timeout: Duration::from_secs(1),
            no_dead_letter_retry: Duration::from_secs(1),
        };
        let shared = Arc::new(Shared::new(
            settings,
            Arc::new(Nothing),
            None,
            Handle::current(),
        ));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        shared.on_assign(&tpl);
        let tp: Tp = ("t".into(), 0);
        let epoch = shared.lock().map.get(&tp).map(|p| p.epoch).unwrap();
        let down = RetryCause::StoreUnavailable {
            error: "down".into(),
        };
        let a = shared.wait_for_store(&tp, epoch, &down);
        let b = shared.wait_for_store(&tp, epoch, &down);
        assert!(shared.wants_pause(&tp));
        drop(a);
        assert!(shared.wants_pause(&tp), "b still sees the store down");
        drop(b);
        assert!(!shared.wants_pause(&tp));
        shared.shutdown.cancel();
    }
}
