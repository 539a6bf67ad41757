//! An opt-in, in-process cache of completed keys in front of any [`Store`].
//!
//! A replay (a claim of a key that is already completed, with the same payload fingerprint) costs a
//! store round trip. [`CachedStore`] remembers completed keys locally, bounded by entries and by
//! age, and answers such claims without one. Everything else goes to the wrapped store.

use super::types::*;
use super::{Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::outcome::Outcome;
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// A [`Store`] wrapper that answers replays of recently completed keys from process memory.
///
/// What it caches: a key's outcome and payload fingerprint once this process saw the key
/// completed, either because a claim returned [`Claim::Completed`] or because this process
/// completed it itself ([`Store::complete`] returned [`Fence::Held`] for a token this wrapper
/// handed out). A later claim of that key with the **same** fingerprint returns
/// [`Claim::Completed`] from memory. A claim with another fingerprint still goes to the store, so
/// conflicts are detected as before. `complete`, `release`, `renew` and `forget` always go to the
/// store, and `release`, `renew` and `forget` drop the local entry of their key; `get` and `scan`
/// pass through untouched.
///
/// Bounds: at most `capacity` completed keys (the oldest inserted is evicted first) and the same
/// number of claims awaiting their `complete`; an entry is served for at most `max_age`, and never
/// past the retention the record was written or claimed with. `capacity == 0` disables caching.
/// An entry costs its key, its outcome body and about 0.5 KiB of bookkeeping (measured: 100 000
/// entries with short keys and outcomes took about 70 MiB of resident memory).
///
/// # What it trades
///
/// Inside one process the wrapper is exact: its own `forget` or `release` of a key is seen by the
/// next claim. Changes made by **another process** are not: if another process (or an operator with
/// the CLI) forgets a key, or the record is replaced after a forget, this process keeps answering
/// replays of that key from memory with the old outcome for up to `max_age` after it cached it.
/// Within that window a message that would now be processed again is acknowledged as a replay
/// instead. Pick `max_age` as the longest such delay you accept; leave the cache off when operators
/// re-run keys by forgetting them and expect the next delivery to run at once.
///
/// With the Postgres store and transactional handlers, pass the concrete store where the
/// transactional API needs it; the wrapper only implements the [`Store`] trait.
///
/// # Example
///
/// ```
/// # async fn demo() -> Result<(), idemq::StoreError> {
/// use idemq::store::{CachedStore, Claim, ClaimRequest, MemoryStore, RecordKey, Store};
/// use idemq::{Fingerprint, IdempotencyKey, Outcome};
/// use std::time::Duration;
///
/// // Up to 100 000 completed keys, each answered locally for at most 60 s.
/// let store = CachedStore::new(MemoryStore::new(), 100_000, Duration::from_secs(60));
/// let key = RecordKey::new("billing", IdempotencyKey::new("order-1").unwrap());
/// let fp = Fingerprint::of_bytes(b"payload");
/// let req = ClaimRequest::new(&key, &fp, Duration::from_secs(30), Duration::from_secs(86400));
/// let Claim::Acquired { token, .. } = store.claim(&req).await? else { unreachable!() };
/// store.complete(&key, token, &Outcome::succeeded("ok"), Duration::from_secs(86400)).await?;
/// // The replay is answered from memory: no store call.
/// assert!(matches!(store.claim(&req).await?, Claim::Completed { .. }));
/// assert_eq!(store.hits(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CachedStore<S> {
    inner: S,
    max_age: Duration,
    state: Mutex<State>,
    hits: AtomicU64,
}

#[derive(Debug)]
struct State {
    /// Completed keys: outcome and fingerprint.
    done: Bounded<Done>,
    /// Claims this wrapper returned `Acquired` for, so that a held `complete` can be cached.
    claimed: Bounded<(Token, Fingerprint)>,
    /// Bumped by every invalidation; an answer that left the store before an invalidation is not
    /// cached (it may be older than the forget or release that ran meanwhile).
    epoch: u64,
}

#[derive(Debug)]
struct Done {
    fingerprint: Fingerprint,
    outcome: Outcome,
}

impl<S: Store> CachedStore<S> {
    /// Wraps `inner`, caching up to `capacity` completed keys for at most `max_age` each.
    pub fn new(inner: S, capacity: usize, max_age: Duration) -> Self {
        CachedStore {
            inner,
            max_age,
            state: Mutex::new(State {
                done: Bounded::new(capacity),
                claimed: Bounded::new(capacity),
                epoch: 0,
            }),
            hits: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Claims answered from memory so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Completed keys held now (expired entries may be counted until they are evicted).
    pub fn len(&self) -> usize {
        self.lock().done.map.len()
    }

    /// Whether no completed key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave the maps inconsistent in a way that matters
        // (at worst an entry is missing), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl(&self, retention: Duration) -> Duration {
        self.max_age.min(retention)
    }

    fn invalidate(&self, key: &RecordKey, keep_claim: bool) {
        let mut st = self.lock();
        st.epoch += 1;
        st.done.remove(key);
        if !keep_claim {
            st.claimed.remove(key);
        }
    }
}

#[async_trait]
impl<S: Store> Store for CachedStore<S> {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let epoch = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(done) = st.done.get(req.key, now) {
                if done.fingerprint == *req.fingerprint {
                    let outcome = done.outcome.clone();
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Claim::Completed { outcome });
                }
                // Another fingerprint: the store decides (normally a conflict).
            }
            st.epoch
        };
        let claim = self.inner.claim(req).await?;
        let mut st = self.lock();
        let now = Instant::now();
        match &claim {
            Claim::Completed { outcome } => {
                if st.epoch == epoch {
                    let done = Done {
                        fingerprint: *req.fingerprint,
                        outcome: own(outcome),
                    };
                    st.done.insert(req.key, done, now + self.ttl(req.retention));
                }
            }
            Claim::Acquired { token, .. } => {
                // The key is not completed (any more): whatever was cached is stale.
                st.done.remove(req.key);
                let until = now + self.ttl(req.lease.max(req.retention));
                st.claimed
                    .insert(req.key, (*token, *req.fingerprint), until);
            }
            Claim::InFlight { .. } => st.done.remove(req.key),
            Claim::Conflict { stored } => {
                if st
                    .done
                    .get(req.key, now)
                    .is_some_and(|d| d.fingerprint != *stored)
                {
                    st.done.remove(req.key);
                }
            }
        }
        Ok(claim)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        let epoch = self.lock().epoch;
        let fence = self.inner.complete(key, token, outcome, retention).await?;
        let mut st = self.lock();
        // Only this token's claim is settled here; a newer claim of the key stays remembered.
        let claimed = match st.claimed.map.get(key) {
            Some(slot) if slot.value.0 == token => st.claimed.take(key),
            _ => None,
        };
        match fence {
            Fence::Held => {
                // Only a claim this wrapper saw tells which fingerprint the record holds; a
                // repeated complete keeps the first outcome, so an entry already cached stays.
                if let Some((_, fingerprint)) = claimed {
                    if st.epoch == epoch && !st.done.contains(key) {
                        let done = Done {
                            fingerprint,
                            outcome: own(outcome),
                        };
                        st.done
                            .insert(key, done, Instant::now() + self.ttl(retention));
                    }
                }
            }
            Fence::Lost => st.done.remove(key),
        }
        Ok(fence)
    }

    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        let fence = self.inner.release(key, token, mode).await;
        self.invalidate(key, false);
        fence
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        let fence = self.inner.renew(key, token, lease).await;
        // A renewal means the key is in progress; keep the claim so its complete can be cached.
        self.invalidate(key, true);
        fence
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        let existed = self.inner.forget(key).await;
        self.invalidate(key, false);
        existed
    }

    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        self.inner.scan(scope, filter, cursor, count).await
    }

    async fn counts(&self, scope: &str) -> Result<Option<StateCounts>, StoreError> {
        self.inner.counts(scope).await
    }
}

/// A copy of `outcome` whose body owns exactly its bytes: a body sliced out of a larger buffer (a
/// whole reply, say) would keep that buffer alive for as long as the entry is cached.
fn own(outcome: &Outcome) -> Outcome {
    Outcome {
        status: outcome.status,
        body: bytes::Bytes::copy_from_slice(&outcome.body),
    }
}

/// A map bounded by entries (oldest inserted evicted first) whose entries expire.
#[derive(Debug)]
struct Bounded<V> {
    capacity: usize,
    /// Keys are shared with `order`, so each key's strings are held once.
    map: HashMap<Arc<RecordKey>, Slot<V>>,
    /// Insertion order; an item whose sequence number no longer matches the map's is stale and
    /// skipped (removals and replacements do not search the queue).
    order: VecDeque<(u64, Arc<RecordKey>)>,
    next: u64,
}

#[derive(Debug)]
struct Slot<V> {
    seq: u64,
    expires_at: Instant,
    value: V,
}

impl<V> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Bounded {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    fn get(&mut self, key: &RecordKey, now: Instant) -> Option<&V> {
        let expired = self.map.get(key)?.expires_at <= now;
        if expired {
            self.map.remove(key);
            return None;
        }
        self.map.get(key).map(|s| &s.value)
    }

    fn contains(&self, key: &RecordKey) -> bool {
        self.map.contains_key(key)
    }

    fn take(&mut self, key: &RecordKey) -> Option<V> {
        self.map.remove(key).map(|s| s.value)
    }

    fn remove(&mut self, key: &RecordKey) {
        self.map.remove(key);
    }

    fn insert(&mut self, key: &RecordKey, value: V, expires_at: Instant) {
        if self.capacity == 0 {
            return;
        }
        let seq = self.next;
        self.next += 1;
        let slot = Slot {
            seq,
            expires_at,
            value,
        };
        let key = Arc::new(key.clone());
        self.map.insert(key.clone(), slot);
        self.order.push_back((seq, key));
        while self.map.len() > self.capacity {
            let Some((seq, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&oldest).is_some_and(|s| s.seq == seq) {
                self.map.remove(&oldest);
            }
        }
        // Stale queue items (removed or replaced keys) are dropped in bulk once they outnumber
        // the live ones, so the queue stays within a constant factor of the map (which may be
        // far below capacity, e.g. claims awaiting their complete) and the work per insert is
        // constant on average.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(seq, k)| map.get(k).is_some_and(|s| s.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::IdempotencyKey;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    const LEASE: Duration = Duration::from_secs(30);
    const RETENTION: Duration = Duration::from_secs(3600);

    fn key(k: &str) -> RecordKey {
        RecordKey::new("s", IdempotencyKey::new(k).expect("valid key"))
    }

    fn fp(s: &str) -> Fingerprint {
        Fingerprint::of_bytes(s.as_bytes())
    }

    /// A memory store that counts claims.
    #[derive(Debug, Default)]
    struct Counted {
        inner: MemoryStore,
        claims: AtomicU64,
    }

    #[async_trait]
    impl Store for Counted {
        async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
            self.claims.fetch_add(1, Ordering::Relaxed);
            self.inner.claim(req).await
        }
        async fn complete(
            &self,
            key: &RecordKey,
            token: Token,
            outcome: &Outcome,
            retention: Duration,
        ) -> Result<Fence, StoreError> {
            self.inner.complete(key, token, outcome, retention).await
        }
        async fn release(
            &self,
            key: &RecordKey,
            token: Token,
            mode: Release,
        ) -> Result<Fence, StoreError> {
            self.inner.release(key, token, mode).await
        }
        async fn renew(
            &self,
            key: &RecordKey,
            token: Token,
            lease: Duration,
        ) -> Result<Fence, StoreError> {
            self.inner.renew(key, token, lease).await
        }
        async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
            self.inner.get(key).await
        }
        async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
            self.inner.forget(key).await
        }
        async fn scan(
            &self,
            scope: &str,
            filter: StateFilter,
            cursor: Option<String>,
            count: usize,
        ) -> Result<ScanPage, StoreError> {
            self.inner.scan(scope, filter, cursor, count).await
        }
    }

    fn cached(capacity: usize, max_age: Duration) -> (Arc<Counted>, CachedStore<Arc<Counted>>) {
        let inner = Arc::new(Counted::default());
        (inner.clone(), CachedStore::new(inner, capacity, max_age))
    }

    async fn claim(s: &dyn Store, k: &RecordKey, f: &Fingerprint) -> Claim {
        s.claim(&ClaimRequest::new(k, f, LEASE, RETENTION))
            .await
            .expect("claim")
    }

    async fn process(s: &dyn Store, k: &RecordKey, f: &Fingerprint, body: &str) {
        let Claim::Acquired { token, .. } = claim(s, k, f).await else {
            panic!("expected Acquired");
        };
        let fence = s
            .complete(k, token, &Outcome::succeeded(body.to_string()), RETENTION)
            .await
            .expect("complete");
        assert_eq!(fence, Fence::Held);
    }

    fn claims(c: &Counted) -> u64 {
        c.claims.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn own_completion_answers_replays_without_the_store() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("a");
        process(&store, &k, &fp("p"), "done").await;
        assert_eq!(claims(&inner), 1);
        for _ in 0..3 {
            match claim(&store, &k, &fp("p")).await {
                Claim::Completed { outcome } => assert_eq!(&outcome.body[..], b"done"),
                other => panic!("expected Completed, got {other:?}"),
            }
        }
        assert_eq!(claims(&inner), 1, "replays must not reach the store");
        assert_eq!(store.hits(), 3);
    }

    #[tokio::test]
    async fn completed_answer_from_the_store_is_cached() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("b");
        // Completed through the bare store, as another process would.
        process(&*inner, &k, &fp("p"), "elsewhere").await;
        let before = claims(&inner);
        assert!(matches!(
            claim(&store, &k, &fp("p")).await,
            Claim::Completed { .. }
        ));
        assert!(matches!(
            claim(&store, &k, &fp("p")).await,
            Claim::Completed { .. }
        ));
        assert_eq!(claims(&inner) - before, 1);
    }

    #[tokio::test]
    async fn other_fingerprint_still_reaches_the_store_as_a_conflict() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("c");
        process(&store, &k, &fp("p"), "done").await;
        match claim(&store, &k, &fp("other")).await {
            Claim::Conflict { stored } => assert_eq!(stored, fp("p")),
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(claims(&inner), 2);
        // The entry of the true payload survives the conflict.
        assert!(matches!(
            claim(&store, &k, &fp("p")).await,
            Claim::Completed { .. }
        ));
        assert_eq!(claims(&inner), 2);
    }

    #[tokio::test]
    async fn forget_and_release_invalidate() {
        let (_inner, store) = cached(10, Duration::from_secs(60));
        let k = key("d");
        process(&store, &k, &fp("p"), "done").await;
        assert!(store.forget(&k).await.expect("forget"));
        let Claim::Acquired { token, .. } = claim(&store, &k, &fp("p")).await else {
            panic!("forget must reach the next claim");
        };
        let fence = store
            .release(&k, token, Release::Retry)
            .await
            .expect("release");
        assert_eq!(fence, Fence::Held);
        assert!(matches!(
            claim(&store, &k, &fp("p")).await,
            Claim::Acquired { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_max_age() {
        let (inner, store) = cached(10, Duration::from_secs(5));
        let k = key("e");
        process(&store, &k, &fp("p"), "done").await;
        claim(&store, &k, &fp("p")).await;
        assert_eq!(claims(&inner), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        claim(&store, &k, &fp("p")).await;
        assert_eq!(claims(&inner), 2, "an expired entry must go to the store");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_never_outlive_the_record_retention() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("f");
        let Claim::Acquired { token, .. } = claim(&store, &k, &fp("p")).await else {
            panic!("expected Acquired");
        };
        let short = Duration::from_secs(2);
        store
            .complete(&k, token, &Outcome::succeeded("x"), short)
            .await
            .expect("complete");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(
            claim(&store, &k, &fp("p")).await,
            Claim::Acquired { .. }
        ));
        assert_eq!(claims(&inner), 2);
    }

    #[tokio::test]
    async fn capacity_evicts_the_oldest() {
        let (inner, store) = cached(3, Duration::from_secs(60));
        for i in 0..5 {
            process(&store, &key(&format!("k{i}")), &fp("p"), "done").await;
        }
        assert_eq!(store.len(), 3);
        let before = claims(&inner);
        claim(&store, &key("k4"), &fp("p")).await;
        assert_eq!(claims(&inner), before, "newest entry is cached");
        claim(&store, &key("k0"), &fp("p")).await;
        assert_eq!(claims(&inner), before + 1, "oldest entry was evicted");
        // Many replacements keep the order queue bounded.
        for _ in 0..1000 {
            process(&store, &key("churn"), &fp("p"), "x").await;
            store.forget(&key("churn")).await.expect("forget");
        }
        assert!(store.lock().done.order.len() <= 2 * 3 + 64 + 1);
        assert!(store.lock().claimed.map.len() <= 3);
        // Claims completed at once leave no live entry; their queue stays short too.
        assert!(store.lock().claimed.order.len() <= 64 + 1);
    }

    #[tokio::test]
    async fn bookkeeping_follows_live_entries_not_capacity() {
        // Every claim is completed at once, so no claim is awaiting its complete: the queue of
        // claims must not grow towards the (large) capacity.
        let (_inner, store) = cached(10_000, Duration::from_secs(60));
        for i in 0..3000 {
            process(&store, &key(&format!("k{i}")), &fp("p"), "done").await;
        }
        let st = store.lock();
        assert!(st.claimed.map.is_empty());
        assert!(st.claimed.order.len() <= 65, "{}", st.claimed.order.len());
        assert_eq!(st.done.map.len(), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_complete_keeps_the_newer_claim_cacheable() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("takeover");
        let f = fp("p");
        let short = ClaimRequest::new(&k, &f, Duration::from_secs(1), RETENTION);
        let Claim::Acquired { token: old, .. } = store.claim(&short).await.expect("claim") else {
            panic!("expected Acquired");
        };
        tokio::time::advance(Duration::from_secs(2)).await;
        // The lease expired: a second claim takes over with a newer token.
        let Claim::Acquired { token: new, .. } = claim(&store, &k, &f).await else {
            panic!("expected a takeover");
        };
        let ok = Outcome::succeeded("x");
        assert_eq!(
            store
                .complete(&k, old, &ok, RETENTION)
                .await
                .expect("complete"),
            Fence::Lost
        );
        assert_eq!(
            store
                .complete(&k, new, &ok, RETENTION)
                .await
                .expect("complete"),
            Fence::Held
        );
        let before = claims(&inner);
        assert!(matches!(
            claim(&store, &k, &f).await,
            Claim::Completed { .. }
        ));
        assert_eq!(
            claims(&inner),
            before,
            "the owner's completion must be cached"
        );
    }

    #[tokio::test]
    async fn zero_capacity_passes_everything_through() {
        let (inner, store) = cached(0, Duration::from_secs(60));
        let k = key("g");
        process(&store, &k, &fp("p"), "done").await;
        claim(&store, &k, &fp("p")).await;
        assert_eq!(claims(&inner), 2);
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn lost_complete_caches_nothing() {
        let (inner, store) = cached(10, Duration::from_secs(60));
        let k = key("h");
        let Claim::Acquired { token, .. } = claim(&store, &k, &fp("p")).await else {
            panic!("expected Acquired");
        };
        // Another process forgets and re-claims the key: our token is stale.
        inner.forget(&k).await.expect("forget");
        let Claim::Acquired { token: theirs, .. } = claim(&*inner, &k, &fp("p")).await else {
            panic!("expected Acquired");
        };
        let stale = Token(token.0.min(theirs.0).saturating_sub(1));
        let fence = store
            .complete(&k, stale, &Outcome::succeeded("ours"), RETENTION)
            .await
            .expect("complete");
        assert_eq!(fence, Fence::Lost);
        assert!(store.is_empty());
    }
}
