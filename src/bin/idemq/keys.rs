//! `key get`, `key forget`, `keys list`, `stats`.

use crate::args::{ForgetArgs, GetArgs, ListArgs, Output, ScopeArgs, StateArg};
use crate::{output, Failure};
use idemq::store::{Record, RecordKey, RecordState, StateCounts, StateFilter, Store, StoreError};
use idemq::IdempotencyKey;
use serde_json::json;
use std::sync::Arc;

/// Largest page asked of the store per scan call.
const PAGE: usize = 500;

pub(crate) async fn open(at: &ScopeArgs) -> Result<Arc<dyn Store>, Failure> {
    let scheme = at.store.split("://").next().unwrap_or_default();
    tracing::debug!(scheme, "opening the store");
    idemq::store::connect(&at.store)
        .await
        .map_err(store_failure)
}

pub(crate) fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::InvalidConfig(msg) => Failure::Usage(msg),
        other => Failure::Unreachable(other.to_string()),
    }
}

fn record_key(at: &ScopeArgs, key: &str) -> Result<RecordKey, Failure> {
    let key = IdempotencyKey::new(key).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(RecordKey::new(at.scope.clone(), key))
}

/// `idemq key get`
pub async fn get(a: &GetArgs, out: Output) -> Result<(), Failure> {
    let store = open(&a.at).await?;
    let key = record_key(&a.at, &a.key)?;
    match store.get(&key).await.map_err(store_failure)? {
        Some(r) => {
            output::record(out, &r, a.raw);
            Ok(())
        }
        None => Err(Failure::NotFound(format!("no record for key {key}"))),
    }
}

/// `idemq key forget`
pub async fn forget(a: &ForgetArgs, out: Output) -> Result<(), Failure> {
    let store = open(&a.at).await?;
    let key = record_key(&a.at, &a.key)?;
    let Some(r) = store.get(&key).await.map_err(store_failure)? else {
        return Err(Failure::NotFound(format!("no record for key {key}")));
    };
    // The store's `forget` deletes whatever it finds, so the live-lease check is made here: the
    // record exists, so this is a refusal, not a "not found".
    if let RecordState::InProgress { lease_remaining } = r.state {
        if !a.force && !lease_remaining.is_zero() {
            return Err(Failure::Refused(format!(
                "{key} is in progress (lease {lease_remaining:?} left): a handler may be running; use --force to delete anyway"
            )));
        }
    }
    let deleted = store.forget(&key).await.map_err(store_failure)?;
    output::value(
        out,
        &json!({ "key": a.key, "scope": a.at.scope, "forgotten": deleted, "state": r.state.name() }),
        || format!("forgot {key} (was {})", r.state.name()),
    );
    Ok(())
}

fn filter(s: Option<StateArg>) -> StateFilter {
    match s {
        None => StateFilter::All,
        Some(StateArg::InProgress) => StateFilter::InProgress,
        Some(StateArg::Completed) => StateFilter::Completed,
        Some(StateArg::Released) => StateFilter::Released,
    }
}

/// Where a listing resumes. The store's scan pages may hold more records than asked for (Redis
/// SCAN), so a listing that stops inside a page resumes by reading that page again and skipping
/// the keys it already printed (pages are sorted by key here).
#[derive(Debug, Default, PartialEq, Eq)]
struct Resume {
    /// The store cursor of the page to read (`None`: the first page).
    page: Option<String>,
    /// Skip the records of that page up to and including this key.
    after: Option<String>,
}

impl Resume {
    /// `c:<store cursor>` at a page boundary; `k:<hex of the last key printed>:<store cursor of
    /// its page>` inside a page (hex: keys may contain any character, cursors may too).
    fn encode(&self) -> String {
        let page = self.page.as_deref().unwrap_or_default();
        match &self.after {
            None => format!("c:{page}"),
            Some(key) => {
                let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
                format!("k:{hex}:{page}")
            }
        }
    }

    fn decode(s: &str) -> Result<Self, Failure> {
        let bad = || {
            Failure::Usage(format!(
                "invalid --cursor {s:?}: pass a next_cursor printed by keys list"
            ))
        };
        let some = |p: &str| (!p.is_empty()).then(|| p.to_string());
        if let Some(page) = s.strip_prefix("c:") {
            return Ok(Self {
                page: some(page),
                after: None,
            });
        }
        let (hex, page) = s
            .strip_prefix("k:")
            .and_then(|r| r.split_once(':'))
            .ok_or_else(bad)?;
        if hex.is_empty() || hex.len() % 2 != 0 {
            return Err(bad());
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        let key = String::from_utf8(bytes).map_err(|_| bad())?;
        Ok(Self {
            page: some(page),
            after: Some(key),
        })
    }
}

/// `idemq keys list`
pub async fn list(a: &ListArgs, out: Output) -> Result<(), Failure> {
    let mut at = match &a.cursor {
        Some(c) => Resume::decode(c)?,
        None => Resume::default(),
    };
    let store = open(&a.at).await?;
    let limit = a.limit.max(1);
    let mut records: Vec<Record> = Vec::new();
    // `None` once the scan reached the end of the scope.
    let mut resume = Some(at.page.clone());
    while records.len() < limit {
        let Some(page_cursor) = resume.clone() else {
            break;
        };
        let want = limit - records.len();
        let page = store
            .scan(
                &a.at.scope,
                filter(a.state),
                page_cursor.clone(),
                PAGE.min(want),
            )
            .await
            .map_err(store_failure)?;
        let mut got = page.records;
        got.sort_by(|x, y| x.key.key.as_str().cmp(y.key.key.as_str()));
        if let Some(after) = at.after.take() {
            got.retain(|r| r.key.key.as_str() > after.as_str());
        }
        if got.len() > want {
            // Stop inside this page: the next listing reads it again and skips what we printed.
            got.truncate(want);
            let last = got.last().map(|r| r.key.key.as_str().to_string());
            records.extend(got);
            let next = Resume {
                page: page_cursor,
                after: last,
            };
            return print_list(a, out, &records, Some(next.encode()));
        }
        records.extend(got);
        resume = page.next.map(Some);
    }
    let next = resume.map(|page| Resume { page, after: None }.encode());
    print_list(a, out, &records, next)
}

fn print_list(
    a: &ListArgs,
    out: Output,
    records: &[Record],
    next: Option<String>,
) -> Result<(), Failure> {
    match out {
        Output::Json => {
            let items: Vec<_> = records
                .iter()
                .map(|r| output::record_json(r, false))
                .collect();
            println!(
                "{}",
                json!({ "scope": a.at.scope, "records": items, "next_cursor": next })
            );
        }
        Output::Text => {
            println!(
                "{:<40} {:<12} {:>6} {:>8}",
                "KEY", "STATE", "TOKEN", "ATTEMPT"
            );
            for r in records {
                println!(
                    "{:<40} {:<12} {:>6} {:>8}",
                    r.key.key.as_str(),
                    r.state.name(),
                    r.token.0,
                    r.attempt
                );
            }
            match next {
                Some(c) => println!("{} record(s); more: --cursor {c}", records.len()),
                None => println!("{} record(s)", records.len()),
            }
        }
    }
    Ok(())
}

/// `idemq stats`
pub async fn stats(a: &ScopeArgs, out: Output) -> Result<(), Failure> {
    let store = open(a).await?;
    let (counts, counted_by) = match store.counts(&a.scope).await.map_err(store_failure)? {
        Some(c) => (c, "store"),
        None => (scan_counts(store.as_ref(), &a.scope).await?, "scan"),
    };
    let c = &counts;
    let v = json!({
        "scope": a.scope,
        "counted_by": counted_by,
        "in_progress": c.in_progress,
        "in_progress_lease_expired": c.in_progress_expired,
        "completed": c.completed,
        "completed_failed": c.completed_failed,
        "released": c.released,
        "oldest_in_progress": c.closest_lease.as_ref().map(|(k, d)| json!({"key": k.as_str(), "lease_remaining_ms": d.as_millis() as u64})),
    });
    output::value(out, &v, || {
        let mut s = format!(
            "scope {}\n  in_progress  {} ({} with expired lease)\n  completed    {} ({} stored failures)\n  released     {}",
            a.scope, c.in_progress, c.in_progress_expired, c.completed, c.completed_failed, c.released
        );
        if let Some((k, d)) = &c.closest_lease {
            s.push_str(&format!("\n  oldest in-progress lease: {k} ({d:?} left)"));
        }
        if counted_by == "scan" {
            s.push_str("\n  (counted by scanning every key of the scope: this store cannot count by itself)");
        }
        s
    });
    Ok(())
}

/// Counts by reading every record of the scope (stores without [`Store::counts`], i.e. Redis).
async fn scan_counts(store: &dyn Store, scope: &str) -> Result<StateCounts, Failure> {
    let mut counts = StateCounts::default();
    let mut cursor = None;
    loop {
        let page = store
            .scan(scope, StateFilter::All, cursor, PAGE)
            .await
            .map_err(store_failure)?;
        for r in &page.records {
            counts.add(r);
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for r in [
            Resume::default(),
            Resume {
                page: Some("3-17".into()),
                after: None,
            },
            Resume {
                page: None,
                after: Some("a:b~ü".into()),
            },
            Resume {
                page: Some("k:x".into()),
                after: Some("z".into()),
            },
        ] {
            assert_eq!(Resume::decode(&r.encode()).unwrap(), r);
        }
        assert!(Resume::decode("nonsense").is_err());
        assert!(Resume::decode("k:zz:").is_err());
    }
}
