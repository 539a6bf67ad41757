//! `idemq doctor` against private Redis servers configured right and wrong, and against
//! Postgres tables with and without what the store needs: pass / warn / fail per check, the fix,
//! and the exit codes (0 when nothing fails, 1 when a check fails, 3 when unreachable).
#![cfg(all(feature = "cli", feature = "redis"))]

mod support;

use assert_cmd::Command;
use serde_json::Value;
use support::redis_server::PrivateRedis;
use support::services::unique;

/// Runs `idemq doctor --store URL --output json`; the exit code and the report.
fn doctor(url: &str) -> (i32, Value) {
    let out = Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(["doctor", "--store", url, "--output", "json"])
        .output()
        .expect("run idemq");
    let code = out.status.code().expect("exit code");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// The status of the check called `name`.
fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))["status"]
        .as_str()
        .expect("status")
}

fn fix<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["fix"].as_str())
        .unwrap_or_else(|| panic!("no fix for {name} in {report}"))
}

/// A private Redis writing its append-only file under a temporary directory.
fn private(extra: &[&str]) -> Option<(PrivateRedis, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(unique("idemq-doctor"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut args = vec!["--dir", &dir_arg];
    args.extend_from_slice(extra);
    PrivateRedis::start(&args).map(|r| (r, dir))
}

#[test]
fn a_redis_set_up_for_production_passes() {
    let Some((redis, dir)) = private(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        "64mb",
        "--maxmemory-policy",
        "noeviction",
    ]) else {
        return;
    };
    let (code, report) = doctor(&redis.url());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["store"], "redis");
    assert_eq!(report["ok"], true);
    for check in [
        "version",
        "cluster-mode",
        "maxmemory-policy",
        "persistence",
        "replication",
        "scripts",
    ] {
        assert_eq!(status(&report, check), "pass", "{check}: {report}");
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_evicting_policy_and_no_persistence_fail_with_the_fix() {
    let Some((redis, dir)) =
        private(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"])
    else {
        return;
    };
    let (code, report) = doctor(&redis.url());
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["ok"], false);
    assert_eq!(status(&report, "maxmemory-policy"), "fail", "{report}");
    assert!(fix(&report, "maxmemory-policy").contains("noeviction"));
    assert_eq!(status(&report, "persistence"), "fail", "{report}");
    assert!(fix(&report, "persistence").contains("appendonly yes"));
    assert_eq!(status(&report, "scripts"), "pass", "{report}");

    // Text output: one line per check, the fix under a failing one, exit 1 as well.
    let out = Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(["doctor", "--store", &redis.url()])
        .output()
        .expect("run idemq");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  maxmemory-policy"), "{text}");
    assert!(
        text.contains("fix: CONFIG SET maxmemory-policy noeviction"),
        "{text}"
    );
    assert!(text.contains("PASS  version"), "{text}");
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

/// `?replicas=N` is checked against the replicas each primary has: enough passes, too few fails
/// (every claim would time out in WAIT), and replicas nobody waits for warn.
#[test]
fn the_replica_count_is_checked_against_the_urls_wait() {
    let Some((primary, dir)) = private(&["--appendonly", "yes"]) else {
        return;
    };
    let port = primary.port().to_string();
    let Some(_replica) = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]) else {
        return;
    };
    let connected = |report: &Value| -> bool {
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| {
                c["name"] == "replication"
                    && c["detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("1 replica connected"))
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut report = doctor(&primary.url()).1;
    while !connected(&report) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never connected: {report}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        report = doctor(&primary.url()).1;
    }
    assert_eq!(status(&report, "replication"), "warn", "{report}");
    assert!(fix(&report, "replication").contains("?replicas=1"));

    let (code, report) = doctor(&format!("{}?replicas=1", primary.url()));
    assert_eq!(status(&report, "replication"), "pass", "{report}");
    assert_eq!(code, 0, "{report}");

    let (code, report) = doctor(&format!(
        "{}?replicas=2&replica_timeout_ms=50",
        primary.url()
    ));
    assert_eq!(status(&report, "replication"), "fail", "{report}");
    assert_eq!(code, 1, "{report}");
    assert!(fix(&report, "replication").contains("at least 2"));
    drop(primary);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lax_fsync_and_no_memory_limit_only_warn() {
    let Some((redis, dir)) = private(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "no",
        "--maxmemory",
        "0",
        "--maxmemory-policy",
        "allkeys-lru",
    ]) else {
        return;
    };
    let (code, report) = doctor(&redis.url());
    assert_eq!(code, 0, "warnings alone do not fail: {report}");
    assert_eq!(status(&report, "persistence"), "warn", "{report}");
    assert_eq!(status(&report, "maxmemory-policy"), "warn", "{report}");
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_cluster_url_on_a_standalone_server_fails_cluster_mode() {
    let Some((redis, dir)) = private(&[]) else {
        return;
    };
    let url = redis.url().replace("redis://", "redis-cluster://");
    let (code, report) = doctor(&url);
    assert_eq!(code, 1, "{report}");
    assert_eq!(status(&report, "cluster-mode"), "fail", "{report}");
    assert!(fix(&report, "cluster-mode").contains("redis://"));
    drop(redis);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreachable_and_unknown_stores_exit_3_and_2() {
    Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(["doctor", "--store", "redis://127.0.0.1:1"])
        .assert()
        .code(3);
    Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(["doctor", "--store", "kafka://x"])
        .assert()
        .code(2);
    let (code, report) = doctor("memory");
    assert_eq!(code, 1);
    assert_eq!(status(&report, "backend"), "fail");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use support::postgres::{exec, store_on, unique_table};
    use support::services::postgres_url;

    fn url_for(table: &str) -> String {
        let base = postgres_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}idemq_table={table}")
    }

    #[tokio::test]
    async fn a_migrated_table_passes_and_each_missing_piece_fails() {
        let table = unique_table("doctor");
        let Some(store) = store_on(&table).await else {
            return;
        };
        let url = url_for(&table);
        let (code, report) = doctor(&url);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["store"], "postgres");
        for check in [
            "version",
            "table",
            "format",
            "primary-key",
            "expiry-index",
            "statements",
        ] {
            assert_eq!(status(&report, check), "pass", "{check}: {report}");
        }

        exec(&store, &format!("DROP INDEX {}", store.table().index_sql())).await;
        exec(
            &store,
            &format!(
                "COMMENT ON TABLE {} IS 'something else'",
                store.table().sql()
            ),
        )
        .await;
        let (code, report) = doctor(&url);
        assert_eq!(code, 1, "{report}");
        assert_eq!(status(&report, "expiry-index"), "fail", "{report}");
        assert!(fix(&report, "expiry-index").contains("(expires_at)"));
        assert_eq!(status(&report, "format"), "fail", "{report}");
        assert_eq!(status(&report, "primary-key"), "pass", "{report}");

        exec(
            &store,
            &format!("ALTER TABLE {} DROP COLUMN outcome", store.table().sql()),
        )
        .await;
        let (_, report) = doctor(&url);
        assert_eq!(status(&report, "statements"), "fail", "{report}");

        exec(&store, &format!("DROP TABLE {}", store.table().sql())).await;
        let (code, report) = doctor(&url);
        assert_eq!(code, 1, "{report}");
        assert_eq!(status(&report, "table"), "fail", "{report}");
        assert!(fix(&report, "table").contains("migrate"));
    }
}
