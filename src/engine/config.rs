use crate::fingerprint::FingerprintRule;
use crate::key::{KeyConfig, KeyLogging, KeySource, Scope};
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
        // Not `mul_f64`: it panics when a huge `max` (adapters' own backoffs are not validated)
        // overflows by the jitter.
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Longest accepted [`EngineConfig::lease`]: 1 day. A lease is how long a crashed consumer's key
/// stays blocked; anything longer is a mistake, and huge values overflow clock arithmetic in the
/// stores (Postgres intervals, the memory store's deadlines) or are silently capped (Redis).
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted [`EngineConfig::retention`]: 365 days.
pub const MAX_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest accepted value of every other duration setting (timeouts, backoffs, waits, grace
/// periods, the handler timeout): 1 day.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Shortest accepted value of the settings that must be positive (lease, store timeout, handler
/// timeout, first in-flight poll): 1 ms, the resolution of the Redis store.
pub const MIN_POSITIVE: Duration = Duration::from_millis(1);

/// Why a configuration was refused: an [`EngineConfig`], or the settings of a consumer builder
/// (the Kafka and AMQP consumer errors wrap it in their `Config` variant).
///
/// Each variant names the setting (as the builder method or field is called) so the message
/// points at what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("missing required setting `{setting}`: {hint}")]
    Missing {
        /// The setting, e.g. `bootstrap_servers` or `store`.
        setting: &'static str,
        /// What to give.
        hint: &'static str,
    },
    /// A value outside the accepted range (zero where at least one is needed, a name too long).
    #[error("`{setting}` = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The setting, e.g. `prefetch`.
        setting: &'static str,
        /// The value given (a length for names).
        value: String,
        /// The accepted range, in words.
        expected: String,
    },
    /// A duration setting is outside its documented range (see [`MAX_LEASE`], [`MAX_RETENTION`],
    /// [`MAX_DELAY`], [`MIN_POSITIVE`]).
    #[error("`{field}` = {value:?} is outside {min:?}..={max:?}")]
    DurationOutOfRange {
        /// The setting, e.g. `lease` or `retry_backoff.max`.
        field: &'static str,
        /// The value given.
        value: Duration,
        /// Smallest accepted value.
        min: Duration,
        /// Largest accepted value.
        max: Duration,
    },
    /// Two settings contradict each other.
    #[error("conflicting settings `{setting}` and `{other}`: {reason}")]
    Conflict {
        /// The setting to change, usually.
        setting: &'static str,
        /// The setting it contradicts.
        other: &'static str,
        /// Why they cannot go together.
        reason: String,
    },
    /// A value that cannot be used as given (malformed URL, empty name).
    #[error("invalid `{setting}`: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it (secrets such as URL passwords are not repeated).
        reason: String,
    },
}

impl ConfigError {
    /// A required setting was not given.
    pub fn missing(setting: &'static str, hint: &'static str) -> Self {
        ConfigError::Missing { setting, hint }
    }

    /// `value` of `setting` is outside `expected`.
    pub fn out_of_range(
        setting: &'static str,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::OutOfRange {
            setting,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// `setting` contradicts `other`.
    pub fn conflict(setting: &'static str, other: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Conflict {
            setting,
            other,
            reason: reason.into(),
        }
    }

    /// `setting` cannot be used as given.
    pub fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting the error is about.
    pub fn setting(&self) -> &'static str {
        match self {
            ConfigError::Missing { setting, .. }
            | ConfigError::OutOfRange { setting, .. }
            | ConfigError::Conflict { setting, .. }
            | ConfigError::Invalid { setting, .. } => setting,
            ConfigError::DurationOutOfRange { field, .. } => field,
        }
    }
}

/// Checks that `value` lies in `min..=max`.
fn in_range(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::DurationOutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// Everything the engine needs to know besides the store and the handler.
///
/// Defaults follow the processing contract: 30 s lease renewed every 10 s, 24 h retention, 1 MiB
/// outcome limit, 5 attempts for retriable failures, 10 min handler timeout.
///
/// Every duration is bounded (checked by [`validate`](Self::validate) when an engine is built):
/// the lease by [`MAX_LEASE`], the retention by [`MAX_RETENTION`], everything else by
/// [`MAX_DELAY`]; the lease, the store timeout, the handler timeout and the first in-flight poll
/// must be at least [`MIN_POSITIVE`].
///
/// Start from [`EngineConfig::new`] and change the fields you need (the struct is
/// `#[non_exhaustive]`: new settings arrive with defaults, so this code keeps compiling):
///
/// ```
/// use idemq::fingerprint::FingerprintRule;
/// use idemq::{EngineConfig, KeySource, MissingKeyPolicy, Scope};
/// use std::time::Duration;
///
/// let mut config = EngineConfig::new(Scope::PerTopic);
/// config.key = idemq::KeyConfig::new([KeySource::header("Idempotency-Key"), KeySource::KafkaKey])
///     .missing(MissingKeyPolicy::Reject);
/// config.fingerprint = FingerprintRule::exclude_fields(["/sent_at"]);
/// config.lease = Duration::from_secs(60); // longer than the slowest handler run between renewals
/// config.retention = Duration::from_secs(7 * 24 * 3600); // longer than messages sit in the DLQ
/// config.max_attempts = 8;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Namespace each message's key is claimed in (see [`Scope`]); the consumers' builders set
    /// it to the group id (Kafka) or queue name (AMQP) unless told otherwise.
    pub scope: Scope,
    /// Where keys come from and the missing-key policy.
    pub key: KeyConfig,
    /// Which parts of a message its fingerprint covers (default: the whole payload).
    pub fingerprint: FingerprintRule,
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
    /// Delay between attempts after a retriable handler failure. A handler's
    /// [`HandlerError::retry_after`](crate::HandlerError::retry_after) hint replaces it, clamped
    /// to `retry_backoff.max`.
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
    /// Longest a handler run may take; `None` disables the limit.
    ///
    /// A run past it is dropped and treated as a **retriable failure whose effects may have
    /// happened** (like a panic): the claim is released, the message retried with backoff and
    /// dead-lettered with `retries-exhausted` after `max_attempts`. The lease is renewed while the
    /// handler runs, so the timeout may be longer than the lease: the lease detects a dead
    /// consumer, the timeout a live consumer whose handler hangs (without it such a handler
    /// renews its lease forever and holds its Kafka partition or AMQP prefetch slot). Default 10
    /// minutes: far above any sane per-message handler, and under RabbitMQ's default 30-minute
    /// delivery acknowledgement timeout, which would otherwise close the channel first.
    pub handler_timeout: Option<Duration>,
    /// How the idempotency key appears in log lines and span fields: as it is (default) or, for
    /// keys that hold personal data, as a short hash ([`KeyLogging::Hashed`]).
    pub log_key: KeyLogging,
}

impl EngineConfig {
    /// The defaults with the given scope (a name, or a [`Scope`]). There is deliberately no
    /// `Default`: a scope shared by accident between services would make one skip the other's
    /// messages.
    pub fn new(scope: impl Into<Scope>) -> Self {
        Self {
            scope: scope.into(),
            key: KeyConfig::default(),
            fingerprint: FingerprintRule::default(),
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
            handler_timeout: Some(Duration::from_secs(600)),
            log_key: KeyLogging::Plain,
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
            .unwrap_or(self.lease.saturating_add(Duration::from_secs(1)))
    }

    /// Checks the settings for contradictions and out-of-range durations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.scope.label().is_empty() {
            return Err(ConfigError::invalid(
                "scope",
                "the key namespace must not be empty",
            ));
        }
        self.validate_durations()?;
        if self.renew_interval() >= self.lease {
            return Err(ConfigError::conflict(
                "renew_every",
                "lease",
                format!(
                    "the renew interval {:?} must be shorter than the lease {:?}",
                    self.renew_interval(),
                    self.lease
                ),
            ));
        }
        if self.retention < self.lease {
            return Err(ConfigError::conflict(
                "retention",
                "lease",
                format!(
                    "the retention {:?} must be at least the lease {:?}",
                    self.retention, self.lease
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::out_of_range("max_attempts", 0, "at least 1"));
        }
        if self.key.sources.is_empty() {
            return Err(ConfigError::missing(
                "key source",
                "configure at least one key source (a header, the record key, a property, ...)",
            ));
        }
        for source in &self.key.sources {
            if let KeySource::JsonPointer(p) = source {
                if !p.starts_with('/') {
                    return Err(ConfigError::invalid(
                        "key source",
                        format!("key JSON pointer {p:?} must start with '/'"),
                    ));
                }
            }
        }
        self.fingerprint
            .validate()
            .map_err(|why| ConfigError::invalid("fingerprint", why))?;
        Ok(())
    }

    /// Every duration within its bounds, so no deadline computed from them can overflow.
    fn validate_durations(&self) -> Result<(), ConfigError> {
        let zero = Duration::ZERO;
        in_range("lease", self.lease, MIN_POSITIVE, MAX_LEASE)?;
        in_range("retention", self.retention, MIN_POSITIVE, MAX_RETENTION)?;
        if let Some(every) = self.renew_every {
            in_range("renew_every", every, zero, MAX_DELAY)?;
        }
        in_range(
            "retry_backoff.initial",
            self.retry_backoff.initial,
            zero,
            MAX_DELAY,
        )?;
        in_range("retry_backoff.max", self.retry_backoff.max, zero, MAX_DELAY)?;
        in_range("store_timeout", self.store_timeout, MIN_POSITIVE, MAX_DELAY)?;
        in_range(
            "store_backoff.initial",
            self.store_backoff.initial,
            zero,
            MAX_DELAY,
        )?;
        in_range("store_backoff.max", self.store_backoff.max, zero, MAX_DELAY)?;
        if let Some(wait) = self.in_flight_wait {
            in_range("in_flight_wait", wait, zero, MAX_DELAY)?;
        }
        // A zero first poll would re-claim in a busy loop while another consumer holds the key.
        let poll = &self.in_flight_poll;
        in_range(
            "in_flight_poll.initial",
            poll.initial,
            MIN_POSITIVE,
            MAX_DELAY,
        )?;
        in_range("in_flight_poll.max", poll.max, MIN_POSITIVE, MAX_DELAY)?;
        in_range("shutdown_grace", self.shutdown_grace, zero, MAX_DELAY)?;
        if let Some(timeout) = self.handler_timeout {
            in_range("handler_timeout", timeout, MIN_POSITIVE, MAX_DELAY)?;
        }
        Ok(())
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
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert!(huge.delay(3) > Duration::ZERO);
    }

    #[test]
    fn validation_catches_contradictions() {
        assert!(EngineConfig::new("s").validate().is_ok());
        let mut c = EngineConfig::new("s");
        c.renew_every = Some(c.lease);
        let err = c.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Conflict {
                setting: "renew_every",
                other: "lease",
                ..
            }
        ));
        assert!(err.to_string().contains("renew_every"), "{err}");
        let err = EngineConfig::new("").validate().unwrap_err();
        assert_eq!(err.setting(), "scope");
        let mut c = EngineConfig::new("s");
        c.max_attempts = 0;
        let err = c.validate().unwrap_err();
        assert!(matches!(
            err,
            ConfigError::OutOfRange {
                setting: "max_attempts",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "`max_attempts` = 0 is out of range: expected at least 1"
        );
        let mut c = EngineConfig::new("s");
        c.key.sources.clear();
        assert_eq!(c.validate().unwrap_err().setting(), "key source");
        c.key.sources.push(KeySource::json_pointer("id"));
        assert!(c.validate().is_err());
        c.key.sources = vec![KeySource::json_pointer("/id")];
        assert_eq!(c.validate(), Ok(()));
        c.fingerprint = FingerprintRule::exclude_fields(["sent_at"]);
        assert_eq!(c.validate().unwrap_err().setting(), "fingerprint");
    }

    #[test]
    fn every_duration_is_bounded() {
        let huge = Duration::MAX;
        type Setter = fn(&mut EngineConfig, Duration);
        let cases: [(&str, Setter); 13] = [
            ("lease", |c, d| c.lease = d),
            ("retention", |c, d| c.retention = d),
            ("renew_every", |c, d| c.renew_every = Some(d)),
            ("retry_backoff.initial", |c, d| c.retry_backoff.initial = d),
            ("retry_backoff.max", |c, d| c.retry_backoff.max = d),
            ("store_timeout", |c, d| c.store_timeout = d),
            ("store_backoff.initial", |c, d| c.store_backoff.initial = d),
            ("store_backoff.max", |c, d| c.store_backoff.max = d),
            ("in_flight_wait", |c, d| c.in_flight_wait = Some(d)),
            ("in_flight_poll.initial", |c, d| {
                c.in_flight_poll.initial = d
            }),
            ("in_flight_poll.max", |c, d| c.in_flight_poll.max = d),
            ("shutdown_grace", |c, d| c.shutdown_grace = d),
            ("handler_timeout", |c, d| c.handler_timeout = Some(d)),
        ];
        for (name, set) in cases {
            let mut c = EngineConfig::new("s");
            set(&mut c, huge);
            match c.validate() {
                Err(ConfigError::DurationOutOfRange { field, value, .. }) => {
                    assert_eq!((field, value), (name, huge))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // The documented maxima themselves are accepted.
        let mut c = EngineConfig::new("s");
        c.lease = MAX_LEASE;
        c.retention = MAX_RETENTION;
        c.handler_timeout = Some(MAX_DELAY);
        c.in_flight_wait = Some(MAX_DELAY);
        assert_eq!(c.validate(), Ok(()));
        // Settings that must be positive.
        let mut c = EngineConfig::new("s");
        c.handler_timeout = Some(Duration::ZERO);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DurationOutOfRange {
                field: "handler_timeout",
                ..
            })
        ));
        let mut c = EngineConfig::new("s");
        c.lease = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
