//! Whether a consumer can work, in one shape for both brokers: [`HealthHandle`] (live, cheap to
//! clone, taken with `KafkaConsumer::health()` or `AmqpConsumer::health()`) and [`HealthReport`]
//! (a snapshot, serializable as the body of a probe's answer).
//!
//! Map them to the two probes an orchestrator asks:
//!
//! - **Liveness** ([`HealthHandle::is_live`]): restarting the process could help. Live while the
//!   consumer has not stopped and its loop keeps turning: not started yet but built less than the
//!   stall limit ago, running with a heartbeat younger than the stall limit (default
//!   [`DEFAULT_STALL_LIMIT`]), or shutting down (bounded by the shutdown timeout). Not live once
//!   `run` has returned (stopped, or failed with a fatal error) or its future was dropped, or when
//!   the loop has not turned for longer than the stall limit (a blocked runtime thread). A store
//!   or broker outage does **not** make a consumer not live: a restart would not bring them back.
//! - **Readiness** ([`HealthHandle::is_ready`]): the consumer can make progress now. Ready while
//!   it is running and live, the store is reachable (no message is waiting for it), and it has
//!   something to consume from: at least one Kafka partition assigned, or an open AMQP channel.
//!   Backpressure (intake paused because enough work is in flight) does not make it not ready.
//!
//! The store is seen through the messages: it counts as unreachable from the first store call
//! that finds it unavailable until a call succeeds again (meanwhile the consumer fetches nothing:
//! Kafka pauses the partitions, RabbitMQ intake stops). An idle consumer reports the last state it
//! saw.
//!
//! ```
//! use idemq::health::HealthHandle;
//!
//! /// GET /readyz (`/healthz` the same with `is_live`): the status code and a JSON body.
//! fn readyz(health: &HealthHandle) -> (u16, String) {
//!     let report = health.report();
//!     let status = if report.is_ready() { 200 } else { 503 };
//!     (status, serde_json::to_string(&report).unwrap_or_default())
//! }
//! // let health = consumer.health(); // KafkaConsumer or AmqpConsumer, before `run`
//! ```
// Parts of the shared state serve only one broker adapter; a build with one adapter (or none)
// leaves the other's unused.
#![cfg_attr(not(all(feature = "kafka", feature = "amqp")), allow(dead_code))]

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::time::{Interval, MissedTickBehavior};

/// How long a consumer's loop may go without turning before [`HealthHandle::is_live`] reports it
/// stalled, unless set with [`HealthHandle::with_stall_limit`].
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(60);

/// How often a waiting consumer loop records that it is alive.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Where the consumer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Built; `run` has not been called yet.
    NotStarted,
    /// `run` is consuming.
    Running,
    /// Shutdown started: intake stopped, in-flight work finishing.
    Stopping,
    /// `run` returned (or its future was dropped).
    Stopped,
}

/// Why a running consumer takes no new messages at the moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PauseReason {
    /// A message is waiting for the store to answer (fail closed: nothing new is fetched).
    StoreUnavailable,
    /// Enough work is in flight: Kafka partitions paused for a full buffer, or all of the AMQP
    /// consumer's concurrency slots busy.
    Backpressure,
    /// Kafka: the group assigned this consumer no partition.
    NoPartitions,
    /// AMQP: no open channel (connecting or reconnecting).
    Disconnected,
}

/// The store as the consumer's last store calls found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoreStatus {
    /// No message is waiting for the store (the last call that reached it succeeded, or it was
    /// never called).
    pub reachable: bool,
    /// How long the store has been unreachable, in milliseconds (0 while reachable).
    pub unreachable_ms: u64,
    /// Messages currently waiting for the store to answer.
    pub waiting: u64,
    /// The latest store error a message reported (kept after the store came back, to tell what
    /// the last outage was).
    pub last_error: Option<String>,
}

/// What only a Kafka consumer reports; part of [`HealthReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct KafkaHealth {
    /// Partitions assigned to this consumer now.
    pub partitions_assigned: u64,
    /// How long the consumer has held no partition, in milliseconds (0 while it holds some),
    /// counted from its creation if it never got one.
    pub unassigned_ms: u64,
    /// Assigned partitions paused because their buffer is full.
    pub partitions_backpressured: u64,
}

/// What only a RabbitMQ consumer reports; part of [`HealthReport`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AmqpHealth {
    /// The consuming channel is open.
    pub channel_open: bool,
    /// How long there has been no open channel, in milliseconds (0 while open), counted from the
    /// consumer's creation if it never had one.
    pub channel_closed_ms: u64,
    /// Sessions re-established after a connection or channel loss.
    pub reconnects: u64,
}

/// A consumer's health at one moment; [`live`](Self::live) and [`ready`](Self::ready) follow the
/// rules in the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `"kafka"` or `"amqp"`.
    pub broker: &'static str,
    /// Where the consumer is in its life.
    pub state: RunState,
    /// The liveness verdict.
    pub live: bool,
    /// The readiness verdict.
    pub ready: bool,
    /// Milliseconds since the consumer's loop last turned (since creation before `run`).
    pub heartbeat_age_ms: u64,
    /// The store as the last store calls found it.
    pub store: StoreStatus,
    /// Why intake is paused now; empty while the consumer takes messages (and when it is not
    /// running).
    pub intake_paused: Vec<PauseReason>,
    /// Kafka only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaHealth>,
    /// RabbitMQ only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpHealth>,
}

impl HealthReport {
    /// The liveness verdict ([`live`](Self::live)).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The readiness verdict ([`ready`](Self::ready)).
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// Where a [`HealthHandle`] reads from: one consumer's state.
pub(crate) trait HealthSource: Send + Sync {
    fn report(&self, stall_limit: Duration) -> HealthReport;
}

/// A cheap, cloneable handle on a consumer's health, the same type for both brokers; see the
/// [module docs](self) for what live and ready mean.
#[derive(Clone)]
pub struct HealthHandle {
    source: Arc<dyn HealthSource>,
    stall_limit: Duration,
}

impl std::fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthHandle")
            .field("stall_limit", &self.stall_limit)
            .finish_non_exhaustive()
    }
}

impl HealthHandle {
    pub(crate) fn new(source: Arc<dyn HealthSource>) -> Self {
        Self {
            source,
            stall_limit: DEFAULT_STALL_LIMIT,
        }
    }

    /// The same handle with another stall limit: how long the consumer's loop may go without
    /// turning (or, before `run`, since the consumer was built) and still count as live.
    pub fn with_stall_limit(mut self, limit: Duration) -> Self {
        self.stall_limit = limit;
        self
    }

    /// The health right now.
    pub fn report(&self) -> HealthReport {
        self.source.report(self.stall_limit)
    }

    /// Liveness: the consumer has not stopped and its loop is not stalled.
    pub fn is_live(&self) -> bool {
        self.report().live
    }

    /// Readiness: running, store reachable, and a partition assigned (Kafka) or the channel
    /// open (AMQP).
    pub fn is_ready(&self) -> bool {
        self.report().ready
    }
}

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const STOPPED: u8 = 3;

/// The broker-neutral part of a consumer's health, updated by its loop and its message tasks.
#[derive(Debug)]
pub(crate) struct HealthState {
    created: Instant,
    state: AtomicU8,
    /// Milliseconds after `created` of the last heartbeat.
    beat_ms: AtomicU64,
    store: Mutex<StoreTrack>,
    /// AMQP: whether a channel is open, and since when it is (not).
    channel: Mutex<(bool, Instant)>,
}

#[derive(Debug, Default)]
struct StoreTrack {
    waiting: u64,
    down_since: Option<Instant>,
    last_error: Option<String>,
}

impl Default for HealthState {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            created: now,
            state: AtomicU8::new(NOT_STARTED),
            beat_ms: AtomicU64::new(0),
            store: Mutex::new(StoreTrack::default()),
            channel: Mutex::new((false, now)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data updated in one step: a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HealthState {
    /// The consumer's loop turned.
    pub(crate) fn beat(&self) {
        self.beat_ms
            .store(millis(self.created.elapsed()), Ordering::Relaxed);
    }

    /// `run` started: running until the guard is dropped (returned, failed or dropped).
    pub(crate) fn running(&self) -> Running<'_> {
        self.beat();
        self.state.store(RUNNING, Ordering::Release);
        Running(self)
    }

    /// Shutdown started.
    pub(crate) fn stopping(&self) {
        self.state.store(STOPPING, Ordering::Release);
    }

    /// A message found the store unavailable; the store counts as unreachable until every such
    /// registration is dropped (the message's next store call succeeded, or it was given up).
    pub(crate) fn store_unavailable(&self, error: &str) -> StoreDown<'_> {
        let mut s = lock(&self.store);
        s.waiting += 1;
        s.down_since.get_or_insert_with(Instant::now);
        s.last_error = Some(error.to_string());
        StoreDown(self)
    }

    /// AMQP: the consuming channel opened or closed.
    pub(crate) fn channel(&self, open: bool) {
        let mut c = lock(&self.channel);
        if c.0 != open {
            *c = (open, Instant::now());
        }
    }

    /// AMQP: whether the channel is open and for how long it has not been.
    pub(crate) fn channel_state(&self) -> (bool, Duration) {
        let c = lock(&self.channel);
        (c.0, if c.0 { Duration::ZERO } else { c.1.elapsed() })
    }

    /// Awaits `fut`, beating on every tick of `beat` meanwhile, so a loop parked at one of its
    /// expected waits counts as turning. A `fut` that is ready at once does not beat: a loop that
    /// may never wait must also [`beat`](Self::beat) itself.
    pub(crate) async fn beating<F: Future>(&self, beat: &mut Interval, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                _ = beat.tick() => self.beat(),
            }
        }
    }

    /// A report with the verdicts worked out; `kafka` or `amqp` says which broker it is.
    pub(crate) fn report(
        &self,
        stall_limit: Duration,
        kafka: Option<KafkaHealth>,
        amqp: Option<AmqpHealth>,
        busy: bool,
    ) -> HealthReport {
        let state = match self.state.load(Ordering::Acquire) {
            NOT_STARTED => RunState::NotStarted,
            RUNNING => RunState::Running,
            STOPPING => RunState::Stopping,
            _ => RunState::Stopped,
        };
        let heartbeat_age = self
            .created
            .elapsed()
            .saturating_sub(Duration::from_millis(self.beat_ms.load(Ordering::Relaxed)));
        let store = {
            let s = lock(&self.store);
            StoreStatus {
                reachable: s.waiting == 0,
                unreachable_ms: s.down_since.map_or(0, |t| millis(t.elapsed())),
                waiting: s.waiting,
                last_error: s.last_error.clone(),
            }
        };
        let live = match state {
            RunState::NotStarted | RunState::Running => heartbeat_age <= stall_limit,
            RunState::Stopping => true,
            RunState::Stopped => false,
        };
        let has_source = match (&kafka, &amqp) {
            (Some(k), _) => k.partitions_assigned > 0,
            (_, Some(a)) => a.channel_open,
            _ => false,
        };
        let mut intake_paused = Vec::new();
        if state == RunState::Running {
            if !store.reachable {
                intake_paused.push(PauseReason::StoreUnavailable);
            }
            if kafka.is_some_and(|k| k.partitions_assigned == 0) {
                intake_paused.push(PauseReason::NoPartitions);
            }
            if amqp.is_some_and(|a| !a.channel_open) {
                intake_paused.push(PauseReason::Disconnected);
            }
            if busy {
                intake_paused.push(PauseReason::Backpressure);
            }
        }
        HealthReport {
            broker: if kafka.is_some() { "kafka" } else { "amqp" },
            state,
            live,
            ready: live && state == RunState::Running && store.reachable && has_source,
            heartbeat_age_ms: millis(heartbeat_age),
            store,
            intake_paused,
            kafka,
            amqp,
        }
    }
}

/// A fresh heartbeat interval whose first tick is one period away.
pub(crate) fn heartbeat() -> Interval {
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    beat
}

/// Marks the consumer stopped when `run` ends, however it ends.
pub(crate) struct Running<'a>(&'a HealthState);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.state.store(STOPPED, Ordering::Release);
    }
}

/// One message waiting for the store; see [`HealthState::store_unavailable`].
#[derive(Debug)]
pub(crate) struct StoreDown<'a>(&'a HealthState);

impl Drop for StoreDown<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.store);
        s.waiting = s.waiting.saturating_sub(1);
        if s.waiting == 0 {
            s.down_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(open: bool) -> Option<AmqpHealth> {
        Some(AmqpHealth {
            channel_open: open,
            ..AmqpHealth::default()
        })
    }

    #[test]
    fn ready_needs_running_store_and_a_source_live_ends_with_stop() {
        let h = HealthState::default();
        let limit = DEFAULT_STALL_LIMIT;
        let r = h.report(limit, None, amqp(true), false);
        assert_eq!(r.state, RunState::NotStarted);
        assert!(r.live && !r.ready);
        let run = h.running();
        assert!(h.report(limit, None, amqp(true), false).ready);
        assert!(!h.report(limit, None, amqp(false), false).ready);
        let down = h.store_unavailable("injected");
        let again = h.store_unavailable("injected twice");
        let r = h.report(limit, None, amqp(true), false);
        assert!(r.live && !r.ready && !r.store.reachable);
        assert_eq!(r.store.waiting, 2);
        assert_eq!(r.intake_paused, vec![PauseReason::StoreUnavailable]);
        drop(down);
        assert!(!h.report(limit, None, amqp(true), false).ready);
        drop(again);
        let r = h.report(limit, None, amqp(true), true);
        assert!(r.ready && r.store.reachable && r.store.unreachable_ms == 0);
        assert_eq!(r.store.last_error.as_deref(), Some("injected twice"));
        assert_eq!(r.intake_paused, vec![PauseReason::Backpressure]);
        h.stopping();
        let r = h.report(limit, None, amqp(true), false);
        assert!(r.live && !r.ready && r.intake_paused.is_empty());
        drop(run);
        let r = h.report(limit, None, amqp(true), false);
        assert_eq!(r.state, RunState::Stopped);
        assert!(!r.live && !r.ready);
    }

    #[test]
    fn a_loop_that_stops_beating_is_not_live() {
        let h = HealthState::default();
        let _run = h.running();
        std::thread::sleep(Duration::from_millis(30));
        let kafka = Some(KafkaHealth {
            partitions_assigned: 1,
            ..KafkaHealth::default()
        });
        let r = h.report(Duration::from_millis(10), kafka, None, false);
        assert!(!r.live && !r.ready, "{r:?}");
        h.beat();
        assert!(
            h.report(Duration::from_millis(10), kafka, None, false)
                .ready
        );
        let none = Some(KafkaHealth::default());
        let r = h.report(DEFAULT_STALL_LIMIT, none, None, false);
        assert!(!r.ready);
        assert_eq!(r.intake_paused, vec![PauseReason::NoPartitions]);
    }

    #[test]
    fn the_report_serializes_with_only_its_brokers_part() {
        let h = HealthState::default();
        let json =
            serde_json::to_value(h.report(DEFAULT_STALL_LIMIT, None, amqp(false), false)).unwrap();
        assert_eq!(json["broker"], "amqp");
        assert_eq!(json["state"], "not_started");
        assert_eq!(json["amqp"]["channel_open"], false);
        assert!(json.get("kafka").is_none(), "{json}");
        assert_eq!(json["store"]["reachable"], true);
    }
}
