//! The `idemq` operator commands on a Redis Cluster store: `keys list` and `stats` see the
//! records of every primary (SCAN on each), `key get` / `key forget` reach the key's primary.
#![cfg(all(feature = "cli", feature = "redis"))]

mod support;

use assert_cmd::Command;
use idemq::store::redis::RedisStore;
use idemq::store::{Claim, ClaimRequest, RecordKey, Store};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use serde_json::Value;
use std::time::Duration;
use support::redis_cluster::{keys_per_primary, primaries_of, shared_url};
use support::services::unique;

const LEASE: Duration = Duration::from_secs(60);
const RETENTION: Duration = Duration::from_secs(600);
/// Records seeded: enough that every primary holds several.
const KEYS: usize = 60;

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

#[tokio::test]
async fn operator_commands_cover_every_primary() {
    let Some(url) = shared_url() else { return };
    let prefix = unique("idemq-ccli");
    let store = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .build()
        .await
        .expect("connect");
    let scope = unique("ccli");
    let fp = Fingerprint::of_bytes(b"payload");
    for i in 0..KEYS {
        let k = RecordKey::new(
            scope.clone(),
            IdempotencyKey::new(format!("k{i}")).expect("key"),
        );
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(&k, &fp, LEASE, RETENTION))
            .await
            .expect("claim")
        else {
            panic!("fresh key not acquired")
        };
        // Every third key stays in progress.
        if i % 3 != 0 {
            store
                .complete(&k, token, &Outcome::succeeded("{\"n\":1}"), RETENTION)
                .await
                .expect("complete");
        }
    }
    let spread = keys_per_primary(&primaries_of(&url), &format!("{prefix}:*"));
    assert!(spread.iter().all(|(_, n)| *n > 0), "{spread:?}");

    let at = format!("{url}/?prefix={prefix}");
    let list = run(&["keys", "list", "--scope", &scope, "--store", &at]);
    let records = list["records"].as_array().expect("records");
    let mut names: Vec<&str> = records.iter().filter_map(|r| r["key"].as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), KEYS, "{list}");

    let stats = run(&["stats", "--scope", &scope, "--store", &at]);
    assert_eq!(stats["completed"], (KEYS - KEYS / 3) as u64, "{stats}");
    assert_eq!(stats["in_progress"], (KEYS / 3) as u64, "{stats}");

    let got = run(&["key", "get", "k1", "--scope", &scope, "--store", &at]);
    assert_eq!(got["state"], "completed", "{got}");
    assert_eq!(got["outcome"]["n"], 1, "{got}");
    let forgot = run(&["key", "forget", "k1", "--scope", &scope, "--store", &at]);
    assert_eq!(forgot["forgotten"], true, "{forgot}");
    let k1 = RecordKey::new(scope.clone(), IdempotencyKey::new("k1").expect("key"));
    assert!(store.get(&k1).await.expect("get").is_none());
}

fn doctor(url: &str) -> (Option<i32>, Value) {
    let out = Command::cargo_bin("idemq")
        .expect("idemq binary")
        .args(["doctor", "--store", url, "--output", "json"])
        .output()
        .expect("run idemq");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

/// `doctor` on a Cluster asks every primary; a standalone URL naming one Cluster node fails
/// the cluster-mode check.
#[test]
fn doctor_checks_every_primary_and_catches_a_standalone_url_on_a_cluster() {
    let Some(url) = shared_url() else { return };
    let primaries = primaries_of(&url);
    let (_, report) = doctor(&url);
    assert_eq!(check(&report, "cluster-mode")["status"], "pass", "{report}");
    assert_eq!(check(&report, "version")["status"], "pass", "{report}");
    assert_eq!(check(&report, "scripts")["status"], "pass", "{report}");
    // The test cluster runs without persistence: every primary is named in the finding.
    let persistence = check(&report, "persistence");
    assert_eq!(persistence["status"], "fail", "{report}");
    for port in &primaries {
        assert!(
            persistence["detail"]
                .as_str()
                .expect("detail")
                .contains(&format!(":{port}:")),
            "{report}"
        );
    }

    let standalone = format!("redis://127.0.0.1:{}", primaries[0]);
    let (code, report) = doctor(&standalone);
    assert_eq!(code, Some(1), "{report}");
    let mode = check(&report, "cluster-mode");
    assert_eq!(mode["status"], "fail", "{report}");
    assert!(
        mode["fix"]
            .as_str()
            .expect("fix")
            .contains("redis-cluster://"),
        "{report}"
    );
}
