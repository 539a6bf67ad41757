//! Postgres-specific store behaviour: migrations, purging, unreadable rows, URL options, errors.
#![cfg(feature = "postgres")]

mod support;

use idemq::store::postgres::{PostgresOptions, PostgresStore};
use idemq::store::{
    Claim, ClaimRequest, Fence, RecordKey, RecordState, Release, Store, StoreError,
};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use std::sync::Arc;
use std::time::Duration;
use support::postgres::{exec, shared_store, store_on, unique_table};
use support::services::{postgres_url, unique};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

fn key(scope: &str, k: &str) -> RecordKey {
    RecordKey::new(scope, IdempotencyKey::new(k).expect("valid key"))
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

async fn acquire(store: &PostgresStore, k: &RecordKey, f: &Fingerprint, lease: Duration) -> u64 {
    match store
        .claim(&ClaimRequest::new(k, f, lease, RETENTION))
        .await
        .expect("claim")
    {
        Claim::Acquired { token, .. } => token.0,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn count(store: &PostgresStore, sql: &str) -> i64 {
    let client = store.pool().get().await.expect("client");
    client.query_one(sql, &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn migration_is_idempotent_concurrent_safe_and_indexes_expiry() {
    if !support::services::require_postgres() {
        return;
    }
    let table = unique_table("idemq_mig");
    let options = PostgresOptions::default()
        .with_table(&table)
        .expect("table name");
    let store = PostgresStore::connect_with(&postgres_url(), options)
        .await
        .expect("connect");
    // Many consumers starting at once on a fresh database all migrate: none may fail (without the
    // advisory lock, concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index).
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.migrate().await })
        })
        .collect();
    for r in runs {
        r.await.expect("task").expect("repeated migrate succeeds");
    }
    let indexes = count(
        &store,
        &format!(
            "SELECT count(*) FROM pg_indexes WHERE tablename = '{table}' \
             AND indexdef LIKE '%(expires_at)%'"
        ),
    )
    .await;
    assert_eq!(indexes, 1, "expiry index exists once");
    // The table is usable after all that.
    let k = key(&unique("mig"), "k");
    acquire(&store, &k, &fp("a"), LEASE).await;
    exec(&store, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn schema_qualified_table_from_url_options() {
    if !support::services::require_postgres() {
        return;
    }
    let schema = unique_table("idemq_schema");
    let table = format!("{schema}.records");
    let url = format!("{}?idemq_table={table}&idemq_migrate=true", postgres_url());
    let store = idemq::store::connect(&url)
        .await
        .expect("connect + migrate");
    let k = key(&unique("url"), "k");
    let f = fp("a");
    let req = ClaimRequest::new(&k, &f, LEASE, RETENTION);
    let Claim::Acquired { token, .. } = store.claim(&req).await.expect("claim") else {
        panic!("expected Acquired");
    };
    let done = store
        .complete(&k, token, &Outcome::succeeded("ok"), RETENTION)
        .await
        .expect("complete");
    assert_eq!(done, Fence::Held);
    // Really stored in that schema.
    let raw = store_on(&table).await.expect("store");
    assert_eq!(
        count(&raw, &format!("SELECT count(*) FROM {schema}.records")).await,
        1
    );
    exec(&raw, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

#[tokio::test]
async fn missing_table_is_a_config_error_with_a_hint() {
    if !support::services::require_postgres() {
        return;
    }
    let url = format!(
        "{}?idemq_table={}",
        postgres_url(),
        unique_table("idemq_absent")
    );
    match idemq::store::connect(&url).await {
        Err(StoreError::InvalidConfig(msg)) => assert!(msg.contains("migrate"), "{msg}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // Port 1 on localhost refuses connections.
    let options = PostgresOptions {
        connect_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    match PostgresStore::connect_with("postgres://postgres@127.0.0.1:1/test", options).await {
        Err(e @ StoreError::Unavailable { .. }) => assert!(e.is_transient()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        PostgresStore::connect("postgres://h/db?nonsense_option=1").await,
        Err(StoreError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn purge_expired_deletes_only_expired_rows() {
    let table = unique_table("idemq_purge");
    let Some(store) = store_on(&table).await else {
        return;
    };
    let scope = unique("purge");
    for i in 0..30 {
        let k = key(&scope, &format!("k{i}"));
        let t = acquire(&store, &k, &fp("a"), Duration::from_millis(100)).await;
        let retention = if i % 3 == 0 {
            Duration::from_millis(200)
        } else {
            RETENTION
        };
        let f = store
            .complete(
                &k,
                idemq::store::Token(t),
                &Outcome::succeeded("ok"),
                retention,
            )
            .await
            .expect("complete");
        assert_eq!(f, Fence::Held);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.purge_expired().await.expect("purge"), 10);
    assert_eq!(store.purge_expired().await.expect("purge again"), 0);
    let left = count(&store, &format!("SELECT count(*) FROM {table}")).await;
    assert_eq!(left, 20);
    assert!(store.get(&key(&scope, "k1")).await.expect("get").is_some());
    // The planner can use the expiry index for the purge predicate.
    let client = store.pool().get().await.expect("client");
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .expect("set");
    let plan: Vec<String> = client
        .query(
            &format!("EXPLAIN SELECT ctid FROM {table} WHERE expires_at <= now()"),
            &[],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .batch_execute("RESET enable_seqscan")
        .await
        .expect("reset");
    drop(client);
    assert!(
        plan.iter().any(|l| l.contains("expires_at_idx")),
        "{plan:?}"
    );
    exec(&store, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn unreadable_rows_are_typed_errors_naming_the_key() {
    let Some(store) = shared_store().await else {
        return;
    };
    let scope = unique("corrupt");
    let table = store.table().to_string();
    let cases = [
        ("bad-fp", "fingerprint = '\\x0102'::bytea"),
        ("bad-state", "state = 'archived'"),
        ("bad-status", "outcome_status = 'maybe'"),
        ("bad-token", "token = -5"),
        ("no-outcome", "outcome = NULL"),
    ];
    for (k, set) in cases {
        let rk = key(&scope, k);
        let t = acquire(&store, &rk, &fp("a"), LEASE).await;
        store
            .complete(
                &rk,
                idemq::store::Token(t),
                &Outcome::succeeded("ok"),
                RETENTION,
            )
            .await
            .expect("complete");
        exec(
            &store,
            &format!(
                "UPDATE {table} SET {set} WHERE scope = '{scope}' AND idempotency_key = '{k}'"
            ),
        )
        .await;
        let f = fp("a");
        let req = ClaimRequest::new(&rk, &f, LEASE, RETENTION);
        for result in [
            store.claim(&req).await.map(|_| ()),
            store.get(&rk).await.map(|_| ()),
        ] {
            match result {
                Err(StoreError::Corrupt { key, detail }) => {
                    assert!(key.contains(k), "{key}");
                    assert!(!detail.is_empty());
                }
                other => panic!("{k}: expected Corrupt, got {other:?}"),
            }
        }
        assert!(store.forget(&rk).await.expect("forget"), "{k}");
    }
}

#[tokio::test]
async fn concurrent_claims_from_separate_pools_yield_one_owner() {
    let Some(a) = shared_store().await else {
        return;
    };
    let b = shared_store().await.expect("second store");
    let scope = unique("pools");
    for round in 0..5 {
        let k = key(&scope, &format!("race-{round}"));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let k = k.clone();
                tokio::spawn(async move {
                    let f = fp("a");
                    store
                        .claim(&ClaimRequest::new(&k, &f, LEASE, RETENTION))
                        .await
                        .expect("claim")
                })
            })
            .collect();
        let mut acquired = 0;
        for t in tasks {
            match t.await.expect("task") {
                Claim::Acquired { .. } => acquired += 1,
                Claim::InFlight { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(acquired, 1, "round {round}");
    }
}

#[tokio::test]
async fn tokens_keep_growing_after_retention_and_release() {
    let Some(store) = shared_store().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let k = key(&unique("tokens"), "k");
    let f = fp("a");
    let short = ClaimRequest::new(
        &k,
        &f,
        Duration::from_millis(100),
        Duration::from_millis(100),
    );
    let Claim::Acquired { token: t1, .. } = store.claim(&short).await.expect("claim") else {
        panic!("expected Acquired");
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store.get(&k).await.expect("get").is_none(),
        "expired reads as absent"
    );
    // An expired row is reclaimed as a fresh record (attempt 1) but its token still grows, so a
    // long-gone owner can never complete with a reused token.
    let Claim::Acquired { token: t2, attempt } = store.claim(&short).await.expect("claim") else {
        panic!("expected Acquired");
    };
    assert!(t2 > t1);
    assert_eq!(attempt, 1);
    let f2 = store
        .release(&k, t2, Release::Retry)
        .await
        .expect("release");
    assert_eq!(f2, Fence::Held);
    let rec = store.get(&k).await.expect("get").expect("tombstone");
    assert_eq!((rec.state, rec.token), (RecordState::Released, t2));
}

#[tokio::test]
async fn replay_of_a_completed_key_takes_no_row_lock() {
    let Some(store) = shared_store().await else {
        return;
    };
    let k = key(&unique("nolock"), "done");
    let t = acquire(&store, &k, &fp("a"), LEASE).await;
    store
        .complete(
            &k,
            idemq::store::Token(t),
            &Outcome::succeeded("ok"),
            RETENTION,
        )
        .await
        .expect("complete");
    // Another session holds the row lock (as a long transaction would).
    let mut holder = store.pool().get().await.expect("client");
    let tx = holder.transaction().await.expect("begin");
    tx.execute(
        &format!(
            "SELECT 1 FROM {} WHERE scope = $1 AND idempotency_key = $2 FOR UPDATE",
            store.table()
        ),
        &[&k.scope, &k.key.as_str()],
    )
    .await
    .expect("lock");
    // Replays (and conflicts) of a completed key answer without waiting for that lock.
    let f = fp("a");
    let replay = tokio::time::timeout(
        Duration::from_secs(2),
        store.claim(&ClaimRequest::new(&k, &f, LEASE, RETENTION)),
    )
    .await
    .expect("replay must not wait on the row lock")
    .expect("claim");
    assert!(matches!(replay, Claim::Completed { .. }), "{replay:?}");
    let other = fp("b");
    let conflict = tokio::time::timeout(
        Duration::from_secs(2),
        store.claim(&ClaimRequest::new(&k, &other, LEASE, RETENTION)),
    )
    .await
    .expect("conflict must not wait on the row lock")
    .expect("claim");
    assert!(matches!(conflict, Claim::Conflict { .. }), "{conflict:?}");
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn scan_reads_back_keys_longer_than_the_default_limit() {
    let Some(store) = shared_store().await else {
        return;
    };
    // A consumer configured with a larger key limit stores long keys; operators must be able to
    // list them.
    let config = idemq::KeyConfig::default().max_len(1000);
    let long = "k".repeat(600);
    let msg = idemq::Message::new("p", idemq::Source::Other("test".into()))
        .with_header("Idempotency-Key", long.clone());
    let scope = unique("long");
    let k = RecordKey::new(scope.clone(), config.extract(&msg).expect("long key"));
    acquire(&store, &k, &fp("a"), LEASE).await;
    let page = store
        .scan(&scope, idemq::store::StateFilter::All, None, 10)
        .await
        .expect("scan");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].key.key.as_str(), long);
}

/// The store's own statements behave the same when the sessions default to SERIALIZABLE
/// (`default_transaction_isolation` on the role, database or URL): concurrent claims, completes
/// and takeovers of one key never surface a serialization failure as "store unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_session_default_does_not_fail_concurrent_operations() {
    if !support::services::require_postgres() {
        return;
    }
    let url = format!(
        "{}{}options=-cdefault_transaction_isolation%3Dserializable",
        postgres_url(),
        if postgres_url().contains('?') {
            '&'
        } else {
            '?'
        }
    );
    let options = PostgresOptions::default()
        .with_table(support::postgres::SHARED_TABLE)
        .expect("table");
    let a = PostgresStore::connect_with(&url, options.clone())
        .await
        .expect("connect");
    let b = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect");
    let scope = unique("serializable");
    for round in 0..10 {
        let k = key(&scope, &format!("race-{round}"));
        // A short lease and retention: later claims race on an expired row (the upsert path).
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = if i % 2 == 0 { a.clone() } else { b.clone() };
                let k = k.clone();
                tokio::spawn(async move {
                    let f = fp("a");
                    let req = ClaimRequest::new(
                        &k,
                        &f,
                        Duration::from_millis(50),
                        Duration::from_millis(50),
                    );
                    let mut acquired = 0;
                    for _ in 0..4 {
                        match store.claim(&req).await.expect("claim") {
                            Claim::Acquired { token, .. } => {
                                acquired += 1;
                                store
                                    .complete(
                                        &k,
                                        token,
                                        &Outcome::succeeded("ok"),
                                        Duration::from_millis(50),
                                    )
                                    .await
                                    .expect("complete");
                            }
                            Claim::InFlight { .. } | Claim::Completed { .. } => {}
                            other => panic!("unexpected {other:?}"),
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    acquired
                })
            })
            .collect();
        let mut acquired = 0;
        for t in tasks {
            acquired += t.await.expect("task");
        }
        assert!(acquired >= 1, "round {round}");
    }
}
