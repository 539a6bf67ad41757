//! The embedded in-memory store.
//!
//! Correct under concurrency inside one process (one mutex, every operation atomic), with leases
//! and retention honoured. It keeps time with `tokio::time::Instant`, so tests can drive expiry with
//! a paused tokio clock (`#[tokio::test(start_paused = true)]` and `tokio::time::advance`).
//!
//! Tokens come from one counter for the whole store, so a key's token keeps growing for the life
//! of the store, even after its record expired or was forgotten: an owner that stalled past its
//! record's lifetime can never write with a token that a later claim was given again.

use super::types::*;
use super::{Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::outcome::Outcome;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Expired entries are swept after this many writes, or after as many writes as the map kept at
/// the last sweep if that is more: memory stays bounded (at most about twice the entries alive at
/// the last sweep, plus this many) without a timer, and a sweep's scan costs each write O(1)
/// however large the map grows (a fixed period made every write pay `len / period` entries).
const SWEEP_EVERY: u64 = 4096;

#[derive(Clone, Debug)]
enum State {
    InProgress {
        lease_until: Instant,
    },
    Released,
    Completed {
        outcome: Outcome,
        completed_at: SystemTime,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    token: u64,
    fingerprint: Fingerprint,
    attempt: u32,
    state: State,
    expires_at: Instant,
}

/// In-process [`Store`]: the default for development, tests and the quickstart.
///
/// Records do not survive the process, so it only deduplicates within one consumer process.
#[derive(Debug)]
pub struct MemoryStore {
    records: Mutex<HashMap<RecordKey, Entry>>,
    /// Writes since the last sweep, and how many the next sweep waits for (both changed only
    /// under the `records` lock).
    writes: AtomicU64,
    sweep_after: AtomicU64,
    /// The last token handed out (by any key); only advanced under the `records` lock.
    last_token: AtomicU64,
    max_outcome_bytes: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default 1 MiB outcome limit.
    pub fn new() -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            sweep_after: AtomicU64::new(SWEEP_EVERY),
            last_token: AtomicU64::new(0),
            max_outcome_bytes: DEFAULT_MAX_OUTCOME_BYTES,
        }
    }

    /// Sets the largest outcome accepted by `complete`.
    pub fn with_max_outcome_bytes(mut self, limit: usize) -> Self {
        self.max_outcome_bytes = limit;
        self
    }

    /// Number of live (unexpired) records.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|e| e.expires_at > now).count()
    }

    /// Whether the store holds no live record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordKey, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (every update is a
        // single assignment), so a poisoned map is still consistent.
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn maybe_sweep(&self, map: &mut HashMap<RecordKey, Entry>, now: Instant) {
        let since = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if since >= self.sweep_after.load(Ordering::Relaxed) {
            map.retain(|_, e| e.expires_at > now);
            self.writes.store(0, Ordering::Relaxed);
            self.sweep_after
                .store(SWEEP_EVERY.max(map.len() as u64), Ordering::Relaxed);
        }
    }
}

/// `d` after `now`, saturating (about 30 years ahead) instead of panicking on huge durations.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365 * 30)))
        .unwrap_or(now)
}

fn live<'m>(
    map: &'m mut HashMap<RecordKey, Entry>,
    key: &RecordKey,
    now: Instant,
) -> Option<&'m mut Entry> {
    match map.get(key) {
        Some(e) if e.expires_at <= now => {
            map.remove(key);
            None
        }
        _ => map.get_mut(key),
    }
}

fn to_record(key: &RecordKey, e: &Entry, now: Instant) -> Record {
    let state = match &e.state {
        State::InProgress { lease_until } => RecordState::InProgress {
            lease_remaining: lease_until.saturating_duration_since(now),
        },
        State::Released => RecordState::Released,
        State::Completed {
            outcome,
            completed_at,
        } => RecordState::Completed {
            outcome: outcome.clone(),
            completed_at: *completed_at,
        },
    };
    Record {
        key: key.clone(),
        token: Token(e.token),
        fingerprint: e.fingerprint,
        attempt: e.attempt,
        state,
        expires_in: Some(e.expires_at.saturating_duration_since(now)),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        self.maybe_sweep(&mut map, now);
        let fresh = |attempt: u32| Entry {
            // Store-wide, so a record that expired and is claimed again never reuses a token.
            token: self.last_token.fetch_add(1, Ordering::Relaxed) + 1,
            fingerprint: *req.fingerprint,
            attempt,
            state: State::InProgress {
                lease_until: later(now, req.lease),
            },
            expires_at: later(now, req.retention.max(req.lease)),
        };
        let Some(e) = live(&mut map, req.key, now) else {
            let entry = fresh(1);
            let token = Token(entry.token);
            map.insert(req.key.clone(), entry);
            return Ok(Claim::Acquired { token, attempt: 1 });
        };
        if !matches!(e.state, State::Released) && e.fingerprint != *req.fingerprint {
            return Ok(Claim::Conflict {
                stored: e.fingerprint,
            });
        }
        match &e.state {
            State::Completed { outcome, .. } => Ok(Claim::Completed {
                outcome: outcome.clone(),
            }),
            State::InProgress { lease_until } if *lease_until > now => Ok(Claim::InFlight {
                retry_after: *lease_until - now,
            }),
            State::InProgress { .. } | State::Released => {
                *e = fresh(e.attempt + 1);
                Ok(Claim::Acquired {
                    token: Token(e.token),
                    attempt: e.attempt,
                })
            }
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        if outcome.body.len() > self.max_outcome_bytes {
            return Err(StoreError::OutcomeTooLarge {
                size: outcome.body.len(),
                limit: self.max_outcome_bytes,
            });
        }
        let now = Instant::now();
        let mut map = self.lock();
        let Some(e) = live(&mut map, key, now) else {
            return Ok(Fence::Lost);
        };
        if e.token != token.0 {
            return Ok(Fence::Lost);
        }
        match e.state {
            State::InProgress { .. } => {
                e.state = State::Completed {
                    outcome: outcome.clone(),
                    completed_at: SystemTime::now(),
                };
                e.expires_at = later(now, retention);
                Ok(Fence::Held)
            }
            State::Completed { .. } => Ok(Fence::Held),
            State::Released => Ok(Fence::Lost),
        }
    }

    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(e) = live(&mut map, key, now) else {
            return Ok(Fence::Lost);
        };
        if e.token != token.0 || matches!(e.state, State::Completed { .. }) {
            return Ok(Fence::Lost);
        }
        e.state = State::Released;
        if mode == Release::Reset {
            e.attempt = 0;
        }
        Ok(Fence::Held)
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        match live(&mut map, key, now) {
            Some(e) if e.token == token.0 && matches!(e.state, State::InProgress { .. }) => {
                e.state = State::InProgress {
                    lease_until: later(now, lease),
                };
                e.expires_at = e.expires_at.max(later(now, lease));
                Ok(Fence::Held)
            }
            _ => Ok(Fence::Lost),
        }
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        Ok(live(&mut map, key, now).map(|e| to_record(key, e, now)))
    }

    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self.lock();
        let existed = live(&mut map, key, now).is_some();
        map.remove(key);
        Ok(existed)
    }

    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        let count = count.max(1);
        let now = Instant::now();
        let map = self.lock();
        // Cursor = the last key returned; keys are visited in sorted order.
        let mut keys: Vec<&RecordKey> = map
            .iter()
            .filter(|(k, e)| k.scope == scope && e.expires_at > now)
            .filter(|(k, _)| cursor.as_deref().is_none_or(|c| k.key.as_str() > c))
            .map(|(k, _)| k)
            .collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        let more = keys.len() > count;
        keys.truncate(count);
        let next = if more {
            keys.last().map(|k| k.key.as_str().to_string())
        } else {
            None
        };
        let records = keys
            .into_iter()
            .filter_map(|k| map.get(k).map(|e| to_record(k, e, now)))
            .filter(|r| filter.matches(&r.state))
            .collect();
        Ok(ScanPage { records, next })
    }

    async fn counts(&self, scope: &str) -> Result<Option<StateCounts>, StoreError> {
        let now = Instant::now();
        let map = self.lock();
        let mut counts = StateCounts::default();
        for (k, e) in map.iter() {
            if k.scope == scope && e.expires_at > now {
                counts.add(&to_record(k, e, now));
            }
        }
        Ok(Some(counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::IdempotencyKey;

    fn key(set: &str, i: usize) -> RecordKey {
        RecordKey::new("s", IdempotencyKey::new(format!("{set}{i}")).unwrap())
    }

    /// Claims keys `{set}0` … `{set}{n - 1}` with lease and retention `life`.
    async fn claim_all(store: &MemoryStore, set: &str, n: usize, life: Duration) {
        let fp = Fingerprint::of_bytes(b"p");
        for i in 0..n {
            let k = key(set, i);
            let req = ClaimRequest::new(&k, &fp, life, life);
            store.claim(&req).await.unwrap();
        }
    }

    /// Expired records leave the map within about one map's worth of writes, however large it is;
    /// live ones stay.
    #[tokio::test(start_paused = true)]
    async fn expired_records_are_swept_and_live_ones_kept() {
        let store = MemoryStore::new();
        let (short, long) = (Duration::from_secs(1), Duration::from_secs(3600));
        let n = 3 * SWEEP_EVERY as usize;
        claim_all(&store, "short", n, short).await;
        claim_all(&store, "long", n, long).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(store.len(), n, "only the long-lived records are alive");
        // The last sweep kept at most 2n entries, so the next one comes within 2n writes.
        claim_all(&store, "new", 2 * n, long).await;
        let held = store.lock().len();
        assert!(
            held <= 3 * n,
            "{held} entries held: the expired ones were not swept"
        );
        assert_eq!(store.len(), 3 * n);
        for i in [0, n - 1] {
            let k = key("long", i);
            assert!(
                store.get(&k).await.unwrap().is_some(),
                "live record {i} swept"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn counts_agree_with_the_records() {
        let store = MemoryStore::new();
        let fp = Fingerprint::of_bytes(b"p");
        let (lease, retention) = (Duration::from_secs(10), Duration::from_secs(100));
        let mut tokens = Vec::new();
        for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let k = RecordKey::new("s", IdempotencyKey::new(*key).unwrap());
            let lease = lease * (i as u32 + 1);
            let Claim::Acquired { token, .. } = store
                .claim(&ClaimRequest::new(&k, &fp, lease, retention))
                .await
                .unwrap()
            else {
                panic!("not acquired")
            };
            tokens.push((k, token));
        }
        let other = RecordKey::new("other", IdempotencyKey::new("a").unwrap());
        store
            .claim(&ClaimRequest::new(&other, &fp, lease, retention))
            .await
            .unwrap();
        let (c, tc) = &tokens[2];
        store
            .complete(c, *tc, &Outcome::succeeded("1"), retention)
            .await
            .unwrap();
        let (d, td) = &tokens[3];
        store
            .complete(d, *td, &Outcome::failed("1"), retention)
            .await
            .unwrap();
        let (e, te) = &tokens[4];
        store.release(e, *te, Release::Retry).await.unwrap();
        // "a" (10 s lease) expires: its zero lease is the one that ends first.
        tokio::time::advance(Duration::from_secs(15)).await;

        let counts = store.counts("s").await.unwrap().unwrap();
        assert_eq!(counts.in_progress, 2);
        assert_eq!(counts.in_progress_expired, 1);
        assert_eq!(counts.completed, 2);
        assert_eq!(counts.completed_failed, 1);
        assert_eq!(counts.released, 1);
        let (key, left) = counts.closest_lease.unwrap();
        assert_eq!((key.as_str(), left), ("a", Duration::ZERO));
    }
}
