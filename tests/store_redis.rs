//! The Redis store against the store conformance suite (shared local Redis, a unique key prefix
//! per test).
#![cfg(feature = "redis")]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::RecordKey;
use std::sync::Arc;
use support::conformance::{store_conformance, Corrupter, Subject};
use support::services::{redis_url, require_redis, unique};

async fn subject() -> Option<Subject> {
    if !require_redis() {
        return None;
    }
    let store = RedisStore::builder(redis_url())
        .prefix(unique("idemq-conf"))
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
            let () = redis::cmd("HSET")
                .arg(&rkey)
                .arg("fp")
                .arg("not a fingerprint")
                .query_async(&mut conn)
                .await
                .expect("HSET");
        })
    });
    Some(Subject::new(Arc::new(store)).with_corrupter(corrupter))
}

store_conformance!(subject);
