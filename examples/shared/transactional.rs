//! `--transactional` for the order examples (included with `#[path]`): the example's handler runs
//! inside the Postgres transaction that claimed the key (`TransactionalEngine`), and every handler
//! execution inserts one row (key, pid, at) into the effects table through that transaction, so
//! the row, the claim and the outcome commit together.

use idemq::{EngineConfig, Handler, Processor};
use std::sync::Arc;

/// Errors of the examples' setup.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// A `TransactionalEngine` on `store_url` (must be `postgres://…`) running `handler` and inserting
/// one row per execution into `effects_table` (created if missing).
#[cfg(feature = "postgres")]
pub async fn processor<H: Handler>(
    store_url: &str,
    effects_table: &str,
    config: EngineConfig,
    handler: H,
) -> Result<Arc<dyn Processor>, SetupError> {
    use idemq::store::postgres::PostgresStore;
    use idemq::transactional::{from_fn_with, TransactionalEngine};
    use idemq::ResultExt;

    if !store_url.starts_with("postgres://") && !store_url.starts_with("postgresql://") {
        return Err("--transactional needs --store postgres://…".into());
    }
    let table = effects_table;
    // The name is spliced into SQL: allow plain (optionally schema-qualified) identifiers only.
    if table.is_empty()
        || !table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
    {
        return Err("--effects-table: lower-case letters, digits, `_` and `.` only".into());
    }
    let store = PostgresStore::from_url(store_url).await?;
    {
        // Several consumers may start at once: serialize the CREATE.
        let mut client = store.pool().get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('idemq_orders:{table}'));
             CREATE TABLE IF NOT EXISTS {table} (
                 idempotency_key text NOT NULL,
                 pid integer NOT NULL,
                 at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await?;
        tx.commit().await?;
    }
    let insert = format!("INSERT INTO {table} (idempotency_key, pid) VALUES ($1, $2)");
    let engine = TransactionalEngine::new(
        store,
        config,
        from_fn_with((insert, handler), async |(insert, handler), ctx, tx| {
            let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
            let pid = std::process::id() as i32;
            tx.execute(insert, &[&key, &pid]).await.retriable()?;
            handler.handle(ctx).await
        }),
    )?;
    Ok(Arc::new(engine))
}

/// Without the `postgres` feature `--transactional` is refused.
#[cfg(not(feature = "postgres"))]
pub async fn processor<H: Handler>(
    _store_url: &str,
    _effects_table: &str,
    _config: EngineConfig,
    _handler: H,
) -> Result<Arc<dyn Processor>, SetupError> {
    Err("--transactional needs the `postgres` feature".into())
}
