//! The `idemq` binary against a real Redis store: key get / forget, keys list, stats, output
//! formats and exit codes.
#![cfg(all(feature = "cli", feature = "redis"))]

mod support;

use assert_cmd::Command;
use idemq::store::redis::RedisStore;
use idemq::store::{Claim, ClaimRequest, Fence, RecordKey, Release, Store};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use serde_json::Value;
use std::time::Duration;
use support::services::{redis_url, require_redis, unique};

const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(600);

fn idemq() -> Command {
    Command::cargo_bin("idemq").expect("idemq binary")
}

/// A scope holding: `done` (completed, outcome {"receipt":7}), `running` (in progress),
/// `failed` (released after a failure).
async fn seeded() -> Option<(RedisStore, String)> {
    if !require_redis() {
        return None;
    }
    let store = RedisStore::connect(&redis_url()).await.expect("redis");
    let scope = unique("cli");
    let fp = Fingerprint::of_bytes(b"payload");
    for (key, action) in [("done", 0), ("running", 1), ("failed", 2)] {
        let k = RecordKey::new(scope.clone(), IdempotencyKey::new(key).expect("key"));
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(&k, &fp, LEASE, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("fresh key not acquired")
        };
        match action {
            0 => {
                let o = Outcome::succeeded(r#"{"receipt":7}"#);
                assert_eq!(
                    store
                        .complete(&k, token, &o, RETENTION)
                        .await
                        .expect("complete"),
                    Fence::Held
                );
            }
            2 => {
                assert_eq!(
                    store
                        .release(&k, token, Release::Reset)
                        .await
                        .expect("release"),
                    Fence::Held
                );
            }
            _ => {}
        }
    }
    Some((store, scope))
}

fn json_of(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

#[tokio::test]
async fn key_get_shows_state_and_outcome() {
    let Some((_store, scope)) = seeded().await else {
        return;
    };
    let out = idemq()
        .args([
            "key",
            "get",
            "done",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out.stdout);
    assert_eq!(v["state"], "completed");
    assert_eq!(v["outcome"]["receipt"], 7);
    assert_eq!(v["outcome_status"], "succeeded");
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["fingerprint"], Fingerprint::of_bytes(b"payload").to_hex());

    let text = idemq()
        .args([
            "key",
            "get",
            "running",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("in_progress") && text.contains("lease_remaining_ms"),
        "{text}"
    );

    let raw = idemq()
        .args([
            "key",
            "get",
            "done",
            "--raw",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
        ])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&raw.stdout).contains(r#"{"receipt":7}"#));
}

#[tokio::test]
async fn missing_key_exits_1_and_unreachable_store_exits_3() {
    let Some((_store, scope)) = seeded().await else {
        return;
    };
    idemq()
        .args([
            "key",
            "get",
            "nope",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
        ])
        .assert()
        .code(1);
    idemq()
        .args([
            "key",
            "get",
            "done",
            "--scope",
            &scope,
            "--store",
            "redis://127.0.0.1:1",
            "--output",
            "json",
        ])
        .assert()
        .code(3);
    idemq().args(["key", "get", "done"]).assert().code(2);
    idemq()
        .args(["stats", "--scope", &scope, "--store", "kafka://nope"])
        .assert()
        .code(2);
}

#[tokio::test]
async fn forget_refuses_in_progress_without_force() {
    let Some((store, scope)) = seeded().await else {
        return;
    };
    let running = RecordKey::new(scope.clone(), IdempotencyKey::new("running").expect("key"));
    idemq()
        .args([
            "key",
            "forget",
            "running",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
        ])
        .assert()
        .code(1);
    assert!(
        store.get(&running).await.expect("get").is_some(),
        "refused forget deleted the record"
    );
    // Refused, not "not found": the record is there.
    let out = idemq()
        .args([
            "key",
            "forget",
            "running",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = json_of(&out.stderr);
    assert_eq!(err["error"], "refused", "{err}");
    assert!(
        err["message"]
            .as_str()
            .expect("message")
            .contains("--force"),
        "{err}"
    );
    let out = idemq()
        .args([
            "key",
            "forget",
            "nope",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out.stderr)["error"], "not_found");
    idemq()
        .args([
            "key",
            "forget",
            "running",
            "--force",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
        ])
        .assert()
        .success();
    assert!(store.get(&running).await.expect("get").is_none());

    let out = idemq()
        .args([
            "key",
            "forget",
            "done",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(json_of(&out.stdout)["forgotten"], true);
    let done = RecordKey::new(scope, IdempotencyKey::new("done").expect("key"));
    assert!(store.get(&done).await.expect("get").is_none());
}

#[tokio::test]
async fn keys_list_filters_by_state_and_limit() {
    let Some((_store, scope)) = seeded().await else {
        return;
    };
    let list = |extra: &[&str]| {
        let mut args = vec![
            "keys", "list", "--scope", &scope, "--store", "", "--output", "json",
        ];
        let url = redis_url();
        args[5] = &url;
        args.extend_from_slice(extra);
        let out = idemq().args(&args).output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json_of(&out.stdout);
        let mut keys: Vec<String> = v["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["key"].as_str().expect("key").to_string())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(list(&[]), ["done", "failed", "running"]);
    assert_eq!(list(&["--state", "completed"]), ["done"]);
    assert_eq!(list(&["--state", "in-progress"]), ["running"]);
    assert_eq!(list(&["--state", "released"]), ["failed"]);
    assert_eq!(list(&["--limit", "2"]).len(), 2);
}

#[tokio::test]
async fn stats_counts_by_state() {
    let Some((_store, scope)) = seeded().await else {
        return;
    };
    let out = idemq()
        .args([
            "stats",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(&out.stdout);
    assert_eq!(
        (
            v["in_progress"].as_u64(),
            v["completed"].as_u64(),
            v["released"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(v["oldest_in_progress"]["key"], "running");
    // Redis has no per-scope counter: the command scans, and says so.
    assert_eq!(v["counted_by"], "scan");
    let text = idemq()
        .args(["stats", "--scope", &scope, "--store", &redis_url()])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&text.stdout).contains("counted by scanning"));
}

/// Seeds `n` completed keys `k00`, `k01`, … in a new scope.
async fn many(store: &RedisStore, n: usize) -> String {
    let scope = unique("cli-page");
    let fp = Fingerprint::of_bytes(b"payload");
    for i in 0..n {
        let k = RecordKey::new(
            scope.clone(),
            IdempotencyKey::new(format!("k{i:02}")).expect("key"),
        );
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(&k, &fp, LEASE, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("fresh key not acquired")
        };
        store
            .complete(&k, token, &Outcome::succeeded("1"), RETENTION)
            .await
            .expect("complete");
    }
    scope
}

/// Follows `next_cursor` until the end; every page's keys.
fn pages(store_url: &str, scope: &str, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let limit = limit.to_string();
        let mut args = vec![
            "keys", "list", "--scope", scope, "--store", store_url, "--limit", &limit, "--output",
            "json",
        ];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let out = idemq().args(&args).output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = json_of(&out.stdout);
        pages.push(
            v["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| r["key"].as_str().expect("key").to_string())
                .collect(),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return pages,
        }
        assert!(pages.len() <= 50, "cursor does not advance: {pages:?}");
    }
}

#[tokio::test]
async fn keys_list_prints_a_cursor_that_resumes_without_gaps_or_repeats() {
    if !require_redis() {
        return;
    }
    let store = RedisStore::connect(&redis_url()).await.expect("redis");
    let scope = many(&store, 25).await;
    let pages = pages(&redis_url(), &scope, 10);
    assert!(pages.len() >= 3, "{pages:?}");
    assert!(pages.iter().all(|p| p.len() <= 10), "{pages:?}");
    let mut all: Vec<String> = pages.concat();
    all.sort();
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(all, expected, "every key exactly once");

    // Text mode names the cursor on its last line.
    let out = idemq()
        .args([
            "keys",
            "list",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--limit",
            "5",
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5 record(s); more: --cursor "), "{text}");
    idemq()
        .args([
            "keys",
            "list",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--cursor",
            "garbage",
        ])
        .assert()
        .code(2);
}

#[tokio::test]
async fn logs_follow_rust_log_on_stderr_and_data_stays_on_stdout() {
    let Some((_store, scope)) = seeded().await else {
        return;
    };
    let args = [
        "stats",
        "--scope",
        &scope,
        "--store",
        &redis_url(),
        "--output",
        "json",
    ];
    let out = idemq()
        .env("RUST_LOG", "idemq=debug")
        .args(args)
        .output()
        .expect("run");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG") && stderr.contains("opening the store"),
        "{stderr}"
    );
    json_of(&out.stdout);
    let quiet = idemq()
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run");
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["key", "--help"],
        vec!["key", "get", "--help"],
        vec!["key", "forget", "--help"],
        vec!["keys", "list", "--help"],
        vec!["stats", "--help"],
        vec!["doctor", "--help"],
        vec!["dlq", "replay", "--help"],
    ] {
        let out = idemq().args(&args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let help = idemq().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes") && help.contains("RUST_LOG"),
        "{help}"
    );
}

#[test]
#[cfg(feature = "kafka")]
fn dlq_replay_with_an_unreachable_broker_exits_3() {
    idemq()
        .args([
            "dlq",
            "replay",
            "--bootstrap",
            "127.0.0.1:1",
            "--from",
            "dlq",
            "--to",
            "main",
            "--scope",
            "s",
            "--store",
            "memory",
            "--join-timeout-ms",
            "1500",
        ])
        .assert()
        .code(3);
    // Exactly one broker must be named.
    idemq()
        .args([
            "dlq", "replay", "--from", "dlq", "--to", "main", "--scope", "s", "--store", "memory",
        ])
        .assert()
        .code(2);
}
