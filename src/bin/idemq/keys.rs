//! `key get`, `key forget`, `keys list`, `stats`.

use crate::args::{ForgetArgs, GetArgs, ListArgs, Output, ScopeArgs, StateArg};
use crate::{output, Failure};
use idemq::store::{RecordKey, RecordState, StateFilter, Store, StoreError};
use idemq::IdempotencyKey;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Largest page asked of the store per scan call.
const PAGE: usize = 500;

pub(crate) async fn open(at: &ScopeArgs) -> Result<Arc<dyn Store>, Failure> {
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
    if let RecordState::InProgress { lease_remaining } = r.state {
        if !a.force && !lease_remaining.is_zero() {
            return Err(Failure::NotFound(format!(
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

/// `idemq keys list`
pub async fn list(a: &ListArgs, out: Output) -> Result<(), Failure> {
    let store = open(&a.at).await?;
    let mut records = Vec::new();
    let mut cursor = None;
    while records.len() < a.limit {
        let page = store
            .scan(
                &a.at.scope,
                filter(a.state),
                cursor,
                PAGE.min(a.limit.max(1)),
            )
            .await
            .map_err(store_failure)?;
        records.extend(page.records);
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    records.truncate(a.limit);
    match out {
        Output::Json => {
            let items: Vec<_> = records
                .iter()
                .map(|r| output::record_json(r, false))
                .collect();
            println!("{}", json!({ "scope": a.at.scope, "records": items }));
        }
        Output::Text => {
            println!(
                "{:<40} {:<12} {:>6} {:>8}",
                "KEY", "STATE", "TOKEN", "ATTEMPT"
            );
            for r in &records {
                println!(
                    "{:<40} {:<12} {:>6} {:>8}",
                    r.key.key.as_str(),
                    r.state.name(),
                    r.token.0,
                    r.attempt
                );
            }
            println!("{} record(s)", records.len());
        }
    }
    Ok(())
}

/// `idemq stats`
pub async fn stats(a: &ScopeArgs, out: Output) -> Result<(), Failure> {
    let store = open(a).await?;
    let (mut in_progress, mut expired, mut completed, mut failed, mut released) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut closest: Option<(String, Duration)> = None;
    let mut cursor = None;
    loop {
        let page = store
            .scan(&a.scope, StateFilter::All, cursor, PAGE)
            .await
            .map_err(store_failure)?;
        for r in page.records {
            match &r.state {
                RecordState::InProgress { lease_remaining } => {
                    in_progress += 1;
                    if lease_remaining.is_zero() {
                        expired += 1;
                    }
                    if closest.as_ref().is_none_or(|(_, d)| lease_remaining < d) {
                        closest = Some((r.key.key.as_str().to_string(), *lease_remaining));
                    }
                }
                RecordState::Completed { outcome, .. } => {
                    completed += 1;
                    if outcome.status == idemq::OutcomeStatus::Failed {
                        failed += 1;
                    }
                }
                RecordState::Released => released += 1,
            }
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let v = json!({
        "scope": a.scope,
        "in_progress": in_progress,
        "in_progress_lease_expired": expired,
        "completed": completed,
        "completed_failed": failed,
        "released": released,
        "oldest_in_progress": closest.as_ref().map(|(k, d)| json!({"key": k, "lease_remaining_ms": d.as_millis() as u64})),
    });
    output::value(out, &v, || {
        let mut s = format!(
            "scope {}\n  in_progress  {in_progress} ({expired} with expired lease)\n  completed    {completed} ({failed} stored failures)\n  released     {released}",
            a.scope
        );
        if let Some((k, d)) = &closest {
            s.push_str(&format!("\n  oldest in-progress lease: {k} ({d:?} left)"));
        }
        s
    });
    Ok(())
}
