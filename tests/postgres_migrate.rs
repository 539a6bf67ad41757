//! Every migration path (`PostgresStore::migrate()` and `?idemq_migrate=true`) with the default
//! table name, a custom name and a schema-qualified name, each from an empty schema.
//!
//! Other sessions share the database, so each test works in a schema of its own: the connection's
//! `search_path` points at it (`options=-csearch_path=…` in the URL), which is where an unqualified
//! table name — the default one included — is created.
#![cfg(feature = "postgres")]

mod support;

use idemq::store::postgres::{PostgresOptions, PostgresStore, DEFAULT_TABLE};
use idemq::store::{Claim, ClaimRequest, Fence, RecordKey, Store};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use std::time::Duration;
use support::postgres::{exec, unique_table};
use support::services::{postgres_url, require_postgres, unique};

/// A fresh, empty schema, and a URL whose connections resolve unqualified names in it.
struct Sandbox {
    schema: String,
    url: String,
}

impl Sandbox {
    async fn new() -> Option<Self> {
        if !require_postgres() {
            return None;
        }
        let schema = unique_table("idemq_mig");
        let admin = PostgresStore::from_pool(pool(&postgres_url()), PostgresOptions::default());
        exec(&admin, &format!("CREATE SCHEMA {schema}")).await;
        let sep = if postgres_url().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}options=-csearch_path%3D{schema}", postgres_url());
        Some(Self { schema, url })
    }

    /// The store's URL with idemq's own parameters appended.
    fn url_with(&self, params: &str) -> String {
        format!("{}&{params}", self.url)
    }

    /// Tables in `schema` named `table` (0 or 1).
    async fn tables(&self, schema: &str, table: &str) -> i64 {
        let admin = PostgresStore::from_pool(pool(&postgres_url()), PostgresOptions::default());
        let client = admin.pool().get().await.expect("client");
        client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
                &[&schema, &table],
            )
            .await
            .expect("pg_tables")
            .get(0)
    }

    async fn drop(self, extra_schema: Option<&str>) {
        let admin = PostgresStore::from_pool(pool(&postgres_url()), PostgresOptions::default());
        exec(&admin, &format!("DROP SCHEMA {} CASCADE", self.schema)).await;
        if let Some(s) = extra_schema {
            exec(&admin, &format!("DROP SCHEMA {s} CASCADE")).await;
        }
    }
}

fn pool(url: &str) -> deadpool_postgres::Pool {
    let pg: tokio_postgres::Config = url.parse().expect("url");
    let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .expect("pool")
}

/// The migrated store works: claim, complete, replay.
async fn usable(store: &dyn Store) {
    let k = RecordKey::new(unique("mig"), IdempotencyKey::new("k").expect("key"));
    let f = Fingerprint::of_bytes(b"p");
    let req = ClaimRequest::new(&k, &f, Duration::from_secs(30), Duration::from_secs(60));
    let Claim::Acquired { token, .. } = store.claim(&req).await.expect("claim") else {
        panic!("fresh key not acquired");
    };
    let done = store
        .complete(
            &k,
            token,
            &Outcome::succeeded("ok"),
            Duration::from_secs(60),
        )
        .await
        .expect("complete");
    assert_eq!(done, Fence::Held);
    assert!(matches!(
        store.claim(&req).await.expect("claim"),
        Claim::Completed { .. }
    ));
}

async fn migrate_api(sandbox: &Sandbox, table: Option<&str>) {
    let mut options = PostgresOptions::default();
    if let Some(t) = table {
        options = options.with_table(t).expect("table name");
    }
    let store = PostgresStore::connect_with(&sandbox.url, options)
        .await
        .expect("connect");
    store
        .migrate()
        .await
        .expect("first migrate on an empty schema");
    store.migrate().await.expect("migrate is idempotent");
    usable(&store).await;
}

async fn migrate_url(sandbox: &Sandbox, table: Option<&str>) {
    let params = match table {
        Some(t) => format!("idemq_table={t}&idemq_migrate=true"),
        None => "idemq_migrate=true".to_string(),
    };
    let store = idemq::store::connect(&sandbox.url_with(&params))
        .await
        .expect("connect + migrate on an empty schema");
    usable(&*store).await;
    // Reopening migrates again (idempotent) and finds the table.
    let again = idemq::store::connect(&sandbox.url_with(&params))
        .await
        .expect("second connect + migrate");
    usable(&*again).await;
}

#[tokio::test]
async fn default_table_migrates_with_migrate() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    migrate_api(&sandbox, None).await;
    assert_eq!(sandbox.tables(&sandbox.schema, DEFAULT_TABLE).await, 1);
    sandbox.drop(None).await;
}

#[tokio::test]
async fn default_table_migrates_from_url() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    migrate_url(&sandbox, None).await;
    assert_eq!(sandbox.tables(&sandbox.schema, DEFAULT_TABLE).await, 1);
    sandbox.drop(None).await;
}

#[tokio::test]
async fn custom_table_migrates_with_migrate() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    migrate_api(&sandbox, Some("jobs")).await;
    assert_eq!(sandbox.tables(&sandbox.schema, "jobs").await, 1);
    sandbox.drop(None).await;
}

#[tokio::test]
async fn custom_table_migrates_from_url() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    migrate_url(&sandbox, Some("jobs")).await;
    assert_eq!(sandbox.tables(&sandbox.schema, "jobs").await, 1);
    sandbox.drop(None).await;
}

#[tokio::test]
async fn schema_qualified_table_migrates_with_migrate() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    let other = unique_table("idemq_mig_q");
    migrate_api(&sandbox, Some(&format!("{other}.records"))).await;
    assert_eq!(sandbox.tables(&other, "records").await, 1);
    assert_eq!(sandbox.tables(&sandbox.schema, "records").await, 0);
    sandbox.drop(Some(&other)).await;
}

#[tokio::test]
async fn schema_qualified_table_migrates_from_url() {
    let Some(sandbox) = Sandbox::new().await else {
        return;
    };
    let other = unique_table("idemq_mig_q");
    migrate_url(&sandbox, Some(&format!("{other}.records"))).await;
    assert_eq!(sandbox.tables(&other, "records").await, 1);
    assert_eq!(sandbox.tables(&sandbox.schema, "records").await, 0);
    sandbox.drop(Some(&other)).await;
}
