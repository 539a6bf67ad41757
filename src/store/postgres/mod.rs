//! Postgres store; its transactional engine (handlers whose writes commit together with the
//! outcome) is [`crate::transactional`].
//!
//! [`PostgresStore`] implements [`Store`] with the same behaviour as the memory and Redis stores
//! (it passes the same conformance suite). Records live in one table (default `idemq_records`,
//! schema-qualified names allowed, see [`TableName`]) created by [`PostgresStore::migrate`] from
//! the shipped migration `migrations/0001_idemq.sql` — or by you, running that file. Every
//! operation is one SQL statement and, once the connection has prepared it, one round trip; leases
//! and retention use the database clock, so consumer hosts need not agree on the time.
//! Rows past their retention read as absent; [`PostgresStore::purge_expired`] deletes them (call
//! it periodically, e.g. every few minutes; an index on the expiry column keeps it cheap).
//! Tokens are `max(previous + 1, database clock in ms)`, so they keep growing after a row expired
//! or was purged (see [`Token`]).
//!
//! [`TransactionalEngine`](crate::transactional::TransactionalEngine) goes further: it claims the
//! key, runs your handler and stores the outcome in **one transaction**, handing the handler that transaction for its own writes. The
//! effects and the outcome commit together or not at all, which gives exactly-once effects for
//! writes to the same database, even across crashes.
//!
//! ## Why tokio-postgres + deadpool rather than sqlx
//! idemq issues a handful of fixed statements, so sqlx's main features (compile-time checked
//! queries, which need a database or an offline cache at build time, and its own migration runner)
//! buy little here, while its dependency tree is several times larger. tokio-postgres is the
//! lean, widely used async driver underneath many higher-level crates; deadpool-postgres adds a
//! small pool with a per-connection prepared-statement cache, which makes each operation a single
//! round trip.
//!
//! ## TLS
//! [`PostgresStore::connect`] connects without TLS. For TLS, build a
//! `deadpool_postgres::Pool` with your TLS connector (e.g. `postgres-native-tls`) and use
//! [`PostgresStore::from_pool`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), idemq::StoreError> {
//! use idemq::store::postgres::{PostgresOptions, PostgresStore};
//! use idemq::store::Store;
//!
//! let options = PostgresOptions::default().with_table("billing.idemq_records")?;
//! let store = PostgresStore::connect_with("postgres://app@db/billing", options).await?;
//! store.migrate().await?; // idempotent; skip it if you run migrations yourself
//! let purged = store.purge_expired().await?;
//! # let _ = purged; Ok(()) }
//! ```
//!
//! Through [`connect`](super::connect) the URL may carry two extra query parameters:
//! `idemq_table=schema.name` and `idemq_migrate=true`
//! (`postgres://app@db/billing?idemq_table=billing.idemq_records&idemq_migrate=true`).

mod error;
pub(crate) mod row;
mod sql;
mod table;

/// The transaction type handed to
/// [`TransactionalHandler`](crate::transactional::TransactionalHandler)s (deadpool's wrapper
/// around `tokio_postgres::Transaction`, with a prepared-statement cache).
pub use deadpool_postgres::Transaction;
pub use table::{TableName, DEFAULT_TABLE};

use super::types::*;
use super::{Store, StoreError};
use crate::outcome::Outcome;
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sql::Sql;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use tracing::debug;

/// How often a claim is re-run when a concurrent claim committed between the statement's snapshot
/// and its upsert (each re-run takes a fresh snapshot, so two suffice in practice).
const CLAIM_RACE_RETRIES: u32 = 8;
/// tokio-postgres's default TCP keepalive idle time (the operating system's usual 2 h).
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
/// Keepalive settings of the pools `connect_with` builds: probes after 30 s idle, every 10 s,
/// 3 unanswered probes end the connection.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;
/// Rows deleted per statement by [`PostgresStore::purge_expired`].
const PURGE_BATCH: i64 = 5_000;

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Record table (default `idemq_records`).
    pub table: TableName,
    /// Largest outcome `complete` accepts (default 1 MiB).
    pub max_outcome_bytes: usize,
    /// Connections in the pool (used by [`PostgresStore::connect_with`]; default 16).
    pub pool_size: usize,
    /// Bound on waiting for a pooled connection or opening a new one (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            table: TableName::default(),
            max_outcome_bytes: DEFAULT_MAX_OUTCOME_BYTES,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PostgresOptions {
    /// Uses the table `qualified` (`name` or `schema.name`), validated by [`TableName::new`].
    pub fn with_table(mut self, qualified: &str) -> Result<Self, StoreError> {
        self.table = TableName::new(qualified)?;
        Ok(self)
    }

    /// Sets the outcome size limit.
    pub fn with_max_outcome_bytes(mut self, limit: usize) -> Self {
        self.max_outcome_bytes = limit;
        self
    }

    /// Sets the pool size.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }
}

/// [`Store`] on a Postgres table; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    options: Arc<PostgresOptions>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.options.table.to_string())
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PostgresStore {
    /// Connects (without TLS) with default options. Fails with [`StoreError::Unavailable`] if the
    /// server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects (without TLS) with `options`.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::InvalidConfig(format!("postgres URL: {e}")))?;
        shorten_keepalives(&mut pg);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::InvalidConfig(format!("postgres pool: {e}")))?;
        let store = Self::from_pool(pool, options);
        // Fail fast on a wrong host or credentials rather than at the first message.
        drop(store.client("connect").await?);
        Ok(store)
    }

    /// Uses an existing pool (bring your own TLS connector or pool settings).
    pub fn from_pool(pool: Pool, options: PostgresOptions) -> Self {
        Self {
            sql: Arc::new(Sql::new(&options.table)),
            pool,
            options: Arc::new(options),
        }
    }

    /// The record table.
    pub fn table(&self) -> &TableName {
        &self.options.table
    }

    /// The connection pool (shared with
    /// [`TransactionalEngine`](crate::transactional::TransactionalEngine)s built on this store).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The SQL [`migrate`](Self::migrate) runs for this store's table, for users who apply
    /// migrations with their own tooling.
    pub fn migration_sql(&self) -> &str {
        &self.sql.migrate
    }

    /// Creates the table and its expiry index if missing. Idempotent, and safe to run from many
    /// consumers at once (serialized by a transaction-scoped advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        const OP: &str = "migrate";
        let mut client = self.client(OP).await?;
        let tx = client.transaction().await.map_err(|e| self.db(OP, e))?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(hashtext('idemq-migrate:' || '{}'));\n{}",
            self.options.table, self.sql.migrate
        ))
        .await
        .map_err(|e| self.db(OP, e))?;
        tx.commit().await.map_err(|e| self.db(OP, e))?;
        debug!(table = %self.options.table, "migration applied");
        Ok(())
    }

    /// Deletes every record past its retention, in batches; returns how many were deleted.
    ///
    /// Expired records already read as absent, so this only reclaims space. Run it periodically
    /// from one place (a timer in one consumer, or a cron job); concurrent runs are harmless.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        const OP: &str = "purge_expired";
        let client = self.client(OP).await?;
        let stmt = self.prepare(&client, OP, &self.sql.purge).await?;
        let mut total = 0;
        loop {
            let n = client
                .execute(&stmt, &[&PURGE_BATCH])
                .await
                .map_err(|e| self.db(OP, e))?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Checks that the table exists (used when opening from a URL without `idemq_migrate`).
    async fn check_table(&self) -> Result<(), StoreError> {
        let client = self.client("connect").await?;
        client
            .batch_execute(&self.sql.exists)
            .await
            .map_err(|e| self.db("connect", e))
    }

    pub(crate) async fn client(
        &self,
        op: &'static str,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| error::pool(op, e))
    }

    pub(crate) fn db(&self, op: &'static str, err: tokio_postgres::Error) -> StoreError {
        error::db(op, &self.options.table, err)
    }

    pub(crate) async fn prepare(
        &self,
        client: &impl GenericClient,
        op: &'static str,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, StoreError> {
        client.prepare_cached(sql).await.map_err(|e| self.db(op, e))
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.sql
    }

    pub(crate) fn max_outcome_bytes(&self) -> usize {
        self.options.max_outcome_bytes
    }

    /// Runs the claim statement once on a pooled connection (its own transaction).
    /// `Ok(None)`: a concurrent claim committed in between; run it again.
    async fn claim_once(
        &self,
        client: &impl GenericClient,
        stmt: &tokio_postgres::Statement,
        req: &ClaimRequest<'_>,
    ) -> Result<Option<Claim>, StoreError> {
        let rows = match client.query(stmt, &claim_params(req).as_params()).await {
            Ok(rows) => rows,
            // The same race under a REPEATABLE READ / SERIALIZABLE session default: the statement
            // was its own transaction and changed nothing, so run it again.
            Err(e) if is_serialization_failure(&e) => return Ok(None),
            Err(e) => return Err(self.db("claim", e)),
        };
        interpret_claim(rows, req)
    }

    fn check_outcome(&self, outcome: &Outcome) -> Result<(), StoreError> {
        let limit = self.options.max_outcome_bytes;
        if outcome.body.len() > limit {
            return Err(StoreError::OutcomeTooLarge {
                size: outcome.body.len(),
                limit,
            });
        }
        Ok(())
    }

    /// One fenced UPDATE: `Held` if it matched a row.
    async fn fenced(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Fence, StoreError> {
        let client = self.client(op).await?;
        let stmt = self.prepare(&client, op, sql).await?;
        let mut attempt = 0;
        let n = loop {
            match client.execute(&stmt, params).await {
                Ok(n) => break n,
                // A REPEATABLE READ / SERIALIZABLE session default turns a concurrent update of
                // the row into a serialization failure; the statement was its own transaction
                // and changed nothing, so run it again (it then sees the committed row).
                Err(e) if is_serialization_failure(&e) && attempt < CLAIM_RACE_RETRIES => {
                    attempt += 1
                }
                Err(e) => return Err(self.db(op, e)),
            }
        };
        Ok(if n > 0 { Fence::Held } else { Fence::Lost })
    }
}

/// A vanished server (or a dead network path) is noticed within about a minute rather than after
/// the 2 h TCP default; a URL that sets `keepalives_idle` (or turns keepalives off) keeps its own
/// settings.
fn shorten_keepalives(pg: &mut tokio_postgres::Config) {
    if pg.get_keepalives() && pg.get_keepalives_idle() == DEFAULT_KEEPALIVES_IDLE {
        pg.keepalives_idle(KEEPALIVES_IDLE);
        if pg.get_keepalives_interval().is_none() {
            pg.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if pg.get_keepalives_retries().is_none() {
            pg.keepalives_retries(KEEPALIVES_RETRIES);
        }
    }
}

/// Whether `e` is a serialization failure (SQLSTATE 40001), which only REPEATABLE READ and
/// SERIALIZABLE transactions raise.
fn is_serialization_failure(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Owned claim parameters (the statement takes `$1..$5`).
pub(crate) struct ClaimParams<'a> {
    scope: &'a str,
    key: &'a str,
    fingerprint: &'a [u8],
    lease_us: i64,
    retention_us: i64,
}

impl ClaimParams<'_> {
    pub(crate) fn as_params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.scope,
            &self.key,
            &self.fingerprint,
            &self.lease_us,
            &self.retention_us,
        ]
    }
}

pub(crate) fn claim_params<'a>(req: &'a ClaimRequest<'_>) -> ClaimParams<'a> {
    ClaimParams {
        scope: &req.key.scope,
        key: req.key.key.as_str(),
        fingerprint: &req.fingerprint.0,
        lease_us: row::to_micros(req.lease),
        retention_us: row::to_micros(req.retention),
    }
}

/// Reads the claim statement's answer; `None` when it raced with a concurrent claim.
pub(crate) fn interpret_claim(
    rows: Vec<tokio_postgres::Row>,
    req: &ClaimRequest<'_>,
) -> Result<Option<Claim>, StoreError> {
    let key = req.key;
    let Some(row) = rows.first() else {
        // Inserted by a claim that committed after our snapshot: not visible to the read branch.
        return Ok(None);
    };
    if row::col::<bool>(row, 0, key)? {
        return Ok(Some(Claim::Acquired {
            token: row::token(row::col(row, 1, key)?, key)?,
            attempt: row::attempt(row::col(row, 3, key)?, key)?,
        }));
    }
    let stored = row::stored(row, 1, key)?;
    if stored.expires_us <= 0 || stored.state == RecordState::Released {
        // Claimable, yet the upsert did not take it: changed concurrently.
        return Ok(None);
    }
    if stored.fingerprint != *req.fingerprint {
        return Ok(Some(Claim::Conflict {
            stored: stored.fingerprint,
        }));
    }
    Ok(match stored.state {
        RecordState::Completed { outcome, .. } => Some(Claim::Completed { outcome }),
        RecordState::InProgress { lease_remaining } if !lease_remaining.is_zero() => {
            Some(Claim::InFlight {
                retry_after: lease_remaining,
            })
        }
        RecordState::InProgress { .. } | RecordState::Released => None,
    })
}

fn state_filter(filter: StateFilter) -> Option<&'static str> {
    match filter {
        StateFilter::All => None,
        StateFilter::InProgress => Some("in_progress"),
        StateFilter::Completed => Some("completed"),
        StateFilter::Released => Some("released"),
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let client = self.client("claim").await?;
        let stmt = self.prepare(&client, "claim", &self.sql.claim).await?;
        for _ in 0..CLAIM_RACE_RETRIES {
            if let Some(claim) = self.claim_once(&client, &stmt, req).await? {
                return Ok(claim);
            }
        }
        Err(StoreError::unavailable(
            "claim",
            format!("record {} kept changing under concurrent claims", req.key),
        ))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: Token,
        outcome: &Outcome,
        retention: Duration,
    ) -> Result<Fence, StoreError> {
        self.check_outcome(outcome)?;
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let status = outcome.status.as_str();
        let body: &[u8] = &outcome.body;
        let retention = row::to_micros(retention);
        self.fenced(
            "complete",
            &self.sql.complete,
            &[
                &key.scope,
                &key.key.as_str(),
                &token,
                &status,
                &body,
                &retention,
            ],
        )
        .await
    }

    async fn release(
        &self,
        key: &RecordKey,
        token: Token,
        mode: Release,
    ) -> Result<Fence, StoreError> {
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let reset = mode == Release::Reset;
        self.fenced(
            "release",
            &self.sql.release,
            &[&key.scope, &key.key.as_str(), &token, &reset],
        )
        .await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: Token,
        lease: Duration,
    ) -> Result<Fence, StoreError> {
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let lease = row::to_micros(lease);
        self.fenced(
            "renew",
            &self.sql.renew,
            &[&key.scope, &key.key.as_str(), &token, &lease],
        )
        .await
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        let client = self.client("get").await?;
        let stmt = self.prepare(&client, "get", &self.sql.get).await?;
        let row = client
            .query_opt(&stmt, &[&key.scope, &key.key.as_str()])
            .await
            .map_err(|e| self.db("get", e))?;
        row.map(|row| row::stored(&row, 0, key).map(|s| s.into_record(key.clone())))
            .transpose()
    }

    async fn forget(&self, key: &RecordKey) -> Result<bool, StoreError> {
        let client = self.client("forget").await?;
        let stmt = self.prepare(&client, "forget", &self.sql.forget).await?;
        let row = client
            .query_opt(&stmt, &[&key.scope, &key.key.as_str()])
            .await
            .map_err(|e| self.db("forget", e))?;
        Ok(match row {
            Some(row) => row.try_get::<_, bool>(0).unwrap_or(true),
            None => false,
        })
    }

    async fn scan(
        &self,
        scope: &str,
        filter: StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<ScanPage, StoreError> {
        const OP: &str = "scan";
        let count = count.clamp(1, 10_000);
        let client = self.client(OP).await?;
        let stmt = self.prepare(&client, OP, &self.sql.scan).await?;
        let after = cursor.unwrap_or_default();
        let limit = count as i64 + 1;
        let state = state_filter(filter);
        let rows = client
            .query(&stmt, &[&scope, &after, &limit, &state])
            .await
            .map_err(|e| self.db(OP, e))?;
        let more = rows.len() > count;
        let mut records = Vec::with_capacity(rows.len().min(count));
        for row in rows.iter().take(count) {
            let raw: &str = row.try_get(0).map_err(|e| StoreError::Corrupt {
                key: format!("{scope}/?"),
                detail: e.to_string(),
            })?;
            let key =
                crate::key::IdempotencyKey::from_stored(raw).map_err(|e| StoreError::Corrupt {
                    key: format!("{scope}/{raw}"),
                    detail: e.to_string(),
                })?;
            let key = RecordKey::new(scope, key);
            records.push(row::stored(row, 1, &key)?.into_record(key));
        }
        let next = if more {
            records.last().map(|r| r.key.key.as_str().to_string())
        } else {
            None
        };
        Ok(ScanPage { records, next })
    }

    async fn counts(&self, scope: &str) -> Result<Option<StateCounts>, StoreError> {
        const OP: &str = "counts";
        let client = self.client(OP).await?;
        let stmt = self.prepare(&client, OP, &self.sql.counts).await?;
        let row = client
            .query_one(&stmt, &[&scope])
            .await
            .map_err(|e| self.db(OP, e))?;
        let corrupt = |detail: String| StoreError::Corrupt {
            key: format!("{scope}/*"),
            detail,
        };
        let count = |i: usize| -> Result<u64, StoreError> {
            let n: i64 = row.try_get(i).map_err(|e| corrupt(e.to_string()))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let mut counts = StateCounts {
            in_progress: count(0)?,
            in_progress_expired: count(1)?,
            completed: count(2)?,
            completed_failed: count(3)?,
            released: count(4)?,
            closest_lease: None,
        };
        let key: Option<String> = row.try_get(5).map_err(|e| corrupt(e.to_string()))?;
        let lease_us: Option<i64> = row.try_get(6).map_err(|e| corrupt(e.to_string()))?;
        if let (Some(key), Some(us)) = (key, lease_us) {
            let key = crate::key::IdempotencyKey::from_stored(&key)
                .map_err(|e| corrupt(format!("{key}: {e}")))?;
            let left = Duration::from_micros(u64::try_from(us).unwrap_or(0));
            counts.closest_lease = Some((key, left));
        }
        Ok(Some(counts))
    }
}

impl PostgresStore {
    /// Opens the store named by a URL as [`connect`](super::connect) does: the extra query
    /// parameters `idemq_table=schema.name` and `idemq_migrate=true` are understood; without
    /// `idemq_migrate=true` the table must exist (else [`StoreError::InvalidConfig`]).
    pub async fn from_url(url: &str) -> Result<Self, StoreError> {
        let (url, table, migrate) = split_url_options(url)?;
        let mut options = PostgresOptions::default();
        if let Some(table) = table {
            options = options.with_table(&table)?;
        }
        let store = PostgresStore::connect_with(&url, options).await?;
        if migrate {
            store.migrate().await?;
        } else {
            store.check_table().await?;
        }
        Ok(store)
    }
}

/// Opens the store named by `url` (used by [`connect`](super::connect)).
pub(crate) async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(PostgresStore::from_url(url).await?))
}

/// Removes idemq's own query parameters (tokio-postgres rejects unknown ones).
fn split_url_options(url: &str) -> Result<(String, Option<String>, bool), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None, false));
    };
    let (mut table, mut migrate, mut rest) = (None, false, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("idemq_table", v)) => table = Some(v.to_string()),
            Some(("idemq_migrate", v)) => {
                migrate = match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(StoreError::InvalidConfig(format!(
                            "idemq_migrate must be true or false, not {other:?}"
                        )))
                    }
                }
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, table, migrate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_send_keepalives_after_30_s_unless_the_url_says_otherwise() {
        let mut pg: tokio_postgres::Config = "postgres://u@h/db".parse().unwrap();
        shorten_keepalives(&mut pg);
        assert_eq!(pg.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        let mut own: tokio_postgres::Config =
            "postgres://u@h/db?keepalives_idle=600".parse().unwrap();
        shorten_keepalives(&mut own);
        assert_eq!(own.get_keepalives_idle(), Duration::from_secs(600));
        let mut off: tokio_postgres::Config = "postgres://u@h/db?keepalives=0".parse().unwrap();
        shorten_keepalives(&mut off);
        assert!(!off.get_keepalives());
        assert_eq!(off.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
    }

    #[test]
    fn url_options_are_split_off() {
        let (url, table, migrate) = split_url_options(
            "postgres://u@h/db?connect_timeout=3&idemq_table=a.b&idemq_migrate=true",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?connect_timeout=3");
        assert_eq!(table.as_deref(), Some("a.b"));
        assert!(migrate);
        let (url, table, migrate) = split_url_options("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), table, migrate),
            ("postgres://u@h/db", None, false)
        );
        assert!(split_url_options("postgres://h/db?idemq_migrate=yes").is_err());
    }
}
