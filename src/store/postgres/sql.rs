//! The SQL of every store operation, rendered once per table name.
//!
//! Times come from the database clock (`statement_timestamp()`: the start of the current statement,
//! also correct inside a longer transaction), so consumers on hosts with skewed clocks agree on
//! leases. Durations travel as microseconds (`int8`).

use super::table::TableName;

/// The migration, written for the default table name.
pub(crate) const MIGRATION_0001: &str = include_str!("../../../migrations/0001_idemq.sql");

/// The database clock in ms since the epoch: the floor of every new token, so tokens keep growing
/// across a record's expiry and `purge_expired` (see the module docs of `postgres`).
const CLOCK_MS: &str = "(extract(epoch FROM statement_timestamp()) * 1000)::int8";

/// Columns every reading statement returns, in the order [`super::row`] parses them.
const READ_COLUMNS: &str = "token, fingerprint, attempt, state, \
    (extract(epoch FROM (lease_until - statement_timestamp())) * 1000000)::int8 AS lease_us, \
    outcome_status, outcome, \
    (extract(epoch FROM completed_at) * 1000000)::int8 AS completed_at_us, \
    (extract(epoch FROM (expires_at - statement_timestamp())) * 1000000)::int8 AS expires_us";

/// Rendered statements for one table.
#[derive(Debug)]
pub(crate) struct Sql {
    pub migrate: String,
    pub claim: String,
    pub complete: String,
    pub release: String,
    pub renew: String,
    pub get: String,
    pub forget: String,
    pub scan: String,
    pub counts: String,
    pub purge: String,
    pub exists: String,
}

impl Sql {
    pub(crate) fn new(table: &TableName) -> Self {
        let t = table.sql();
        Self {
            migrate: render_migration(table),
            // One statement, one round trip:
            // - `cur` reads the record without locking. A completed record is final while it is
            //   retained, so for replays and conflicts on completed keys (the duplicate hot path)
            //   nothing else runs: no row lock, no WAL write.
            // - otherwise the upsert acquires an absent, expired, released or lease-expired record
            //   (taking its row lock; it waits for a transaction that holds the lock).
            // - if neither acquired, the last branch returns the record as `cur` read it. A
            //   record committed by a concurrent claim after the statement's snapshot can make
            //   that come back empty or claimable: the caller then runs the statement again
            //   (with a fresh snapshot).
            claim: format!(
                "WITH cur AS (
                    SELECT {READ_COLUMNS} FROM {t} WHERE scope = $1 AND idempotency_key = $2
                ), up AS (
                    INSERT INTO {t} AS r (scope, idempotency_key, token, fingerprint, attempt, state,
                                          lease_until, expires_at)
                    SELECT $1::text, $2::text, {CLOCK_MS}, $3::bytea, 1, 'in_progress',
                           statement_timestamp() + $4::int8 * interval '1 microsecond',
                           statement_timestamp() + greatest($4::int8, $5::int8) * interval '1 microsecond'
                    WHERE NOT EXISTS (SELECT 1 FROM cur WHERE state = 'completed' AND expires_us > 0)
                    ON CONFLICT (scope, idempotency_key) DO UPDATE SET
                        token = greatest(r.token + 1, {CLOCK_MS}),
                        fingerprint = excluded.fingerprint,
                        attempt = CASE WHEN r.expires_at <= statement_timestamp() THEN 1
                                       ELSE r.attempt + 1 END,
                        state = 'in_progress',
                        lease_until = excluded.lease_until,
                        expires_at = excluded.expires_at,
                        outcome_status = NULL, outcome = NULL, completed_at = NULL
                    WHERE r.expires_at <= statement_timestamp()
                       OR r.state = 'released'
                       OR (r.state = 'in_progress' AND r.lease_until <= statement_timestamp()
                           AND r.fingerprint = excluded.fingerprint)
                    RETURNING r.token, r.attempt
                )
                SELECT true AS acquired, token, NULL::bytea AS fingerprint, attempt, NULL::text AS state,
                       NULL::int8 AS lease_us, NULL::text AS outcome_status, NULL::bytea AS outcome,
                       NULL::int8 AS completed_at_us, NULL::int8 AS expires_us
                FROM up
                UNION ALL
                SELECT false, * FROM cur WHERE NOT EXISTS (SELECT 1 FROM up)"
            ),
            // A repeated complete by the owner (after a lost reply) matches the completed row and
            // rewrites it with its own values, so the first outcome stays.
            complete: format!(
                "UPDATE {t} SET
                    state = 'completed',
                    lease_until = NULL,
                    outcome_status = CASE WHEN state = 'in_progress' THEN $4 ELSE outcome_status END,
                    outcome = CASE WHEN state = 'in_progress' THEN $5 ELSE outcome END,
                    completed_at = CASE WHEN state = 'in_progress' THEN statement_timestamp()
                                        ELSE completed_at END,
                    expires_at = CASE WHEN state = 'in_progress'
                                      THEN statement_timestamp() + $6::int8 * interval '1 microsecond'
                                      ELSE expires_at END
                 WHERE scope = $1 AND idempotency_key = $2 AND token = $3
                   AND state IN ('in_progress', 'completed') AND expires_at > statement_timestamp()"
            ),
            release: format!(
                "UPDATE {t} SET state = 'released', lease_until = NULL,
                    attempt = CASE WHEN $4 THEN 0 ELSE attempt END
                 WHERE scope = $1 AND idempotency_key = $2 AND token = $3
                   AND state IN ('in_progress', 'released') AND expires_at > statement_timestamp()"
            ),
            renew: format!(
                "UPDATE {t} SET
                    lease_until = statement_timestamp() + $4::int8 * interval '1 microsecond',
                    expires_at = greatest(expires_at,
                                          statement_timestamp() + $4::int8 * interval '1 microsecond')
                 WHERE scope = $1 AND idempotency_key = $2 AND token = $3
                   AND state = 'in_progress' AND expires_at > statement_timestamp()"
            ),
            get: format!(
                "SELECT {READ_COLUMNS} FROM {t}
                 WHERE scope = $1 AND idempotency_key = $2 AND expires_at > statement_timestamp()"
            ),
            forget: format!(
                "DELETE FROM {t} WHERE scope = $1 AND idempotency_key = $2
                 RETURNING expires_at > statement_timestamp()"
            ),
            // Keyset pagination on the primary key; `$4` is NULL for every state.
            scan: format!(
                "SELECT idempotency_key, {READ_COLUMNS} FROM {t}
                 WHERE scope = $1 AND idempotency_key > $2 AND expires_at > statement_timestamp()
                   AND ($4::text IS NULL OR state = $4)
                 ORDER BY idempotency_key
                 LIMIT $3"
            ),
            // One pass over the scope's live rows (a range of the primary key): counts by state
            // and the in-progress row whose lease ends first.
            counts: format!(
                "WITH live AS (
                    SELECT idempotency_key, state, lease_until, outcome_status FROM {t}
                    WHERE scope = $1 AND expires_at > statement_timestamp()
                 ), closest AS (
                    SELECT idempotency_key,
                           greatest(0, (extract(epoch FROM (lease_until - statement_timestamp()))
                                        * 1000000)::int8) AS lease_us
                    FROM live WHERE state = 'in_progress' ORDER BY lease_until LIMIT 1
                 )
                 SELECT count(*) FILTER (WHERE state = 'in_progress'),
                        count(*) FILTER (WHERE state = 'in_progress'
                                           AND lease_until <= statement_timestamp()),
                        count(*) FILTER (WHERE state = 'completed'),
                        count(*) FILTER (WHERE state = 'completed' AND outcome_status = 'failed'),
                        count(*) FILTER (WHERE state = 'released'),
                        (SELECT idempotency_key FROM closest),
                        (SELECT lease_us FROM closest)
                 FROM live"
            ),
            // Bounded batches keep each delete's locks and WAL burst small.
            purge: format!(
                "DELETE FROM {t} WHERE ctid IN (
                    SELECT ctid FROM {t} WHERE expires_at <= statement_timestamp() LIMIT $1
                 )"
            ),
            exists: format!("SELECT 1 FROM {t} LIMIT 0"),
        }
    }
}

/// The migration for `table`: the shipped file with the default names replaced, preceded by
/// `CREATE SCHEMA IF NOT EXISTS` for a schema-qualified name.
fn render_migration(table: &TableName) -> String {
    // The index name contains the table name, so it is swapped out for a placeholder first: once
    // quoted, a second pass over it would quote the table name inside the quoted index name again
    // (`""idemq_records"_expires_at_idx"`, a zero-length identifier, for the default table).
    const INDEX_PLACEHOLDER: &str = "\u{0}idemq-index\u{0}";
    let body = MIGRATION_0001
        .replace("idemq_records_expires_at_idx", INDEX_PLACEHOLDER)
        .replace("idemq_records", &table.sql())
        .replace(INDEX_PLACEHOLDER, &table.index_sql());
    match table.schema_sql() {
        Some(schema) => format!("CREATE SCHEMA IF NOT EXISTS {schema};\n{body}"),
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_is_rendered_for_the_default_table() {
        let sql = render_migration(&TableName::default());
        assert!(!sql.contains("\"\""), "doubly quoted identifier in {sql}");
        assert!(!sql.contains('\u{0}'), "placeholder left in {sql}");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"idemq_records\" ("));
        assert!(sql.contains(
            "INDEX IF NOT EXISTS \"idemq_records_expires_at_idx\" ON \"idemq_records\" (expires_at)"
        ));
        assert!(!sql.contains("CREATE SCHEMA"));
    }

    #[test]
    fn migration_is_rendered_for_custom_tables() {
        let t = TableName::new("billing.jobs").unwrap();
        let sql = render_migration(&t);
        assert!(!sql.contains("idemq_records"), "{sql}");
        assert!(sql.starts_with("CREATE SCHEMA IF NOT EXISTS \"billing\";"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"billing\".\"jobs\""));
        assert!(sql.contains("INDEX IF NOT EXISTS \"jobs_expires_at_idx\" ON \"billing\".\"jobs\""));
    }
}
