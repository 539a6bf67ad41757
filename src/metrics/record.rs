//! The crate's own recording calls, one line at each call site. Label values are static strings
//! or the configured scope label, never a key, offset or payload.

// Broker-specific helpers are used only when their adapter is compiled in.
#![cfg_attr(not(all(feature = "kafka", feature = "amqp")), allow(dead_code))]

use super::{
    AMQP_CONNECTION_UP, AMQP_RECONNECTS, CLAIMS_REACQUIRED, DEAD_LETTER_FAILURES, HANDLER_DURATION,
    IN_FLIGHT, LEASE_RENEWALS, STORE_DOWN_SECONDS, STORE_UP,
};
#[cfg(feature = "kafka")]
use super::{KAFKA_COMMIT_FAILURES, KAFKA_PARTITIONS_ASSIGNED, KAFKA_PARTITIONS_PAUSED};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Counts a message in [`IN_FLIGHT`] until dropped (also when its future is dropped midway).
pub(crate) struct InFlight(Arc<str>);

impl InFlight {
    pub(crate) fn enter(scope: &Arc<str>) -> Self {
        ::metrics::gauge!(IN_FLIGHT, "scope" => scope.clone()).increment(1.0);
        InFlight(scope.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!(IN_FLIGHT, "scope" => self.0.clone()).decrement(1.0);
    }
}

/// Records one handler run of `elapsed` that ended as `result` (`ok`, `retriable`, `permanent`,
/// `interrupted`).
pub(crate) fn handler_ran(scope: &Arc<str>, result: &'static str, elapsed: Duration) {
    ::metrics::histogram!(HANDLER_DURATION, "scope" => scope.clone(), "result" => result)
        .record(elapsed.as_secs_f64());
}

/// Counts one lease renewal (`ok`, `lost`, `error`).
pub(crate) fn lease_renewed(scope: &Arc<str>, result: &'static str) {
    ::metrics::counter!(LEASE_RENEWALS, "scope" => scope.clone(), "result" => result).increment(1);
}

/// Counts a claim acquired at attempt > 1.
pub(crate) fn claim_reacquired(scope: &Arc<str>) {
    ::metrics::counter!(CLAIMS_REACQUIRED, "scope" => scope.clone()).increment(1);
}

/// Counts a dead-letter copy that could not be published (`broker`: `kafka` or `amqp`).
pub(crate) fn dead_letter_failed(broker: &'static str, scope: &str) {
    ::metrics::counter!(DEAD_LETTER_FAILURES, "broker" => broker, "scope" => scope.to_string())
        .increment(1);
}

/// Sets the Kafka assigned-partitions gauge.
#[cfg(feature = "kafka")]
pub(crate) fn kafka_assigned(scope: &str, partitions: usize) {
    ::metrics::gauge!(KAFKA_PARTITIONS_ASSIGNED, "scope" => scope.to_string())
        .set(partitions as f64);
}

/// Sets the Kafka paused-partitions gauge.
#[cfg(feature = "kafka")]
pub(crate) fn kafka_paused(scope: &str, partitions: usize) {
    ::metrics::gauge!(KAFKA_PARTITIONS_PAUSED, "scope" => scope.to_string()).set(partitions as f64);
}

/// Counts a failed Kafka offset commit.
#[cfg(feature = "kafka")]
pub(crate) fn kafka_commit_failed(scope: &str) {
    ::metrics::counter!(KAFKA_COMMIT_FAILURES, "scope" => scope.to_string()).increment(1);
}

/// Sets the RabbitMQ connection gauge.
pub(crate) fn amqp_connection(scope: &str, up: bool) {
    let v = if up { 1.0 } else { 0.0 };
    ::metrics::gauge!(AMQP_CONNECTION_UP, "scope" => scope.to_string()).set(v);
}

/// Counts a RabbitMQ reconnect.
pub(crate) fn amqp_reconnected(scope: &str) {
    ::metrics::counter!(AMQP_RECONNECTS, "scope" => scope.to_string()).increment(1);
}

/// [`STORE_UP`] and [`STORE_DOWN_SECONDS`] of one engine. The down time is added at every failed
/// call and at the recovery, so the counter grows during a long outage, not only after it;
/// fractions of a second are carried until they make a whole one (counters are integers).
#[derive(Debug)]
pub(crate) struct StoreUptime {
    scope: Arc<str>,
    down: Mutex<Down>,
}

#[derive(Debug, Default)]
struct Down {
    /// When down time was last accounted; `None` while the store is up.
    since: Option<Instant>,
    carry: Duration,
}

impl StoreUptime {
    pub(crate) fn new(scope: Arc<str>) -> Self {
        ::metrics::gauge!(STORE_UP, "scope" => scope.clone()).set(1.0);
        Self {
            scope,
            down: Mutex::default(),
        }
    }

    /// A transient store failure.
    pub(crate) fn failed(&self) {
        let now = Instant::now();
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match down.since {
            Some(since) => self.add(&mut down, now - since),
            None => ::metrics::gauge!(STORE_UP, "scope" => self.scope.clone()).set(0.0),
        }
        down.since = Some(now);
    }

    /// A success after failures.
    pub(crate) fn recovered(&self) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = down.since.take() {
            self.add(&mut down, since.elapsed());
            ::metrics::gauge!(STORE_UP, "scope" => self.scope.clone()).set(1.0);
        }
    }

    fn add(&self, down: &mut Down, elapsed: Duration) {
        down.carry += elapsed;
        let whole = down.carry.as_secs();
        if whole > 0 {
            ::metrics::counter!(STORE_DOWN_SECONDS, "scope" => self.scope.clone()).increment(whole);
            down.carry -= Duration::from_secs(whole);
        }
    }
}
