//! The Redis store against the store conformance suite (shared local Redis, a unique key prefix
//! per test), with batching on (default) and off.
#![cfg(all(feature = "redis", feature = "testing"))]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::RecordKey;
use idemq::testing::conformance::{store_conformance, Corrupter, Subject};
use std::sync::Arc;
use support::services::{redis_url, require_redis, unique};

/// The store with batching on (the default).
async fn subject() -> Option<Subject> {
    subject_with(idemq::store::redis::DEFAULT_MAX_BATCH).await
}

async fn subject_with(max_batch: usize) -> Option<Subject> {
    if !require_redis() {
        return None;
    }
    let store = RedisStore::builder(redis_url())
        .prefix(unique("idemq-conf"))
        .max_batch(max_batch)
        .build()
        .await
        .expect("connect to Redis");
    let layout = store.clone();
    let corrupter: Corrupter = Box::new(move |key: RecordKey| {
        let rkey = layout.redis_key(&key);
        Box::pin(async move {
            let client = redis::Client::open(redis_url()).expect("url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            // Format 2 value `2|st|tok|att|lu|ca|os|fp|ob`: spoil the fingerprint (field 7).
            let value: Vec<u8> = redis::cmd("GET")
                .arg(&rkey)
                .query_async(&mut conn)
                .await
                .expect("GET");
            let mut fields: Vec<&[u8]> = value.splitn(9, |b| *b == b'|').collect();
            assert_eq!(fields.len(), 9, "{value:?}");
            fields[7] = b"not a fingerprint";
            let () = redis::cmd("SET")
                .arg(&rkey)
                .arg(fields.join(&b'|'))
                .arg("KEEPTTL")
                .query_async(&mut conn)
                .await
                .expect("SET");
        })
    });
    Some(Subject::new(Arc::new(store)).with_corrupter(corrupter))
}

store_conformance!(subject);

/// The same suite with batching off (one `EVALSHA` per operation).
mod unbatched {
    use super::*;

    async fn subject() -> Option<Subject> {
        subject_with(1).await
    }

    store_conformance!(subject);
}
