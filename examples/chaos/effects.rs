//! Reading what the handlers did: the consumers append one JSON line per handler execution to
//! the effects file (`--effects`), and in the transactional scenarios also insert one row per
//! committed execution into a Postgres table.

use std::collections::BTreeMap;
use std::path::Path;

/// One handler execution from the effects file.
#[derive(Clone, Debug)]
pub struct Run {
    /// The idempotency key.
    pub key: String,
    /// The consumer process that ran it.
    pub pid: u32,
}

/// Every execution recorded so far, in file order (lines that do not parse, e.g. one cut short
/// by a SIGKILL, are skipped).
pub fn read_runs(path: &Path) -> Vec<Run> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Run {
                key: v.get("key")?.as_str()?.to_owned(),
                pid: u32::try_from(v.get("pid")?.as_u64()?).ok()?,
            })
        })
        .collect()
}

/// Executions per key, each with the pids in order.
pub fn by_key(runs: &[Run]) -> BTreeMap<String, Vec<u32>> {
    let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in runs {
        m.entry(r.key.clone()).or_default().push(r.pid);
    }
    m
}

/// Rows per key in a transactional effects table (absent table: none).
pub async fn committed_effects(
    pg: &tokio_postgres::Client,
    table: &str,
) -> Result<BTreeMap<String, i64>, tokio_postgres::Error> {
    let exists: bool = pg
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = pg
        .query(
            &format!("SELECT idempotency_key, count(*) FROM {table} GROUP BY idempotency_key"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
