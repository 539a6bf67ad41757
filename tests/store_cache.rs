//! The local cache of completed keys (`CachedStore`) against the store conformance suite, over the
//! memory store and over Redis, plus what it trades across processes.
//!
//! Within one wrapper instance the cache is exact, so every conformance case holds. The Redis
//! subject has no corrupter: a replay answered from memory does not read the record again, so a
//! record corrupted behind the cache's back is only noticed once the entry expires (documented on
//! `CachedStore`).

mod support;

use idemq::store::{CachedStore, Claim, ClaimRequest, Fence, MemoryStore, RecordKey, Store};
#[cfg(feature = "testing")]
use idemq::testing::conformance::{store_conformance, Subject};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "testing")]
const CAPACITY: usize = 1000;
#[cfg(feature = "testing")]
const MAX_AGE: Duration = Duration::from_secs(60);

#[cfg(feature = "testing")]
store_conformance!(|| async {
    Some(Subject::new(Arc::new(CachedStore::new(
        MemoryStore::new(),
        CAPACITY,
        MAX_AGE,
    ))))
});

#[cfg(all(feature = "redis", feature = "testing"))]
mod over_redis {
    use super::*;
    use idemq::store::redis::RedisStore;
    use support::services::{redis_url, require_redis, unique};

    async fn subject() -> Option<Subject> {
        if !require_redis() {
            return None;
        }
        let store = RedisStore::builder(redis_url())
            .prefix(unique("idemq-cache"))
            .build()
            .await
            .expect("connect to Redis");
        Some(Subject::new(Arc::new(CachedStore::new(
            store, CAPACITY, MAX_AGE,
        ))))
    }

    store_conformance!(subject);
}

fn req<'a>(k: &'a RecordKey, f: &'a Fingerprint) -> ClaimRequest<'a> {
    ClaimRequest::new(k, f, Duration::from_secs(30), Duration::from_secs(600))
}

/// A forget by another process (here: a second wrapper over the same store) is seen only after
/// the cache age; a forget through the same wrapper is seen at once.
#[tokio::test]
async fn another_process_forget_is_seen_after_the_cache_age() {
    let shared = Arc::new(MemoryStore::new());
    let max_age = Duration::from_millis(1500);
    let here = CachedStore::new(shared.clone(), 100, max_age);
    let elsewhere = CachedStore::new(shared.clone(), 100, max_age);
    let k = RecordKey::new("trade", IdempotencyKey::new("k").expect("key"));
    let f = Fingerprint::of_bytes(b"payload");

    let Claim::Acquired { token, .. } = here.claim(&req(&k, &f)).await.expect("claim") else {
        panic!("expected Acquired");
    };
    let fence = here
        .complete(
            &k,
            token,
            &Outcome::succeeded("ok"),
            Duration::from_secs(600),
        )
        .await
        .expect("complete");
    assert_eq!(fence, Fence::Held);

    assert!(elsewhere.forget(&k).await.expect("forget"));
    // Still answered locally: the documented trade.
    assert!(matches!(
        here.claim(&req(&k, &f)).await.expect("claim"),
        Claim::Completed { .. }
    ));
    // After the cache age the store answers again.
    tokio::time::sleep(max_age + Duration::from_millis(500)).await;
    let Claim::Acquired { token, .. } = here.claim(&req(&k, &f)).await.expect("claim") else {
        panic!("expected Acquired once the entry expired");
    };
    here.complete(
        &k,
        token,
        &Outcome::succeeded("again"),
        Duration::from_secs(600),
    )
    .await
    .expect("complete");
    // A forget through the same wrapper is seen by the next claim.
    assert!(here.forget(&k).await.expect("forget"));
    assert!(matches!(
        here.claim(&req(&k, &f)).await.expect("claim"),
        Claim::Acquired { .. }
    ));
}
