use crate::fingerprint::Fingerprint;
use crate::key::IdempotencyKey;
use crate::outcome::Outcome;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Default largest outcome a store accepts: 1 MiB.
pub const DEFAULT_MAX_OUTCOME_BYTES: usize = 1024 * 1024;

/// A fencing token: grows with every successful claim of a key and never goes back, even after the
/// key's record expired (see the [store module docs](crate::store#fencing-tokens)). Only the order
/// of tokens means anything; they are not consecutive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The identity of one record: a key inside a scope (normally the consumer group or queue).
///
/// The same key in two scopes is two records, so two services consuming one message each process it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// The namespace.
    pub scope: String,
    /// The idempotency key.
    pub key: IdempotencyKey,
}

impl RecordKey {
    /// A record key for `key` in `scope`.
    pub fn new(scope: impl Into<String>, key: IdempotencyKey) -> Self {
        Self {
            scope: scope.into(),
            key,
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.scope, self.key)
    }
}

/// Arguments of [`Store::claim`](super::Store::claim).
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    /// The record to claim.
    pub key: &'a RecordKey,
    /// Fingerprint of the message being processed.
    pub fingerprint: &'a Fingerprint,
    /// How long the claim stays valid without renewal.
    pub lease: Duration,
    /// How long the record (including a release tombstone) is kept.
    pub retention: Duration,
}

impl<'a> ClaimRequest<'a> {
    /// Bundles the claim arguments.
    pub fn new(
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        lease: Duration,
        retention: Duration,
    ) -> Self {
        Self {
            key,
            fingerprint,
            lease,
            retention,
        }
    }
}

/// What [`Store::claim`](super::Store::claim) found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key until the lease ends; run the handler.
    Acquired {
        /// Fencing token to pass to complete / release / renew.
        token: Token,
        /// 1 for the first attempt; grows with takeovers and retried releases.
        attempt: u32,
    },
    /// Another consumer holds a live lease on the same message; do not run, wait and re-claim.
    InFlight {
        /// Time left on the owner's lease.
        retry_after: Duration,
    },
    /// The key was completed; acknowledge without running.
    Completed {
        /// The stored outcome.
        outcome: Outcome,
    },
    /// The key is recorded with a different payload fingerprint; never process silently.
    Conflict {
        /// Fingerprint on record.
        stored: Fingerprint,
    },
}

/// Whether a fenced write applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The token was current; the write applied (or had already applied).
    Held,
    /// The token is stale (another claimant took over) or the record is gone; nothing changed.
    Lost,
}

/// How [`Store::release`](super::Store::release) treats the attempt counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// A retriable failure: the next claim counts as the next attempt.
    Retry,
    /// The message leaves this consumer (dead-lettered): reset the count so a later replay starts
    /// again at attempt 1.
    Reset,
}

/// A stored record as [`Store::get`](super::Store::get) returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Which record.
    pub key: RecordKey,
    /// Current fencing token.
    pub token: Token,
    /// Fingerprint of the message that claimed it.
    pub fingerprint: Fingerprint,
    /// Attempt number of the current or last claim.
    pub attempt: u32,
    /// Lifecycle state.
    pub state: RecordState,
    /// Time until the store drops the record, when known.
    pub expires_in: Option<Duration>,
}

/// The lifecycle state of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed; `lease_remaining` is zero when the owner's lease has expired.
    InProgress {
        /// Time left on the lease.
        lease_remaining: Duration,
    },
    /// Released by its owner; behaves as absent for claims, but remembers the last token.
    Released,
    /// Completed with an outcome.
    Completed {
        /// The stored outcome.
        outcome: Outcome,
        /// When it completed (store clock).
        completed_at: SystemTime,
    },
}

impl RecordState {
    /// `in_progress`, `released` or `completed`.
    pub fn name(&self) -> &'static str {
        match self {
            RecordState::InProgress { .. } => "in_progress",
            RecordState::Released => "released",
            RecordState::Completed { .. } => "completed",
        }
    }
}

/// Which records [`Store::scan`](super::Store::scan) returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateFilter {
    /// Every state.
    #[default]
    All,
    /// Only in-progress records.
    InProgress,
    /// Only completed records.
    Completed,
    /// Only released tombstones.
    Released,
}

impl StateFilter {
    /// Whether `state` passes the filter.
    pub fn matches(self, state: &RecordState) -> bool {
        matches!(
            (self, state),
            (StateFilter::All, _)
                | (StateFilter::InProgress, RecordState::InProgress { .. })
                | (StateFilter::Completed, RecordState::Completed { .. })
                | (StateFilter::Released, RecordState::Released)
        )
    }
}

/// One page of [`Store::scan`](super::Store::scan).
#[derive(Clone, Debug, Default)]
pub struct ScanPage {
    /// Records on this page.
    pub records: Vec<Record>,
    /// Cursor for the next page; `None` at the end.
    pub next: Option<String>,
}

/// Record counts of one scope by state, as [`Store::counts`](super::Store::counts) returns them.
///
/// A backend builds one from `StateCounts::default()` by setting the fields, or by
/// [`add`](Self::add)ing each record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateCounts {
    /// In-progress records (live or expired leases).
    pub in_progress: u64,
    /// In-progress records whose lease has expired (a crashed owner; the next delivery takes over).
    pub in_progress_expired: u64,
    /// Completed records.
    pub completed: u64,
    /// Completed records whose stored outcome is a failure.
    pub completed_failed: u64,
    /// Released tombstones.
    pub released: u64,
    /// The in-progress record whose lease ends first, with the time left (zero when expired).
    pub closest_lease: Option<(IdempotencyKey, Duration)>,
}

impl StateCounts {
    /// Adds one record to the counts.
    pub fn add(&mut self, record: &Record) {
        match &record.state {
            RecordState::InProgress { lease_remaining } => {
                self.in_progress += 1;
                if lease_remaining.is_zero() {
                    self.in_progress_expired += 1;
                }
                if self
                    .closest_lease
                    .as_ref()
                    .is_none_or(|(_, left)| lease_remaining < left)
                {
                    self.closest_lease = Some((record.key.key.clone(), *lease_remaining));
                }
            }
            RecordState::Completed { outcome, .. } => {
                self.completed += 1;
                if outcome.status == crate::outcome::OutcomeStatus::Failed {
                    self.completed_failed += 1;
                }
            }
            RecordState::Released => self.released += 1,
        }
    }
}
