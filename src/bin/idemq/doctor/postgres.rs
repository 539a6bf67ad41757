//! Postgres checks: server version, the record table, its format, its primary key and expiry
//! index, and a read through the store's own statements.

use super::Check;
use crate::keys::store_failure;
use crate::Failure;
use idemq::store::postgres::{PostgresOptions, PostgresStore};
use idemq::store::{RecordKey, StateFilter, Store};
use idemq::IdempotencyKey;

/// `ON CONFLICT … DO UPDATE` (9.5) and `count(*) FILTER` (9.4) are the newest features the
/// statements use.
const MIN_VERSION_NUM: i32 = 90500;

/// Takes idemq's own query parameters out of the URL (tokio-postgres rejects unknown ones):
/// `idemq_table` names the table; `idemq_migrate` is ignored (the doctor never writes).
fn split_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut table = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("idemq_table", v)) => {
                table = Some(v.to_string());
                false
            }
            Some(("idemq_migrate", _)) => false,
            _ => !pair.is_empty(),
        })
        .collect();
    if rest.is_empty() {
        (base.to_string(), table)
    } else {
        (format!("{base}?{}", rest.join("&")), table)
    }
}

/// Runs every Postgres check.
pub async fn checks(url: &str) -> Result<Vec<Check>, Failure> {
    let (url, table) = split_url(url);
    let mut options = PostgresOptions::default().with_pool_size(1);
    if let Some(t) = &table {
        options = options.with_table(t).map_err(store_failure)?;
    }
    // `connect_with` only connects; it does not require the table (a missing table is a check).
    let store = PostgresStore::connect_with(&url, options)
        .await
        .map_err(store_failure)?;
    let db = |e: tokio_postgres::Error| Failure::Unreachable(format!("postgres: {e}"));
    let client = store
        .pool()
        .get()
        .await
        .map_err(|e| Failure::Unreachable(format!("postgres: {e}")))?;
    let name = store.table().to_string();
    let quoted = store.table().sql();
    let mut checks = Vec::new();

    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(db)?;
    let (num, shown): (i32, String) = (row.get(0), row.get(1));
    checks.push(if num >= MIN_VERSION_NUM {
        Check::pass(
            "version",
            format!("PostgreSQL {shown} (idemq needs >= 9.5)"),
        )
    } else {
        Check::fail(
            "version",
            format!("PostgreSQL {shown}: idemq's statements need 9.5 or later (ON CONFLICT)"),
            "upgrade PostgreSQL",
        )
    });

    let migrate_fix = format!(
        "run PostgresStore::migrate(), open the store once with ?idemq_migrate=true, or apply \
         migrations/0001_idemq.sql (for table {name}: PostgresStore::migration_sql())"
    );
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&quoted])
        .await
        .map_err(db)?
        .get(0);
    if exists.is_none() {
        checks.push(Check::fail(
            "table",
            format!("table {name} does not exist"),
            migrate_fix,
        ));
        return Ok(checks);
    }
    checks.push(Check::pass("table", format!("table {name} exists")));

    // The migration's table comment names the record format ("…, format 1").
    let expected = expected_comment(store.migration_sql());
    let comment: Option<String> = client
        .query_one(
            "SELECT obj_description(to_regclass($1), 'pg_class')",
            &[&quoted],
        )
        .await
        .map_err(db)?
        .get(0);
    checks.push(match (&expected, &comment) {
        (Some(want), Some(got)) if want == got => {
            Check::pass("format", format!("table comment {got:?}"))
        }
        (Some(want), got) => Check::fail(
            "format",
            format!(
                "table comment {}, expected {want:?}: the table was not created by this \
                 version's migration, or its comment was changed",
                got.as_deref()
                    .map_or("missing".to_string(), |g| format!("{g:?}"))
            ),
            format!(
                "if the columns match migrations/0001_idemq.sql, set the comment: \
                 COMMENT ON TABLE {quoted} IS '{want}'; otherwise {migrate_fix}"
            ),
        ),
        (None, _) => Check::warn(
            "format",
            "this idemq build's migration sets no table comment to compare with",
            "none needed",
        ),
    });

    let indexes: Vec<(bool, String)> = client
        .query(
            "SELECT i.indisprimary, pg_get_indexdef(i.indexrelid)
             FROM pg_index i WHERE i.indrelid = to_regclass($1)",
            &[&quoted],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let primary = indexes
        .iter()
        .find(|(p, _)| *p)
        .map(|(_, def)| def.as_str());
    checks.push(match primary {
        Some(def) if def.ends_with("(scope, idempotency_key)") => {
            Check::pass("primary-key", "primary key (scope, idempotency_key)")
        }
        other => Check::fail(
            "primary-key",
            format!(
                "primary key is {}; claims rely on ON CONFLICT (scope, idempotency_key)",
                other.unwrap_or("missing")
            ),
            format!("ALTER TABLE {quoted} ADD PRIMARY KEY (scope, idempotency_key)"),
        ),
    });
    let expiry = indexes.iter().any(|(_, def)| def.ends_with("(expires_at)"));
    checks.push(if expiry {
        Check::pass("expiry-index", "index on (expires_at) present")
    } else {
        Check::fail(
            "expiry-index",
            "no index on (expires_at): purge_expired() scans the whole table",
            format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {quoted} (expires_at)",
                store.table().index_sql()
            ),
        )
    });

    // The store's own statements: a missing or mistyped column fails here. (The pool has one
    // connection: give it back first.)
    drop(client);
    let probe = RecordKey::new(
        "idemq-doctor",
        IdempotencyKey::new("doctor-probe").map_err(|e| Failure::Usage(e.to_string()))?,
    );
    let read = match store.get(&probe).await {
        Ok(_) => store
            .scan("idemq-doctor", StateFilter::All, None, 1)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    checks.push(match read {
        Ok(()) => Check::pass("statements", "idemq's read statements run on the table"),
        Err(e) => Check::fail(
            "statements",
            format!("idemq's read statements fail: {e}"),
            format!(
                "if the error names a column, the table's columns differ from \
                 migrations/0001_idemq.sql: {migrate_fix}"
            ),
        ),
    });
    Ok(checks)
}

/// The text of the migration's `COMMENT ON TABLE … IS '…'`.
fn expected_comment(migration: &str) -> Option<String> {
    let line = migration
        .lines()
        .find(|l| l.trim_start().starts_with("COMMENT ON TABLE"))?;
    let start = line.find(" IS '")? + 5;
    let end = line.rfind('\'')?;
    line.get(start..end).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_taken_out() {
        assert_eq!(
            split_url("postgres://h/db?idemq_table=a.b&connect_timeout=3&idemq_migrate=true"),
            (
                "postgres://h/db?connect_timeout=3".to_string(),
                Some("a.b".to_string())
            )
        );
        assert_eq!(
            expected_comment(
                "x;\nCOMMENT ON TABLE \"t\" IS 'idemq idempotency records, format 1';"
            ),
            Some("idemq idempotency records, format 1".to_string())
        );
    }
}
