//! The `idemq` operator commands on a Postgres store: `stats` counts in SQL (`counted_by:
//! store`), `keys list` pages with a resumable cursor.
#![cfg(all(feature = "cli", feature = "postgres"))]

mod support;

use assert_cmd::Command;
use idemq::store::{Claim, ClaimRequest, RecordKey, Release, Store};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use serde_json::Value;
use std::time::Duration;
use support::postgres::shared_store;
use support::services::{postgres_url, unique};

const RETENTION: Duration = Duration::from_secs(600);

fn run(args: &[&str]) -> Value {
    let out = Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("run idemq");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn store_url() -> String {
    let base = postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}idemq_table={}", support::postgres::SHARED_TABLE)
}

#[tokio::test]
async fn stats_count_in_sql_and_keys_list_resumes_from_its_cursor() {
    let Some(store) = shared_store().await else {
        return;
    };
    let scope = unique("pcli");
    let fp = Fingerprint::of_bytes(b"payload");
    // k00..k11: every third stays in progress (k00 with a short lease, so it is the closest),
    // every third else completes (half of those as failures), the rest are released.
    for i in 0..12u32 {
        let k = RecordKey::new(
            scope.clone(),
            IdempotencyKey::new(format!("k{i:02}")).expect("key"),
        );
        let lease = Duration::from_secs(if i == 0 { 30 } else { 300 });
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(&k, &fp, lease, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("fresh key not acquired")
        };
        match i % 3 {
            0 => {}
            1 => {
                let outcome = if i % 2 == 0 {
                    Outcome::failed("{}")
                } else {
                    Outcome::succeeded("{}")
                };
                store
                    .complete(&k, token, &outcome, RETENTION)
                    .await
                    .expect("complete");
            }
            _ => {
                store
                    .release(&k, token, Release::Retry)
                    .await
                    .expect("release");
            }
        }
    }
    let url = store_url();
    let stats = run(&["stats", "--scope", &scope, "--store", &url]);
    assert_eq!(stats["counted_by"], "store", "{stats}");
    assert_eq!(stats["in_progress"], 4, "{stats}");
    assert_eq!(stats["in_progress_lease_expired"], 0, "{stats}");
    assert_eq!(stats["completed"], 4, "{stats}");
    assert_eq!(stats["completed_failed"], 2, "{stats}");
    assert_eq!(stats["released"], 4, "{stats}");
    assert_eq!(stats["oldest_in_progress"]["key"], "k00", "{stats}");
    let left = stats["oldest_in_progress"]["lease_remaining_ms"]
        .as_u64()
        .expect("lease");
    assert!(left > 0 && left <= 30_000, "{stats}");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut calls = 0;
    loop {
        let mut args = vec![
            "keys", "list", "--scope", &scope, "--store", &url, "--limit", "5",
        ];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let page = run(&args);
        calls += 1;
        let keys: Vec<String> = page["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["key"].as_str().expect("key").to_string())
            .collect();
        assert!(keys.len() <= 5, "{page}");
        seen.extend(keys);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(calls < 10, "cursor does not advance");
    }
    let expected: Vec<String> = (0..12).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected, "in key order, every key exactly once");
    assert_eq!(calls, 3);
}
