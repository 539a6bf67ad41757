//! An estimate of the Redis server's clock, so a claim of a new key can be a plain
//! `SET … NX GET` (no script, no `TIME` on the server) whose token and lease end the client
//! computes (see the plain claim in `mod.rs`).
//!
//! A reading is `TIME`'s answer `T` with the instants just before sending it (`sent`) and just
//! after its answer (`received`). The server read its clock somewhere between the two, so at any
//! later instant `i` its clock is between `T + (i − received)` (low) and `T + (i − sent)` (high),
//! up to the drift of the two clocks since the reading (at most [`DRIFT_PPM`]). Tokens use the
//! high side (a larger token is always safe), lease ends the low side (a lease is never longer
//! than asked, as with the script, which adds the lease to its own `TIME`).
//!
//! Readings are taken at connect and refreshed in the background once older than [`REFRESH`]
//! (never on a claim's path); one older than [`MAX_AGE`] is not used: the claim then goes through
//! the script, which reads `TIME` itself. So a step of the server clock is followed within
//! [`MAX_AGE`].

use super::conn::Conn;
use redis::RedisResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Readings older than this are refreshed (in the background; five `TIME` calls a second at most).
pub(crate) const REFRESH: Duration = Duration::from_millis(200);
/// Readings older than this are not used.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(500);
/// Largest rate (parts per million) at which the client's monotonic clock and the server's clock
/// are assumed to drift apart between readings: both may be slewed by NTP (`ntpd` slews at most
/// 500 ppm). A faster correction (a step, or a slew rate set higher) is followed within
/// [`MAX_AGE`].
pub(crate) const DRIFT_PPM: u64 = 1000;

/// One `TIME` reading.
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// The server clock, µs since the epoch.
    server_us: u64,
    sent: Instant,
    received: Instant,
}

/// Bounds of the server clock at one instant, µs since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Estimate {
    /// The server clock is at most this (drift included).
    pub(crate) high_us: u64,
    /// The server clock is at least this (drift included).
    pub(crate) low_us: u64,
}

impl Estimate {
    /// How far the clocks may drift apart in `elapsed` (µs): already in the bounds for the time
    /// since the reading; a caller that waits longer (for its reply) adds it for that time.
    pub(crate) fn drift_us(elapsed: Duration) -> u64 {
        micros(elapsed).saturating_mul(DRIFT_PPM) / 1_000_000 + 1
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The latest reading of one server's clock, shared by a store and its clones.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    reading: Mutex<Option<Reading>>,
    /// A refresh is on the wire.
    refreshing: AtomicBool,
}

impl ServerClock {
    /// Records `TIME`'s answer (`secs`, `micros`) sent at `sent` and answered at `received`; an
    /// older reading than the one held is ignored (two refreshes may cross).
    pub(crate) fn record(&self, secs: u64, micros: u64, sent: Instant, received: Instant) {
        let reading = Reading {
            server_us: secs.saturating_mul(1_000_000).saturating_add(micros),
            sent,
            received,
        };
        let mut held = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h.sent <= sent) {
            *held = Some(reading);
        }
    }

    /// The server clock at `now`, unless there is no reading younger than [`MAX_AGE`].
    pub(crate) fn estimate(&self, now: Instant) -> Option<Estimate> {
        let reading = (*self.reading.lock().unwrap_or_else(|e| e.into_inner()))?;
        let age = now.checked_duration_since(reading.sent)?;
        if age > MAX_AGE {
            return None;
        }
        let drift_us = Estimate::drift_us(age);
        let high = reading.server_us + micros(age) + drift_us;
        let low = reading
            .server_us
            .saturating_add(micros(now.saturating_duration_since(reading.received)))
            .saturating_sub(drift_us);
        Some(Estimate {
            high_us: high,
            low_us: low,
        })
    }

    /// Whether the reading is older than [`REFRESH`] (or missing) and no refresh is on the wire;
    /// if so, the caller must refresh and call [`Self::refreshed`] when done.
    pub(crate) fn claim_refresh(&self, now: Instant) -> bool {
        let stale = match *self.reading.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(r) => now.saturating_duration_since(r.sent) > REFRESH,
            None => true,
        };
        stale && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Ends the refresh [`Self::claim_refresh`] granted.
    pub(crate) fn refreshed(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

/// A refresh [`ServerClock::claim_refresh`] granted; ends it when dropped.
pub(crate) struct Refresh(Arc<ServerClock>);

impl Refresh {
    pub(crate) fn new(clock: Arc<ServerClock>) -> Self {
        Self(clock)
    }

    pub(crate) fn clock(&self) -> &ServerClock {
        &self.0
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        self.0.refreshed();
    }
}

/// Reads the server clock (`TIME`) into `clock`.
pub(crate) async fn read(conn: &Conn, clock: &ServerClock) -> RedisResult<()> {
    let mut conn = conn.clone();
    let sent = Instant::now();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    clock.record(secs, micros, sent, Instant::now());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_hold_the_server_clock_between_sending_and_the_answer() {
        let clock = ServerClock::default();
        let sent = Instant::now();
        let received = sent + Duration::from_micros(300);
        // The server read 1000 s + 0 µs somewhere within those 300 µs.
        clock.record(1000, 0, sent, received);
        let now = received + Duration::from_millis(100);
        let e = clock.estimate(now).expect("fresh");
        let base = 1_000_000_000u64;
        // Read at `sent`: 100.3 ms have passed since; read at `received`: 100 ms.
        assert!(e.high_us >= base + 100_300, "{e:?}");
        assert!(e.low_us <= base + 100_000, "{e:?}");
        // The drift allowance is small (1000 ppm of 100.3 ms) but there.
        assert!(e.high_us - (base + 100_300) <= 102, "{e:?}");
        assert!((base + 100_000) - e.low_us <= 102, "{e:?}");
    }

    #[test]
    fn old_or_missing_readings_are_not_used_and_ask_for_a_refresh() {
        let clock = ServerClock::default();
        let t0 = Instant::now();
        assert_eq!(clock.estimate(t0), None);
        assert!(clock.claim_refresh(t0));
        // Only one refresh at a time.
        assert!(!clock.claim_refresh(t0));
        clock.record(5, 0, t0, t0);
        clock.refreshed();
        assert!(clock.estimate(t0 + MAX_AGE).is_some());
        assert!(!clock.claim_refresh(t0 + REFRESH));
        assert!(clock.claim_refresh(t0 + REFRESH + Duration::from_millis(1)));
        clock.refreshed();
        assert_eq!(
            clock.estimate(t0 + MAX_AGE + Duration::from_millis(1)),
            None
        );
        // A refresh ends when its guard is dropped, even if its task never ran.
        let clock = Arc::new(clock);
        let later = t0 + MAX_AGE;
        assert!(clock.claim_refresh(later));
        drop(Refresh::new(clock.clone()));
        assert!(clock.claim_refresh(later));
        clock.refreshed();
        // A reading sent before the one held does not replace it.
        clock.record(1, 0, t0 - Duration::from_millis(1), t0);
        assert!(clock.estimate(t0).expect("kept").low_us >= 5_000_000 - 1);
    }
}
