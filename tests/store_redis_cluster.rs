//! The Redis store on a Redis Cluster (three primaries, one replica each, started by the test
//! support on free ports, or named by `IDEMQ_REDIS_CLUSTER_URL`): the conformance suite batched
//! and unbatched, keys spread over every primary, batches split by slot, `WAIT` durability and
//! the scan over every primary.
#![cfg(all(feature = "redis", feature = "testing"))]

mod support;

use futures::future::join_all;
use idemq::store::redis::RedisStore;
use idemq::store::{Claim, ClaimRequest, Fence, RecordKey, StateFilter, Store, StoreError};
use idemq::testing::conformance::{store_conformance, Corrupter, Subject};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use std::sync::Arc;
use std::time::Duration;
use support::redis_cluster::{keys_per_primary, primaries_of, shared_url, RedisCluster};
use support::services::unique;

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

/// A connection to the cluster behind `url` for inspecting it behind the store's back.
async fn admin(url: &str) -> redis::cluster_async::ClusterConnection {
    let nodes: Vec<String> = url
        .trim_start_matches("redis-cluster://")
        .split(['/', '?'])
        .next()
        .unwrap_or("")
        .split(',')
        .map(|h| format!("redis://{h}"))
        .collect();
    redis::cluster::ClusterClient::new(nodes)
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("admin cluster connection")
}

async fn subject_with(max_batch: usize) -> Option<Subject> {
    let url = shared_url()?;
    let store = RedisStore::builder(url.clone())
        .prefix(unique("idemq-cconf"))
        .max_batch(max_batch)
        .build()
        .await
        .expect("connect to the Redis Cluster");
    assert!(store.is_cluster());
    let layout = store.clone();
    let corrupter: Corrupter = Box::new(move |key: RecordKey| {
        let rkey = layout.redis_key(&key);
        let url = url.clone();
        Box::pin(async move {
            let mut conn = admin(&url).await;
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

async fn subject() -> Option<Subject> {
    subject_with(idemq::store::redis::DEFAULT_MAX_BATCH).await
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

fn key(scope: &str, k: &str) -> RecordKey {
    RecordKey::new(scope, IdempotencyKey::new(k).expect("key"))
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

/// `store::connect` opens a cluster store from a `redis-cluster://` URL with idemq's parameters.
#[tokio::test]
async fn connect_dispatches_cluster_urls() {
    let Some(url) = shared_url() else { return };
    let prefix = unique("idemq-curl");
    let store = idemq::store::connect(&format!("{url}/?prefix={prefix}&batch=8&replicas=0"))
        .await
        .expect("connect");
    let shown = format!("{store:?}");
    assert!(shown.contains("cluster: true"), "{shown}");
    assert!(shown.contains(&prefix), "{shown}");
    let k = key("curl", "k1");
    let c = store
        .claim(&ClaimRequest::new(&k, &fp("a"), LEASE, RETENTION))
        .await
        .expect("claim");
    assert!(matches!(c, Claim::Acquired { .. }), "{c:?}");
}

/// Many concurrent claims and completes (batched) land on all three primaries, each batch split
/// by slot, and every key reads back completed.
#[tokio::test]
async fn batched_operations_spread_over_every_primary() {
    let Some(url) = shared_url() else { return };
    let prefix = unique("idemq-spread");
    let store = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .build()
        .await
        .expect("connect");
    let keys: Vec<RecordKey> = (0..300).map(|i| key("spread", &format!("k{i}"))).collect();
    let f = fp("p");
    let claims = join_all(keys.iter().map(|k| async {
        store
            .claim(&ClaimRequest::new(k, &f, LEASE, RETENTION))
            .await
    }))
    .await;
    let mut tokens = Vec::new();
    for (k, c) in keys.iter().zip(claims) {
        match c.expect("claim") {
            Claim::Acquired { token, .. } => tokens.push((k, token)),
            other => panic!("{k}: {other:?}"),
        }
    }
    let outcome = Outcome::succeeded("done");
    let fences = join_all(
        tokens
            .iter()
            .map(|(k, t)| store.complete(k, *t, &outcome, RETENTION)),
    )
    .await;
    for f in fences {
        assert_eq!(f.expect("complete"), Fence::Held);
    }
    let per_primary = keys_per_primary(&primaries_of(&url), &format!("{prefix}:*"));
    assert_eq!(per_primary.len(), 3, "{per_primary:?}");
    assert!(per_primary.iter().all(|(_, n)| *n > 50), "{per_primary:?}");
    assert_eq!(per_primary.iter().map(|(_, n)| n).sum::<usize>(), 300);
    // The scan walks every primary.
    let mut cursor = None;
    let mut seen = 0;
    loop {
        let page = store
            .scan("spread", StateFilter::Completed, cursor, 50)
            .await
            .expect("scan");
        seen += page.records.len();
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(seen >= 300, "scan found {seen} of 300 records");
}

/// With `replicas=1` every claim and complete waits until a replica has the write, and the
/// record is on the replica when the call returns. Asking for more replicas than exist fails
/// closed: the call is `Unavailable`, not reported as done.
#[tokio::test]
async fn wait_for_replicas_or_fail_closed() {
    let Some(url) = shared_url() else { return };
    let prefix = unique("idemq-wait");
    let store = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .replicas(1)
        .replica_timeout(Duration::from_millis(1000))
        .build()
        .await
        .expect("connect");
    let k = key("wait", "k1");
    let c = store
        .claim(&ClaimRequest::new(&k, &fp("a"), LEASE, RETENTION))
        .await
        .expect("claim with replicas=1");
    let Claim::Acquired { token, .. } = c else {
        panic!("{c:?}")
    };
    let fence = store
        .complete(&k, token, &Outcome::succeeded("x"), RETENTION)
        .await
        .expect("complete with replicas=1");
    assert_eq!(fence, Fence::Held);

    let greedy = idemq::store::connect(&format!(
        "{url}/?prefix={prefix}&replicas=2&replica_timeout_ms=200&batch=1"
    ))
    .await
    .expect("connect");
    let k2 = key("wait", "k2");
    let err = greedy
        .claim(&ClaimRequest::new(&k2, &fp("a"), LEASE, RETENTION))
        .await
        .expect_err("only one replica per primary: WAIT 2 must time out");
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && err.is_transient(),
        "{err:?}"
    );
    assert!(err.to_string().contains("not durable"), "{err}");
}

/// The replica of the key's primary holds the record once `complete` with `replicas=1` returned.
#[tokio::test]
async fn durable_complete_is_on_the_replica() {
    let Some(url) = shared_url() else { return };
    let prefix = unique("idemq-dur");
    let store = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .replicas(1)
        .build()
        .await
        .expect("connect");
    let keys: Vec<RecordKey> = (0..30).map(|i| key("dur", &format!("k{i}"))).collect();
    for k in &keys {
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(k, &fp("a"), LEASE, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("not acquired")
        };
        store
            .complete(k, token, &Outcome::succeeded("x"), RETENTION)
            .await
            .expect("complete");
    }
    // Every replica together holds every key (each replica mirrors one primary).
    let hosts = url.trim_start_matches("redis-cluster://");
    let all: Vec<u16> = hosts
        .split(',')
        .filter_map(|h| h.rsplit_once(':')?.1.parse().ok())
        .collect();
    let primaries = primaries_of(&url);
    let replicas: Vec<u16> = all.into_iter().filter(|p| !primaries.contains(p)).collect();
    let on_replicas: usize = keys_per_primary(&replicas, &format!("{prefix}:*"))
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(on_replicas, keys.len());
}

/// A private cluster so the test may flush scripts: after `SCRIPT FLUSH` on every node (as after
/// a failover to a fresh node), the store reloads and goes on, batched and unbatched, with and
/// without `WAIT` (the script call and `WAIT` share a pipeline).
#[tokio::test]
async fn noscript_reloads_on_every_primary() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.url();
    for (batch, replicas) in [(1, 0), (64, 0), (1, 1), (64, 1)] {
        let store = RedisStore::builder(url.clone())
            .prefix(unique("idemq-noscript"))
            .max_batch(batch)
            .replicas(replicas)
            .build()
            .await
            .expect("connect");
        for p in cluster.ports() {
            cluster.cli(p, &["SCRIPT", "FLUSH"]).expect("SCRIPT FLUSH");
        }
        let keys: Vec<RecordKey> = (0..40).map(|i| key("ns", &format!("k{i}"))).collect();
        let claims = join_all(keys.iter().map(|k| async {
            let f = fp("a");
            store
                .claim(&ClaimRequest::new(k, &f, LEASE, RETENTION))
                .await
        }))
        .await;
        for c in claims {
            assert!(matches!(c, Ok(Claim::Acquired { .. })), "{c:?}");
        }
    }
}

/// Credentials in the URL: a cluster whose nodes require a password is reached with
/// `redis-cluster://:password@…`; a wrong password fails without echoing it.
#[tokio::test]
async fn password_in_the_cluster_url() {
    let Some(cluster) = RedisCluster::start_with_password(Some("s3cret-pw")) else {
        return;
    };
    let store = idemq::store::connect(&format!(
        "{}/?prefix={}",
        cluster.url_with_auth(),
        unique("idemq-cauth")
    ))
    .await
    .expect("connect with the password");
    let k = key("auth", "k1");
    let c = store
        .claim(&ClaimRequest::new(&k, &fp("a"), LEASE, RETENTION))
        .await
        .expect("claim");
    assert!(matches!(c, Claim::Acquired { .. }), "{c:?}");
    let shown = format!("{store:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");

    let wrong = cluster.url_with_auth().replace("s3cret-pw", "wrong-pw");
    let err = RedisStore::builder(wrong)
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .expect_err("a wrong password must fail");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    let none = RedisStore::builder(cluster.url())
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(none.is_err(), "no password must fail");
}
