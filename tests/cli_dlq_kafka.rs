//! `idemq dlq replay` against a Kafka broker (librdkafka's MockCluster) and Redis: the dry run moves
//! and commits nothing; the real run republishes only what still has to run, and commits past every
//! record so a second run has nothing left.
#![cfg(all(feature = "kafka", feature = "cli"))]

mod support;

use assert_cmd::Command;
use rdkafka::message::Message as _;
use serde_json::Value;

use std::time::Duration;
use support::kafka::{committed, header, produce, read_all, Broker, Rec};
use support::replay::seed;
use support::services::{redis_url, require_redis, unique};

fn replay(bootstrap: &str, scope: &str, dlq: &str, to: &str, dry: bool) -> Value {
    replay_with(bootstrap, scope, dlq, to, dry, &[])
}

fn replay_with(
    bootstrap: &str,
    scope: &str,
    dlq: &str,
    to: &str,
    dry: bool,
    extra: &[&str],
) -> Value {
    let mut cmd = Command::cargo_bin("idemq").expect("binary");
    cmd.args([
        "dlq",
        "replay",
        "--bootstrap",
        bootstrap,
        "--from",
        dlq,
        "--to",
        to,
        "--scope",
        scope,
        "--store",
        &redis_url(),
        "--idle-timeout-ms",
        "1500",
        "--output",
        "json",
    ]);
    if dry {
        cmd.arg("--dry-run");
    }
    cmd.args(extra);
    let out = cmd.output().expect("run idemq");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json report")
}

/// A dead-lettered record as the consumer writes it: original key, payload and headers plus the
/// `x-idemq-*` dead-letter headers.
fn dead_lettered(key: Option<&str>, payload: &str) -> Rec {
    let mut headers = Vec::new();
    if let Some(k) = key {
        headers.push(("Idempotency-Key".to_string(), k.as_bytes().to_vec()));
    }
    headers.push(("tenant".to_string(), b"acme".to_vec()));
    headers.push(("x-idemq-reason".to_string(), b"handler-failed".to_vec()));
    headers.push(("x-idemq-error".to_string(), b"db down".to_vec()));
    headers.push(("x-idemq-source-topic".to_string(), b"main".to_vec()));
    Rec {
        partition: Some(0),
        kafka_key: key.map(|k| format!("rk-{k}")),
        headers,
        payload: payload.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_classifies_then_moves_only_what_must_run() {
    if !require_redis() {
        return;
    }
    let store = idemq::store::connect(&redis_url()).await.expect("redis");
    let scope = unique("kreplay");
    seed(&store, &scope).await;

    let broker = Broker::mock();
    let bootstrap = broker.bootstrap();
    let (dlq, main) = (unique("dlq"), unique("main"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    let records = [
        dead_lettered(Some("done"), "p-done"),     // would_skip
        dead_lettered(Some("done"), "tampered"),   // conflict
        dead_lettered(Some("failed"), "p-failed"), // would_run
        dead_lettered(Some("new"), "p-new"),       // would_run
        dead_lettered(None, "no key"),             // no_key
    ];
    produce(&bootstrap, &dlq, &records).await;
    let group = format!("idemq-replay-{dlq}");

    let dry = replay(&bootstrap, &scope, &dlq, &main, true);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["examined"], 5);
    assert_eq!(dry["classes"]["would_run"], 2);
    assert_eq!(dry["classes"]["would_skip"], 1);
    assert_eq!(dry["classes"]["conflict"], 1);
    assert_eq!(dry["classes"]["no_key"], 1);
    assert_eq!(dry["republished"], 0);
    assert_eq!(dry["removed"], 0);
    assert_eq!(
        read_all(&bootstrap, &main, 1, Duration::from_millis(1500)).len(),
        0,
        "a dry run produces nothing"
    );
    assert_eq!(
        committed(&bootstrap, &group, &dlq, 1),
        [-1],
        "a dry run commits nothing"
    );

    let real = replay(&bootstrap, &scope, &dlq, &main, false);
    assert_eq!(real["examined"], 5);
    assert_eq!(
        (
            real["republished"].as_u64(),
            real["removed"].as_u64(),
            real["kept"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    assert_eq!(
        committed(&bootstrap, &group, &dlq, 1),
        [5],
        "committed past every handled record"
    );
    let moved = read_all(&bootstrap, &main, 3, Duration::from_secs(3));
    let mut bodies: Vec<String> = moved
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["p-failed", "p-new"],
        "exactly the two that must run"
    );
    for m in &moved {
        let key = header(m, "Idempotency-Key").expect("key header kept");
        assert_eq!(
            m.key(),
            Some(format!("rk-{key}").as_bytes()),
            "original record key"
        );
        assert_eq!(header(m, "x-idemq-replayed").as_deref(), Some("1"));
        assert_eq!(
            header(m, "x-idemq-reason"),
            None,
            "dead-letter headers are dropped"
        );
        assert_eq!(header(m, "x-idemq-error"), None);
        assert_eq!(header(m, "x-idemq-source-topic"), None);
        assert_eq!(
            header(m, "tenant").as_deref(),
            Some("acme"),
            "other headers are kept"
        );
    }

    let again = replay(&bootstrap, &scope, &dlq, &main, false);
    assert_eq!(again["examined"], 0, "the group resumes after the last run");
    assert_eq!(again["republished"], 0);
    assert_eq!(
        read_all(&bootstrap, &main, 3, Duration::from_millis(1500)).len(),
        2
    );
}

/// `-X key=value` reaches librdkafka: an unknown property is a usage error naming it, a setting
/// the replay owns is ignored with a warning on stderr, a valid one is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_settings_pass_through_to_librdkafka() {
    if !require_redis() {
        return;
    }
    let broker = Broker::mock();
    let bootstrap = broker.bootstrap();
    let (dlq, main) = (unique("dlq"), unique("main"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    produce(&bootstrap, &dlq, &[dead_lettered(Some("x-new"), "p")]).await;
    let scope = unique("kreplay-x");
    let base = |extra: &[&str]| {
        let mut cmd = Command::cargo_bin("idemq").expect("binary");
        cmd.args([
            "dlq",
            "replay",
            "--bootstrap",
            &bootstrap,
            "--from",
            &dlq,
            "--to",
            &main,
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--idle-timeout-ms",
            "1500",
            "--dry-run",
        ]);
        cmd.args(extra);
        cmd.output().expect("run idemq")
    };

    let unknown = base(&["-X", "no.such.property=1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no.such.property"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    assert_eq!(base(&["-X", "missing-equals"]).status.code(), Some(2));

    let ok = base(&[
        "-X",
        "client.id=idemq-cli-test",
        "-X",
        "enable.auto.commit=true",
    ]);
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert!(
        stderr.contains("ignored") && stderr.contains("enable.auto.commit"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("dry run: examined 1"));

    // -X is Kafka's: with RabbitMQ it is a usage error.
    Command::cargo_bin("idemq")
        .expect("binary")
        .args([
            "dlq",
            "replay",
            "--amqp-url",
            "amqp://127.0.0.1:1",
            "--from",
            "q",
            "--to",
            "/x",
            "--scope",
            "s",
            "--store",
            "memory",
            "-X",
            "a=b",
        ])
        .assert()
        .code(2);
}

/// SIGTERM in the middle of a long replay: the report names the last record handled, which is
/// exactly where the group's committed offset stands, and the command exits 143.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_reports_the_last_committed_offset() {
    use assert_cmd::cargo::CommandCargoExt;
    const N: usize = 2000;
    if !require_redis() {
        return;
    }
    let broker = Broker::mock();
    let bootstrap = broker.bootstrap();
    let (dlq, main) = (unique("dlq"), unique("main"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    let records: Vec<Rec> = (0..N)
        .map(|i| dead_lettered(Some(&format!("k{i}")), "p"))
        .collect();
    produce(&bootstrap, &dlq, &records).await;
    let group = format!("idemq-replay-{dlq}");
    let scope = unique("kreplay-int");
    let child = std::process::Command::cargo_bin("idemq")
        .expect("binary")
        .args([
            "dlq",
            "replay",
            "--bootstrap",
            &bootstrap,
            "--from",
            &dlq,
            "--to",
            &main,
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn idemq");
    let started = std::time::Instant::now();
    while committed(&bootstrap, &group, &dlq, 1)[0] < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the replay committed nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report on stdout");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["stopped"], "stopped by SIGTERM", "{report}");
    let moved = report["republished"].as_u64().expect("republished");
    assert!((10..N as u64).contains(&moved), "{report}");
    let last = report["last_handled"].as_str().expect("last_handled");
    let offset: i64 = last
        .strip_prefix(&format!("{dlq}[0]@"))
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    assert_eq!(offset + 1, moved as i64, "every record before it was moved");
    assert_eq!(
        committed(&bootstrap, &group, &dlq, 1),
        [offset + 1],
        "the report's last record is the last one committed"
    );
    // At most the one record in flight was produced beyond what the report counts.
    let produced = read_all(&bootstrap, &main, N, Duration::from_secs(3)).len() as u64;
    assert!(
        (moved..=moved + 1).contains(&produced),
        "{produced} produced, report says {moved}"
    );
}

/// The consumer's key sources and fingerprint rule are repeated with `--key-source` and
/// `--fingerprint`, under the same names as `KeySource` and `FingerprintRule`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_the_consumers_key_sources_and_fingerprint_rule() {
    if !require_redis() {
        return;
    }
    let store = idemq::store::connect(&redis_url()).await.expect("redis");
    let scope = unique("kreplay-src");
    seed(&store, &scope).await;
    let broker = Broker::mock();
    let bootstrap = broker.bootstrap();
    let (dlq, main) = (unique("dlq"), unique("main"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    let records = [
        dead_lettered(Some("done"), "p-done"),
        dead_lettered(Some("done"), "tampered"),
        dead_lettered(Some("failed"), "p-failed"),
        dead_lettered(Some("new"), "p-new"),
        dead_lettered(None, "no key"),
    ];
    produce(&bootstrap, &dlq, &records).await;
    // Keyed by the record key (`rk-…`), which the store has never seen: all four would run.
    let by_record_key = ["--key-source", "kafka-key"];
    let r = replay_with(&bootstrap, &scope, &dlq, &main, true, &by_record_key);
    assert_eq!(r["classes"]["would_run"], 4, "{r}");
    assert_eq!(r["classes"]["no_key"], 1, "{r}");
    // Header keys with the key-only rule: `done` was completed under the whole-payload rule, so
    // both of its copies now differ from the stored fingerprint (what a rule change does, as
    // documented on `FingerprintRule`); with the default rule only the tampered one does.
    let key_only = [
        "--key-source",
        "header:Idempotency-Key",
        "--fingerprint",
        "key-only",
    ];
    let r = replay_with(&bootstrap, &scope, &dlq, &main, true, &key_only);
    assert_eq!(r["classes"]["conflict"], 2, "{r}");
    assert_eq!(r["classes"]["would_skip"], 0, "{r}");
    assert_eq!(r["classes"]["would_run"], 2, "{r}");
    let r = replay_with(&bootstrap, &scope, &dlq, &main, true, &[]);
    assert_eq!(r["classes"]["conflict"], 1, "{r}");
    assert_eq!(r["classes"]["would_skip"], 1, "{r}");
    // A malformed source is a usage error (exit 2), before anything is read.
    let mut cmd = Command::cargo_bin("idemq").expect("binary");
    cmd.args([
        "dlq",
        "replay",
        "--bootstrap",
        &bootstrap,
        "--from",
        &dlq,
        "--to",
        &main,
    ]);
    cmd.args([
        "--scope",
        &scope,
        "--store",
        &redis_url(),
        "--key-source",
        "json:order/id",
    ]);
    assert_eq!(cmd.output().expect("run idemq").status.code(), Some(2));
}
