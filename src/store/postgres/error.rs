//! Mapping client errors to [`StoreError`].

use super::table::TableName;
use crate::store::StoreError;
use tokio_postgres::error::SqlState;

/// A database error: a missing table is a configuration problem with a hint, anything else is
/// transient from the caller's point of view (fail closed, retry later).
pub(crate) fn db(op: &'static str, table: &TableName, err: tokio_postgres::Error) -> StoreError {
    if err.code() == Some(&SqlState::UNDEFINED_TABLE) {
        return StoreError::InvalidConfig(format!(
            "postgres table {table} does not exist: call PostgresStore::migrate(), add \
             `idemq_migrate=true` to the store URL, or apply migrations/0001_idemq.sql ({err})"
        ));
    }
    StoreError::unavailable(op, err)
}

/// No connection could be taken from the pool.
pub(crate) fn pool(op: &'static str, err: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable(op, err)
}
