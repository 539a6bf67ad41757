//! Postgres test helpers: a migrated store on a shared test table, raw SQL access.

use super::services::{postgres_url, require_postgres, unique};
use idemq::store::postgres::{PostgresOptions, PostgresStore};
use idemq::store::RecordKey;

/// Table shared by tests that isolate themselves by scope.
pub const SHARED_TABLE: &str = "idemq_test_records";

/// A store on [`SHARED_TABLE`] (migrated), or `None` to skip outside CI.
pub async fn shared_store() -> Option<PostgresStore> {
    store_on(SHARED_TABLE).await
}

/// A store on `table` (migrated), or `None` to skip outside CI.
pub async fn store_on(table: &str) -> Option<PostgresStore> {
    if !require_postgres() {
        return None;
    }
    let options = PostgresOptions::default()
        .with_table(table)
        .expect("valid table name");
    let store = PostgresStore::connect_with(&postgres_url(), options)
        .await
        .expect("connect to postgres");
    store.migrate().await.expect("migrate");
    Some(store)
}

/// A table name nobody else uses (lower-case, valid identifier).
pub fn unique_table(prefix: &str) -> String {
    unique(prefix).replace('-', "_").to_ascii_lowercase()
}

/// Runs raw SQL (no parameters) on the store's database.
pub async fn exec(store: &PostgresStore, sql: &str) {
    let client = store.pool().get().await.expect("pooled connection");
    client.batch_execute(sql).await.expect("raw sql");
}

/// Overwrites a record's state and fingerprint with garbage.
pub async fn corrupt(store: &PostgresStore, key: &RecordKey) {
    let client = store.pool().get().await.expect("pooled connection");
    let sql = format!(
        "UPDATE {} SET state = 'zombie', fingerprint = '\\x00'::bytea \
         WHERE scope = $1 AND idempotency_key = $2",
        store.table()
    );
    let n = client
        .execute(&sql, &[&key.scope, &key.key.as_str()])
        .await
        .expect("corrupt");
    assert_eq!(n, 1, "record to corrupt exists");
}

/// The crash tests' verdict: every one of `keys` distinct keys has exactly one row in `effects`
/// (written by several processes), and its outcome is stored as completed in `scope`.
pub async fn assert_exactly_one_effect_per_key(
    store: &PostgresStore,
    effects: &str,
    scope: &str,
    keys: i64,
) {
    let client = store.pool().get().await.expect("client");
    let rows = client
        .query(
            &format!(
                "SELECT idempotency_key, count(*) FROM {effects} GROUP BY idempotency_key \
                 HAVING count(*) <> 1"
            ),
            &[],
        )
        .await
        .expect("effects");
    let doubled: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        doubled.is_empty(),
        "keys whose effect ran more than once: {doubled:?}"
    );
    let distinct: i64 = client
        .query_one(
            &format!("SELECT count(DISTINCT idempotency_key) FROM {effects}"),
            &[],
        )
        .await
        .expect("keys")
        .get(0);
    assert_eq!(distinct, keys, "every key has its effect");
    let pids: i64 = client
        .query_one(&format!("SELECT count(DISTINCT pid) FROM {effects}"), &[])
        .await
        .expect("pids")
        .get(0);
    assert!(pids > 1, "effects come from several consumer processes");
    let completed: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {SHARED_TABLE} WHERE scope = $1 AND state = 'completed'"
            ),
            &[&scope],
        )
        .await
        .expect("records")
        .get(0);
    assert_eq!(completed, keys, "every key's outcome is stored");
}

/// Rows in an effects table (0 while no consumer has created it yet).
pub async fn effect_rows(store: &PostgresStore, table: &str) -> i64 {
    let client = store.pool().get().await.expect("client");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("regclass")
        .get(0);
    if !exists {
        return 0;
    }
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

/// The moment a crash test kills its consumer: waits (at most `within`; startup and group joins
/// vary with load) until the effects table grows past its current size, then a random
/// 50..550 ms more. Returns the row count seen before.
pub async fn wait_for_work_then_random_pause(
    store: &PostgresStore,
    table: &str,
    within: std::time::Duration,
) -> i64 {
    let before = effect_rows(store, table).await;
    let started = tokio::time::Instant::now();
    while effect_rows(store, table).await == before && started.elapsed() < within {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    tokio::time::sleep(std::time::Duration::from_millis(
        50 + u64::from(nanos % 500),
    ))
    .await;
    before
}
