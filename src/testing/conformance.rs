//! The store conformance suite: every [`Store`] implementation must pass every case here.
//!
//! Each case is a public async function taking a fresh [`Subject`]; [`store_conformance!`]
//! generates one `#[test]` per case (each on its own multi-threaded tokio runtime, so your crate
//! needs no tokio test macros). The factory you pass returns `Option<Subject>`: `None` skips the
//! case, e.g. when the backing service is not configured on this machine.
//!
//! ```ignore
//! // tests/conformance.rs in your crate, with `idemq = { version = "…", features = ["testing"] }`
//! // among the dev-dependencies.
//! use idemq::testing::conformance::{store_conformance, Subject};
//! use std::sync::Arc;
//!
//! async fn subject() -> Option<Subject> {
//!     let store = my_dynamo_store::DynamoStore::connect("http://localhost:8000").await.ok()?;
//!     // `Subject::new` gives every case its own scope, so cases can share one table.
//!     Some(Subject::new(Arc::new(store)))
//! }
//!
//! store_conformance!(subject);
//! ```
//!
//! The same with a store that ships with idemq (an async closure works as the factory too):
//!
//! ```no_run
//! use idemq::store::MemoryStore;
//! use idemq::testing::conformance::{store_conformance, Subject};
//! use std::sync::Arc;
//!
//! store_conformance!(|| async { Some(Subject::new(Arc::new(MemoryStore::new()))) });
//! # fn main() {}
//! ```
//!
//! Optional capabilities: [`Subject::with_corrupter`] (how to write an unreadable record; without
//! it the corrupt-record case passes vacuously, as for a store of typed values) and
//! [`Subject::with_purger`] (how to physically delete expired records, for stores that keep
//! them until a purge).
//!
//! Timing cases use real time with short leases (hundreds of milliseconds), so the same suite
//! runs against network stores whose clocks we do not control. The whole suite takes a few
//! seconds per store.

use crate::store::{
    Claim, ClaimRequest, Fence, RecordKey, RecordState, Release, StateFilter, Store, StoreError,
    Token, DEFAULT_MAX_OUTCOME_BYTES,
};
use crate::{Fingerprint, IdempotencyKey, Outcome, OutcomeStatus};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A lease short enough to expire within a test, long enough that a live lease stays live across a
/// few store round trips.
pub const LEASE: Duration = Duration::from_millis(600);
/// Sleep that outlasts [`LEASE`].
pub const PAST_LEASE: Duration = Duration::from_millis(900);
/// Retention used unless a case tests retention.
pub const RETENTION: Duration = Duration::from_secs(60);

/// Writes garbage into the stored record of a key, so reads must fail with a typed error.
pub type Corrupter = Box<dyn Fn(RecordKey) -> BoxFuture<'static, ()> + Send + Sync>;

/// Physically removes expired records (Postgres `purge_expired`), for backends that keep them.
pub type Purger = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A store under test.
pub struct Subject {
    /// The store, empty or at least free of this test's keys.
    pub store: Arc<dyn Store>,
    /// How to corrupt a record; `None` when the backend cannot hold unreadable data (memory).
    pub corrupt: Option<Corrupter>,
    /// How to delete expired records; `None` when they vanish by themselves (memory, Redis TTLs).
    pub purge: Option<Purger>,
    /// Scope unique to this test.
    pub scope: String,
}

impl Subject {
    /// A subject with a unique scope and no corrupter.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            corrupt: None,
            purge: None,
            scope: unique_scope(),
        }
    }

    /// Adds a corrupter.
    pub fn with_corrupter(mut self, c: Corrupter) -> Self {
        self.corrupt = Some(c);
        self
    }

    /// Adds a purger.
    pub fn with_purger(mut self, p: Purger) -> Self {
        self.purge = Some(p);
        self
    }

    fn key(&self, k: &str) -> RecordKey {
        RecordKey::new(
            self.scope.clone(),
            IdempotencyKey::new(k).expect("valid test key"),
        )
    }
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

async fn claim(s: &Subject, key: &RecordKey, f: &Fingerprint, lease: Duration) -> Claim {
    s.store
        .claim(&ClaimRequest::new(key, f, lease, RETENTION))
        .await
        .expect("claim")
}

async fn acquire(s: &Subject, key: &RecordKey, f: &Fingerprint, lease: Duration) -> (Token, u32) {
    match claim(s, key, f, lease).await {
        Claim::Acquired { token, attempt } => (token, attempt),
        other => panic!("expected Acquired for {key}, got {other:?}"),
    }
}

async fn complete(s: &Subject, key: &RecordKey, t: Token, body: &str) -> Fence {
    s.store
        .complete(key, t, &Outcome::succeeded(body.to_string()), RETENTION)
        .await
        .expect("complete")
}

/// A fresh key is acquired on attempt 1 and its record is in progress with that token.
pub async fn fresh_key_is_acquired(s: Subject) {
    let k = s.key("fresh");
    let (t, attempt) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(attempt, 1);
    let rec = s.store.get(&k).await.expect("get").expect("record exists");
    assert_eq!(rec.token, t);
    assert_eq!(rec.fingerprint, fp("a"));
    assert_eq!(rec.attempt, 1);
    assert_eq!(rec.key, k);
    match rec.state {
        RecordState::InProgress { lease_remaining } => {
            assert!(lease_remaining > Duration::ZERO && lease_remaining <= LEASE)
        }
        other => panic!("expected in_progress, got {other:?}"),
    }
}

/// N tasks claiming one key at once: exactly one gets Acquired, the rest InFlight.
pub async fn concurrent_claims_yield_exactly_one_acquired(s: Subject) {
    let s = Arc::new(s);
    let k = s.key("race");
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (s, k) = (s.clone(), k.clone());
            tokio::spawn(async move { claim(&s, &k, &fp("a"), Duration::from_secs(30)).await })
        })
        .collect();
    let (mut acquired, mut in_flight) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Claim::Acquired { .. } => acquired += 1,
            Claim::InFlight { retry_after } => {
                assert!(retry_after <= Duration::from_secs(30));
                in_flight += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((acquired, in_flight), (1, 31));
}

/// A live lease answers InFlight with the time left, and does not change the owner's token.
pub async fn live_lease_is_in_flight(s: Subject) {
    let k = s.key("live");
    let (t, _) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
    match claim(&s, &k, &fp("a"), Duration::from_secs(30)).await {
        Claim::InFlight { retry_after } => {
            assert!(retry_after > Duration::from_secs(25) && retry_after <= Duration::from_secs(30))
        }
        other => panic!("expected InFlight, got {other:?}"),
    }
    assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
}

/// An expired lease is taken over with a larger token and the next attempt number.
pub async fn expired_lease_is_taken_over(s: Subject) {
    let k = s.key("takeover");
    let (t1, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    tokio::time::sleep(PAST_LEASE).await;
    let (t2, attempt) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert!(t2 > t1, "token must grow: {t1} -> {t2}");
    assert_eq!(attempt, 2);
}

/// A claim whose retention is shorter than its lease still holds the key for the whole lease: the
/// in-progress record must not vanish (and let a duplicate acquire it) before the lease ends.
pub async fn short_retention_does_not_cut_the_lease(s: Subject) {
    let k = s.key("short-retention");
    let (lease, retention) = (Duration::from_millis(1500), Duration::from_millis(200));
    let req = |f| ClaimRequest::new(&k, f, lease, retention);
    let f = fp("a");
    let token = match s.store.claim(&req(&f)).await.expect("claim") {
        Claim::Acquired { token, .. } => token,
        other => panic!("expected Acquired, got {other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    match s.store.claim(&req(&f)).await.expect("claim") {
        Claim::InFlight { .. } => {}
        other => panic!("retention cut the lease short: expected InFlight, got {other:?}"),
    }
    assert_eq!(complete(&s, &k, token, "ok").await, Fence::Held);
}

/// After a takeover the old owner's complete, release and renew are rejected and change nothing;
/// the new owner's outcome is the one stored.
pub async fn stale_token_cannot_write(s: Subject) {
    let k = s.key("stale");
    let (old, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    tokio::time::sleep(PAST_LEASE).await;
    let (new, _) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;

    assert_eq!(complete(&s, &k, old, "stale").await, Fence::Lost);
    let renewed = s
        .store
        .renew(&k, old, Duration::from_secs(30))
        .await
        .expect("renew");
    assert_eq!(renewed, Fence::Lost);
    let released = s
        .store
        .release(&k, old, Release::Retry)
        .await
        .expect("release");
    assert_eq!(released, Fence::Lost);
    let rec = s.store.get(&k).await.expect("get").expect("record");
    assert_eq!(rec.token, new);
    assert!(matches!(rec.state, RecordState::InProgress { .. }));

    assert_eq!(complete(&s, &k, new, "fresh").await, Fence::Held);
    assert_eq!(complete(&s, &k, old, "stale").await, Fence::Lost);
    match claim(&s, &k, &fp("a"), LEASE).await {
        Claim::Completed { outcome } => assert_eq!(&outcome.body[..], b"fresh"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// An old token is refused after the record expired and was claimed again: a consumer that stalled
/// longer than its record's whole lifetime (the record expired and, where the backend keeps expired
/// rows, was purged) must not complete, renew or release with its old token, because a fresh claim
/// of the key never hands out a token the old record had.
pub async fn old_token_is_refused_after_the_record_expired_and_was_claimed_again(s: Subject) {
    let k = s.key("expired-reclaim");
    let f = fp("a");
    // Retention no longer than the lease: the record expires together with the lease.
    let short = ClaimRequest::new(&k, &f, LEASE, LEASE);
    let old = match s.store.claim(&short).await.expect("claim") {
        Claim::Acquired { token, .. } => token,
        other => panic!("expected Acquired, got {other:?}"),
    };
    tokio::time::sleep(PAST_LEASE).await;
    assert!(
        s.store.get(&k).await.expect("get").is_none(),
        "the record expired"
    );
    if let Some(purge) = &s.purge {
        purge().await;
    }
    let (new, attempt) = acquire(&s, &k, &f, Duration::from_secs(30)).await;
    assert_eq!(attempt, 1, "an expired record starts over");
    assert!(new > old, "token reused after expiry: {old} -> {new}");

    assert_eq!(complete(&s, &k, old, "stale").await, Fence::Lost);
    let renewed = s
        .store
        .renew(&k, old, Duration::from_secs(30))
        .await
        .expect("renew");
    assert_eq!(renewed, Fence::Lost);
    let released = s
        .store
        .release(&k, old, Release::Retry)
        .await
        .expect("release");
    assert_eq!(released, Fence::Lost);
    let rec = s.store.get(&k).await.expect("get").expect("record");
    assert_eq!(rec.token, new);
    assert!(matches!(rec.state, RecordState::InProgress { .. }));

    assert_eq!(complete(&s, &k, new, "fresh").await, Fence::Held);
    assert_eq!(complete(&s, &k, old, "stale").await, Fence::Lost);
    match claim(&s, &k, &f, LEASE).await {
        Claim::Completed { outcome } => assert_eq!(&outcome.body[..], b"fresh"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// A completed key returns its outcome (body and status) to every later claim.
pub async fn completed_key_replays_outcome(s: Subject) {
    let k = s.key("done");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(complete(&s, &k, t, "{\"ok\":1}").await, Fence::Held);
    for _ in 0..3 {
        match claim(&s, &k, &fp("a"), LEASE).await {
            Claim::Completed { outcome } => {
                assert_eq!(outcome, Outcome::succeeded("{\"ok\":1}"));
            }
            other => panic!("expected Completed, got {other:?}"),
        }
    }
    let rec = s.store.get(&k).await.expect("get").expect("record");
    assert!(matches!(rec.state, RecordState::Completed { .. }));
    // A completed record outlives its lease.
    tokio::time::sleep(PAST_LEASE).await;
    assert!(matches!(
        claim(&s, &k, &fp("a"), LEASE).await,
        Claim::Completed { .. }
    ));

    let k2 = s.key("failed");
    let (t2, _) = acquire(&s, &k2, &fp("b"), LEASE).await;
    let failed = Outcome::failed("{\"error\":\"bad\"}");
    let fence = s
        .store
        .complete(&k2, t2, &failed, RETENTION)
        .await
        .expect("complete");
    assert_eq!(fence, Fence::Held);
    match claim(&s, &k2, &fp("b"), LEASE).await {
        Claim::Completed { outcome } => assert_eq!(outcome.status, OutcomeStatus::Failed),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// Repeating a successful complete with the same token (a retry after a lost reply) is accepted and
/// keeps the first outcome.
pub async fn complete_is_idempotent_for_the_owner(s: Subject) {
    let k = s.key("twice");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(complete(&s, &k, t, "first").await, Fence::Held);
    assert_eq!(complete(&s, &k, t, "second").await, Fence::Held);
    match claim(&s, &k, &fp("a"), LEASE).await {
        Claim::Completed { outcome } => assert_eq!(&outcome.body[..], b"first"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// The same key with another payload fingerprint is a conflict, in progress and completed.
pub async fn other_fingerprint_is_conflict(s: Subject) {
    let k = s.key("conflict");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(
        claim(&s, &k, &fp("b"), LEASE).await,
        Claim::Conflict { stored: fp("a") }
    );
    assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
    assert_eq!(
        claim(&s, &k, &fp("b"), LEASE).await,
        Claim::Conflict { stored: fp("a") }
    );
    // The conflict changed nothing.
    assert!(matches!(
        claim(&s, &k, &fp("a"), LEASE).await,
        Claim::Completed { .. }
    ));
}

/// Release makes the key claimable at once with a larger token; Retry counts attempts, Reset starts
/// over; a released key may be claimed with another payload.
pub async fn release_reopens_the_key(s: Subject) {
    let k = s.key("release");
    let (t1, a1) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
    assert_eq!(
        s.store
            .release(&k, t1, Release::Retry)
            .await
            .expect("release"),
        Fence::Held
    );
    let rec = s.store.get(&k).await.expect("get").expect("tombstone");
    assert_eq!(rec.state, RecordState::Released);
    assert_eq!(rec.token, t1);

    let (t2, a2) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
    assert!(t2 > t1);
    assert_eq!((a1, a2), (1, 2));
    assert_eq!(
        s.store
            .release(&k, t2, Release::Reset)
            .await
            .expect("release"),
        Fence::Held
    );

    let (t3, a3) = acquire(&s, &k, &fp("other payload"), Duration::from_secs(30)).await;
    assert!(t3 > t2);
    assert_eq!(a3, 1, "Reset starts the attempt count over");
    // A stale owner from before the release cannot complete.
    assert_eq!(complete(&s, &k, t1, "stale").await, Fence::Lost);
    assert_eq!(complete(&s, &k, t3, "ok").await, Fence::Held);
    // Release after completion is refused: completed records are never reopened.
    assert_eq!(
        s.store
            .release(&k, t3, Release::Reset)
            .await
            .expect("release"),
        Fence::Lost
    );
    assert!(matches!(
        claim(&s, &k, &fp("other payload"), LEASE).await,
        Claim::Completed { .. }
    ));
}

/// Renewal keeps a lease alive past its original end; renewal of a completed record is refused.
pub async fn renew_extends_the_lease(s: Subject) {
    let k = s.key("renew");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    for _ in 0..3 {
        tokio::time::sleep(LEASE / 3).await;
        let f = s.store.renew(&k, t, LEASE).await.expect("renew");
        assert_eq!(f, Fence::Held);
    }
    // Total elapsed ≈ LEASE, but the lease was renewed: still in flight.
    assert!(matches!(
        claim(&s, &k, &fp("a"), LEASE).await,
        Claim::InFlight { .. }
    ));
    assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
    assert_eq!(
        s.store.renew(&k, t, LEASE).await.expect("renew"),
        Fence::Lost
    );
}

/// Completed records disappear after their retention, and the key can be claimed again.
pub async fn retention_expires_records(s: Subject) {
    let k = s.key("retention");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    let outcome = Outcome::succeeded("ok");
    let retention = Duration::from_millis(700);
    let f = s
        .store
        .complete(&k, t, &outcome, retention)
        .await
        .expect("complete");
    assert_eq!(f, Fence::Held);
    assert!(s.store.get(&k).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(s.store.get(&k).await.expect("get").is_none());
    assert!(matches!(
        claim(&s, &k, &fp("a"), LEASE).await,
        Claim::Acquired { .. }
    ));
}

/// Forget deletes a record in any state and reports whether one existed.
pub async fn forget_deletes(s: Subject) {
    let k = s.key("forget");
    assert!(!s.store.forget(&k).await.expect("forget"));
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
    assert!(s.store.forget(&k).await.expect("forget"));
    assert!(s.store.get(&k).await.expect("get").is_none());
    assert!(matches!(
        claim(&s, &k, &fp("a"), LEASE).await,
        Claim::Acquired { .. }
    ));
}

/// An unreadable record is a typed error naming the key, for claim and get; never a panic.
pub async fn corrupt_record_is_a_typed_error(s: Subject) {
    let Some(corrupt) = &s.corrupt else {
        eprintln!("not applicable: this backend holds typed values and cannot be corrupted");
        return;
    };
    let k = s.key("corrupt-me");
    let (t, _) = acquire(&s, &k, &fp("a"), LEASE).await;
    assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
    corrupt(k.clone()).await;
    let f = fp("a");
    let req = ClaimRequest::new(&k, &f, LEASE, RETENTION);
    match s.store.claim(&req).await {
        Err(StoreError::Corrupt { key, .. }) => assert!(key.contains("corrupt-me"), "{key}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        s.store.get(&k).await,
        Err(StoreError::Corrupt { .. })
    ));
    // Operators can still remove it.
    assert!(s.store.forget(&k).await.expect("forget"));
}

/// Outcomes over the limit are refused with a typed error and change nothing; the limit itself fits.
pub async fn outcome_size_is_limited(s: Subject) {
    let k = s.key("big");
    let (t, _) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
    let too_big = Outcome::succeeded(vec![b'x'; DEFAULT_MAX_OUTCOME_BYTES + 1]);
    match s.store.complete(&k, t, &too_big, RETENTION).await {
        Err(StoreError::OutcomeTooLarge { size, limit }) => {
            assert_eq!(
                (size, limit),
                (DEFAULT_MAX_OUTCOME_BYTES + 1, DEFAULT_MAX_OUTCOME_BYTES)
            )
        }
        other => panic!("expected OutcomeTooLarge, got {other:?}"),
    }
    let rec = s.store.get(&k).await.expect("get").expect("record");
    assert!(matches!(rec.state, RecordState::InProgress { .. }));
    let fits = Outcome::succeeded(vec![b'y'; DEFAULT_MAX_OUTCOME_BYTES]);
    let f = s
        .store
        .complete(&k, t, &fits, RETENTION)
        .await
        .expect("complete");
    assert_eq!(f, Fence::Held);
    match claim(&s, &k, &fp("a"), LEASE).await {
        Claim::Completed { outcome } => assert_eq!(outcome.body.len(), DEFAULT_MAX_OUTCOME_BYTES),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// The same key in two scopes is two records.
pub async fn scopes_are_independent(s: Subject) {
    let a = s.key("shared");
    let b = RecordKey::new(format!("{}-other", s.scope), a.key.clone());
    let (ta, _) = acquire(&s, &a, &fp("a"), LEASE).await;
    assert_eq!(complete(&s, &a, ta, "ok").await, Fence::Held);
    assert!(matches!(
        claim(&s, &b, &fp("a"), LEASE).await,
        Claim::Acquired { .. }
    ));
}

/// Keys with characters that are special to stores (glob, hash tags, separators, unicode) work and
/// read back unchanged.
pub async fn awkward_keys_round_trip(s: Subject) {
    for raw in [
        "a:b",
        "{tag}",
        "x}y{z",
        "*?[]\\",
        "ключ-💳",
        "with space",
        "%_'\"",
    ] {
        let k = s.key(raw);
        let (t, _) = acquire(&s, &k, &fp(raw), LEASE).await;
        assert_eq!(complete(&s, &k, t, raw).await, Fence::Held, "{raw}");
        let rec = s.store.get(&k).await.expect("get").expect("record");
        assert_eq!(rec.key, k, "{raw}");
        match claim(&s, &k, &fp(raw), LEASE).await {
            Claim::Completed { outcome } => assert_eq!(&outcome.body[..], raw.as_bytes()),
            other => panic!("{raw}: expected Completed, got {other:?}"),
        }
    }
    // Keys that only share a prefix, or differ in glob-special characters, stay separate.
    let plain = s.key("ab");
    assert!(matches!(
        claim(&s, &plain, &fp("z"), LEASE).await,
        Claim::Acquired { .. }
    ));
}

/// Scan pages through one scope only, honouring the state filter.
pub async fn scan_lists_one_scope(s: Subject) {
    let mut done = 0;
    for i in 0..25 {
        let k = s.key(&format!("scan-{i:02}"));
        let (t, _) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
        if i % 5 == 0 {
            assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
            done += 1;
        }
    }
    let other = RecordKey::new(
        format!("{}-x", s.scope),
        IdempotencyKey::new("scan-00").expect("key"),
    );
    acquire(&s, &other, &fp("a"), LEASE).await;

    let collect = |filter| {
        let store = s.store.clone();
        let scope = s.scope.clone();
        async move {
            let (mut all, mut cursor, mut pages) = (Vec::new(), None, 0);
            loop {
                let page = store.scan(&scope, filter, cursor, 7).await.expect("scan");
                all.extend(page.records);
                pages += 1;
                assert!(pages < 1000, "scan does not terminate");
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            all
        }
    };
    let mut all = collect(StateFilter::All).await;
    all.sort_by(|a, b| a.key.key.cmp(&b.key.key));
    all.dedup_by(|a, b| a.key == b.key);
    assert_eq!(all.len(), 25);
    assert!(all.iter().all(|r| r.key.scope == s.scope));
    let completed = collect(StateFilter::Completed).await;
    assert_eq!(completed.len(), done);
    assert!(completed
        .iter()
        .all(|r| matches!(r.state, RecordState::Completed { .. })));
    let in_progress = collect(StateFilter::InProgress).await;
    assert_eq!(in_progress.len(), 25 - done);
}

/// A backend that counts by state without a scan ([`Store::counts`] returning `Some`) counts what
/// a scan of the scope finds: in progress (live and expired), completed (succeeded and failed),
/// released, and the lease that ends first. `None` (scan instead) is also conformant.
pub async fn counts_agree_with_a_scan(s: Subject) {
    let store = s.store.clone();
    for i in 0..3 {
        let k = s.key(&format!("count-done-{i}"));
        let (t, _) = acquire(&s, &k, &fp("a"), Duration::from_secs(30)).await;
        assert_eq!(complete(&s, &k, t, "ok").await, Fence::Held);
    }
    let failed = s.key("count-failed");
    let (t, _) = acquire(&s, &failed, &fp("a"), Duration::from_secs(30)).await;
    let fence = store
        .complete(&failed, t, &Outcome::failed("no"), RETENTION)
        .await
        .expect("complete");
    assert_eq!(fence, Fence::Held);
    let released = s.key("count-released");
    let (t, _) = acquire(&s, &released, &fp("a"), Duration::from_secs(30)).await;
    store
        .release(&released, t, Release::Retry)
        .await
        .expect("release");
    let expired = s.key("count-expired");
    acquire(&s, &expired, &fp("a"), LEASE).await;
    for i in 0..2 {
        acquire(
            &s,
            &s.key(&format!("count-live-{i}")),
            &fp("a"),
            Duration::from_secs(30),
        )
        .await;
    }
    tokio::time::sleep(PAST_LEASE).await;
    let Some(counted) = store.counts(&s.scope).await.expect("counts") else {
        return;
    };
    let mut scanned = crate::store::StateCounts::default();
    let mut cursor = None;
    loop {
        let page = store
            .scan(&s.scope, StateFilter::All, cursor, 50)
            .await
            .expect("scan");
        page.records.iter().for_each(|r| scanned.add(r));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(
        (
            counted.in_progress,
            counted.in_progress_expired,
            counted.completed,
            counted.completed_failed,
            counted.released
        ),
        (3, 1, 4, 1, 1),
        "counts: {counted:?}"
    );
    assert_eq!(
        (
            scanned.in_progress,
            scanned.in_progress_expired,
            scanned.completed,
            scanned.completed_failed,
            scanned.released
        ),
        (3, 1, 4, 1, 1),
        "scan: {scanned:?}"
    );
    let closest = |c: &crate::store::StateCounts| c.closest_lease.as_ref().map(|(k, _)| k.clone());
    assert_eq!(closest(&counted), Some(expired.key.clone()));
    assert_eq!(closest(&counted), closest(&scanned));
}

/// Generates one `#[test]` per conformance case, in a module named `conformance`, for the store
/// made by `$make` (an async function or closure returning `Option<Subject>`; `None` skips the
/// case). See the [module docs](crate::testing::conformance) for an example.
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            fresh_key_is_acquired,
            concurrent_claims_yield_exactly_one_acquired,
            live_lease_is_in_flight,
            expired_lease_is_taken_over,
            short_retention_does_not_cut_the_lease,
            stale_token_cannot_write,
            old_token_is_refused_after_the_record_expired_and_was_claimed_again,
            completed_key_replays_outcome,
            complete_is_idempotent_for_the_owner,
            other_fingerprint_is_conflict,
            release_reopens_the_key,
            renew_extends_the_lease,
            retention_expires_records,
            forget_deletes,
            corrupt_record_is_a_typed_error,
            outcome_size_is_limited,
            scopes_are_independent,
            awkward_keys_round_trip,
            scan_lists_one_scope,
            counts_agree_with_a_scan
        );
    };
    (@cases $make:expr; $($case:ident),+) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::testing::conformance::run($make, $crate::testing::conformance::$case);
                }
            )+
        }
    };
}

#[doc(inline)]
pub use crate::store_conformance;

/// Runs one case: builds a multi-threaded runtime (two workers, as the cases' concurrency needs),
/// makes the subject with `make` and, unless it is `None`, runs `case` on it. Used by
/// [`store_conformance!`]; call it yourself to run single cases.
///
/// Panics (failing the test) when a case fails or the runtime cannot be built.
pub fn run<M, MF, C, CF>(make: M, case: C)
where
    M: FnOnce() -> MF,
    MF: Future<Output = Option<Subject>>,
    C: FnOnce(Subject) -> CF,
    CF: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for a conformance case");
    runtime.block_on(async move {
        if let Some(subject) = make().await {
            case(subject).await;
        }
    });
}

/// A scope no other case or run uses (process id, clock, counter), so cases can share a table.
fn unique_scope() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "conf-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
