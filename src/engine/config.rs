use crate::key::KeyConfig;
use crate::store::DEFAULT_MAX_OUTCOME_BYTES;
use std::hash::BuildHasher;
use std::time::Duration;

/// Exponential backoff with ±20 % jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound on any delay.
    pub max: Duration,
}

impl Backoff {
    /// Backoff doubling from `initial` up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// Delay before retry number `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        // Jitter spreads retries of many consumers that failed together; RandomState gives a
        // per-call random seed without a dependency on a random-number crate.
        let r = std::collections::hash_map::RandomState::new().hash_one(n) % 401;
        let factor = 0.8 + (r as f64) / 1000.0;
        base.mul_f64(factor).min(self.max)
    }
}

/// Everything the engine needs to know besides the store and the handler.
///
/// Defaults follow the processing contract: 30 s lease renewed every 10 s, 24 h retention, 1 MiB
/// outcome limit, 5 attempts for retriable failures.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Namespace of the keys, normally the consumer group or queue name.
    pub scope: String,
    /// Where keys come from and the missing-key policy.
    pub key: KeyConfig,
    /// Headers whose values take part in the fingerprint besides the payload.
    pub fingerprint_headers: Vec<String>,
    /// How long a claim stays valid without renewal.
    pub lease: Duration,
    /// How often a running handler renews its lease; `None` means `lease / 3`.
    pub renew_every: Option<Duration>,
    /// How long completed records (and release tombstones) are kept. Must exceed the longest replay
    /// window, such as how long messages may sit in a dead-letter queue.
    pub retention: Duration,
    /// Largest serialized outcome; larger ones are dead-lettered with `outcome-too-large`.
    pub max_outcome_bytes: usize,
    /// Attempts for retriable failures before dead-lettering with `retries-exhausted`.
    pub max_attempts: u32,
    /// Delay between attempts after a retriable handler failure.
    pub retry_backoff: Backoff,
    /// Deadline for every store operation.
    pub store_timeout: Duration,
    /// Delay suggested to the adapter while the store is unavailable (grows with consecutive
    /// failures).
    pub store_backoff: Backoff,
    /// How long to wait for another consumer that holds the same key before handing back a retry;
    /// `None` means `lease + 1 s`, so a crashed owner's key is taken over within that time.
    pub in_flight_wait: Option<Duration>,
    /// Re-claim polling while waiting for another consumer (doubles from `initial` to `max`).
    pub in_flight_poll: Backoff,
    /// Re-reads of an unreadable record before dead-lettering with `corrupt-record`.
    pub corrupt_record_retries: u32,
    /// Store permanent failures as the outcome so replays skip them (default: release the key so a
    /// replay after a fix runs again).
    pub store_permanent_failures: bool,
    /// After shutdown is requested, how long a running handler may still take before it is dropped
    /// and its claim released.
    pub shutdown_grace: Duration,
}

impl EngineConfig {
    /// The defaults with the given scope.
    pub fn new(scope: impl Into<String>) -> Self {
        Self {
            scope: scope.into(),
            key: KeyConfig::default(),
            fingerprint_headers: Vec::new(),
            lease: Duration::from_secs(30),
            renew_every: None,
            retention: Duration::from_secs(24 * 3600),
            max_outcome_bytes: DEFAULT_MAX_OUTCOME_BYTES,
            max_attempts: 5,
            retry_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            store_timeout: Duration::from_secs(5),
            store_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            in_flight_wait: None,
            in_flight_poll: Backoff::new(Duration::from_millis(25), Duration::from_secs(1)),
            corrupt_record_retries: 3,
            store_permanent_failures: false,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Effective renewal interval.
    pub fn renew_interval(&self) -> Duration {
        self.renew_every
            .unwrap_or(self.lease / 3)
            .max(Duration::from_millis(10))
    }

    /// Effective bound on waiting for another consumer's claim.
    pub fn in_flight_bound(&self) -> Duration {
        self.in_flight_wait
            .unwrap_or(self.lease + Duration::from_secs(1))
    }

    /// Checks the settings for contradictions.
    pub fn validate(&self) -> Result<(), String> {
        if self.scope.is_empty() {
            return Err("scope must not be empty".into());
        }
        if self.lease.is_zero() {
            return Err("lease must be positive".into());
        }
        if self.renew_interval() >= self.lease {
            return Err(format!(
                "renew interval {:?} must be shorter than the lease {:?}",
                self.renew_interval(),
                self.lease
            ));
        }
        if self.retention < self.lease {
            return Err("retention must be at least the lease".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.key.headers.is_empty() && !self.key.use_message_id {
            return Err("no key source: configure at least one key header".into());
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::new("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d1 = b.delay(1);
        assert!(d1 >= Duration::from_millis(80) && d1 <= Duration::from_millis(120));
        let d3 = b.delay(3);
        assert!(d3 >= Duration::from_millis(320) && d3 <= Duration::from_millis(480));
        assert!(b.delay(40) <= Duration::from_secs(1));
    }

    #[test]
    fn validation_catches_contradictions() {
        assert!(EngineConfig::new("s").validate().is_ok());
        let mut c = EngineConfig::new("s");
        c.renew_every = Some(c.lease);
        assert!(c.validate().is_err());
        assert!(EngineConfig::new("").validate().is_err());
    }
}
