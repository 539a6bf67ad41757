//! `idemq dlq replay` against RabbitMQ and Redis: dry run moves nothing; the real run republishes
//! only what still has to run, removes what completed, and keeps what would bounce.
#![cfg(feature = "amqp")]

mod support;

use assert_cmd::Command;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::Value;
use std::time::Duration;
use support::amqp::{redis, Rabbit};
use support::replay::seed;
use support::services::{amqp_url, redis_url, unique};

fn dead_lettered(key: Option<&str>) -> BasicProperties {
    let mut h = FieldTable::default();
    if let Some(k) = key {
        h.insert("Idempotency-Key".into(), AMQPValue::LongString(k.into()));
    }
    h.insert(
        "x-idemq-reason".into(),
        AMQPValue::LongString("handler-failed".into()),
    );
    h.insert(
        "x-idemq-error".into(),
        AMQPValue::LongString("db down".into()),
    );
    h.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    BasicProperties::default().with_headers(h)
}

fn replay(scope: &str, dlq: &str, to: &str, dry: bool) -> Value {
    replay_with(scope, dlq, to, dry, &[])
}

fn replay_with(scope: &str, dlq: &str, to: &str, dry: bool, extra: &[&str]) -> Value {
    let mut cmd = Command::cargo_bin("idemq").expect("binary");
    cmd.args([
        "dlq",
        "replay",
        "--amqp-url",
        &amqp_url(),
        "--from",
        dlq,
        "--to",
        to,
        "--scope",
        scope,
        "--store",
        &redis_url(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_classifies_then_moves_only_what_must_run() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(store) = redis().await else { return };
    let scope = unique("replay");
    let dlq = rabbit.queue("dlq").await;
    let main = rabbit.queue("main").await;

    seed(&store, &scope).await;
    let messages: [(Option<&str>, &str); 5] = [
        (Some("done"), "p-done"),     // would_skip
        (Some("done"), "tampered"),   // conflict
        (Some("failed"), "p-failed"), // would_run
        (Some("new"), "p-new"),       // would_run
        (None, "no key"),             // no_key
    ];
    for (key, payload) in messages {
        rabbit
            .publish_props("", &dlq, payload.as_bytes(), dead_lettered(key))
            .await;
    }

    let dry = replay(&scope, &dlq, &format!("/{main}"), true);
    assert_eq!(dry["examined"], 5);
    assert_eq!(dry["classes"]["would_run"], 2);
    assert_eq!(dry["classes"]["would_skip"], 1);
    assert_eq!(dry["classes"]["conflict"], 1);
    assert_eq!(dry["classes"]["no_key"], 1);
    assert_eq!(dry["republished"], 0);
    let mut ready = 0;
    for _ in 0..50 {
        ready = rabbit.counts(&dlq).await.0;
        if ready == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 5, "a dry run must leave every message in the DLQ");
    assert_eq!(rabbit.counts(&main).await.0, 0);

    let real = replay(&scope, &dlq, &format!("/{main}"), false);
    assert_eq!(
        (
            real["republished"].as_u64(),
            real["removed"].as_u64(),
            real["kept"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    let moved = rabbit.wait_drain(&main, 2, Duration::from_secs(5)).await;
    let mut bodies: Vec<String> = moved
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["p-failed", "p-new"]);
    for m in &moved {
        assert_eq!(m.header("x-idemq-replayed").as_deref(), Some("1"));
        assert_eq!(
            m.header("x-idemq-reason"),
            None,
            "dead-letter headers are dropped"
        );
        assert_eq!(m.header("x-idemq-error"), None);
        assert_eq!(
            m.header("tenant").as_deref(),
            Some("acme"),
            "other headers are kept"
        );
        assert!(m.header("Idempotency-Key").is_some());
    }
    let mut left = 0;
    for _ in 0..50 {
        left = rabbit.counts(&dlq).await.0;
        if left == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 2, "conflict and no-key stay in the DLQ");
    let kept = rabbit.drain(&dlq).await;
    let mut kept_bodies: Vec<String> = kept
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    kept_bodies.sort();
    assert_eq!(kept_bodies, ["no key", "tampered"]);
    rabbit.cleanup().await;
}

/// A consumer with `MissingKeyPolicy::DeriveFromPayload` records keyless messages under the
/// payload's SHA-256: with `--missing-key derive` the replay classifies them like keyed ones
/// (instead of keeping them forever as `no_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_messages_replay_with_missing_key_derive() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(store) = redis().await else { return };
    let scope = unique("replay-derive");
    let dlq = rabbit.queue("dlq").await;
    let main = rabbit.queue("main").await;
    // The consumer already completed the keyless message "p-derived-done".
    let done = idemq::Message::new("p-derived-done", idemq::Source::Other("seed".into()));
    let k = idemq::store::RecordKey::new(scope.clone(), idemq::key::derive_from_payload(&done));
    let f = idemq::Fingerprint::of(&done, &[]);
    let (lease, retention) = (Duration::from_secs(30), Duration::from_secs(600));
    let req = idemq::store::ClaimRequest::new(&k, &f, lease, retention);
    let idemq::store::Claim::Acquired { token, .. } = store.claim(&req).await.expect("claim")
    else {
        panic!("not acquired")
    };
    store
        .complete(&k, token, &idemq::Outcome::succeeded("1"), retention)
        .await
        .expect("complete");
    for payload in ["p-derived-done", "p-derived-new"] {
        rabbit
            .publish_props("", &dlq, payload.as_bytes(), dead_lettered(None))
            .await;
    }

    let to = format!("/{main}");
    let rejecting = replay(&scope, &dlq, &to, true);
    assert_eq!(rejecting["classes"]["no_key"], 2, "{rejecting}");
    let dry = replay_with(&scope, &dlq, &to, true, &["--missing-key", "derive"]);
    assert_eq!(dry["examined"], 2, "{dry}");
    assert_eq!(dry["classes"]["no_key"], 0, "{dry}");
    assert_eq!(dry["classes"]["would_skip"], 1, "{dry}");
    assert_eq!(dry["classes"]["would_run"], 1, "{dry}");

    let real = replay_with(&scope, &dlq, &to, false, &["--missing-key", "derive"]);
    assert_eq!(
        (real["republished"].as_u64(), real["removed"].as_u64()),
        (Some(1), Some(1)),
        "{real}"
    );
    let moved = rabbit.wait_drain(&main, 1, Duration::from_secs(5)).await;
    let bodies: Vec<String> = moved
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(bodies, ["p-derived-new"]);
    rabbit.cleanup().await;
}

/// A dead-lettered message whose original routing key (the queue it came from) is `source`.
fn from_queue(key: &str, source: &str) -> BasicProperties {
    let mut props = dead_lettered(Some(key));
    let mut h = props.headers().clone().unwrap_or_default();
    h.insert(
        "x-idemq-source-routing-key".into(),
        AMQPValue::LongString(source.into()),
    );
    props = props.with_headers(h);
    props
}

/// Ready messages of `queue` once the count settles (unacked messages return when the replay's
/// connection closes).
async fn settled(rabbit: &Rabbit, queue: &str) -> u32 {
    let mut last = u32::MAX;
    for _ in 0..50 {
        let now = rabbit.counts(queue).await.0;
        if now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// A replay that fails midway (the fourth message cannot be routed) prints what it moved before
/// exiting 3: the first three republished, and where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_failing_midway_reports_what_it_moved() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    if redis().await.is_none() {
        return;
    }
    let scope = unique("replay-fail");
    let dlq = rabbit.queue("dlq").await;
    let main = rabbit.queue("main").await;
    let nowhere = unique("no-such-queue");
    for (key, source) in [
        ("k1", main.as_str()),
        ("k2", main.as_str()),
        ("k3", main.as_str()),
        ("k4", nowhere.as_str()),
        ("k5", main.as_str()),
    ] {
        rabbit
            .publish_props("", &dlq, key.as_bytes(), from_queue(key, source))
            .await;
    }
    // `/`: the default exchange, each message back to its original routing key.
    let out = Command::cargo_bin("idemq")
        .expect("binary")
        .args([
            "dlq",
            "replay",
            "--amqp-url",
            &amqp_url(),
            "--from",
            &dlq,
            "--to",
            "/",
            "--scope",
            &scope,
            "--store",
            &redis_url(),
            "--output",
            "json",
        ])
        .output()
        .expect("run idemq");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report on stdout");
    assert_eq!(report["complete"], false, "{report}");
    assert!(
        report["stopped"]
            .as_str()
            .expect("why")
            .starts_with("failed"),
        "{report}"
    );
    assert_eq!(report["republished"], 3, "{report}");
    assert_eq!(report["last_handled"], "key k3", "{report}");
    let err: Value = serde_json::from_slice(&out.stderr).expect("json error on stderr");
    assert_eq!(err["error"], "unreachable");
    assert_eq!(settled(&rabbit, &main).await, 3);
    assert_eq!(settled(&rabbit, &dlq).await, 2, "k4 and k5 stay in the DLQ");
    rabbit.cleanup().await;
}

/// SIGINT in the middle of a long replay: the command prints what it moved so far (every one of
/// them confirmed and removed from the DLQ) and exits 130.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_reports_what_it_moved() {
    use assert_cmd::cargo::CommandCargoExt;
    // Enough that the replay is still running when the test notices the first moves.
    const N: u32 = 3000;
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    if redis().await.is_none() {
        return;
    }
    let scope = unique("replay-int");
    let dlq = rabbit.queue("dlq").await;
    let main = rabbit.queue("main").await;
    for i in 0..N {
        let key = format!("k{i}");
        rabbit
            .publish_props("", &dlq, key.as_bytes(), dead_lettered(Some(&key)))
            .await;
    }
    let to = format!("/{main}");
    let child = std::process::Command::cargo_bin("idemq")
        .expect("binary")
        .args([
            "dlq",
            "replay",
            "--amqp-url",
            &amqp_url(),
            "--from",
            &dlq,
            "--to",
            &to,
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
    while rabbit.counts(&main).await.0 < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replay moved nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report on stdout");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["stopped"], "stopped by SIGINT", "{report}");
    let moved = report["republished"].as_u64().expect("republished") as u32;
    assert!((5..N).contains(&moved), "{report}");
    assert!(
        report["last_handled"]
            .as_str()
            .is_some_and(|l| l.starts_with("key k")),
        "{report}"
    );
    let err: Value = serde_json::from_slice(&out.stderr).expect("json error on stderr");
    assert_eq!(err["error"], "interrupted");
    // The one message in flight when the signal came may be both republished and still in the
    // DLQ (the consumer's deduplication makes that harmless); nothing else is.
    let in_main = settled(&rabbit, &main).await;
    let in_dlq = settled(&rabbit, &dlq).await;
    assert!(
        (moved..=moved + 1).contains(&in_main),
        "{in_main} in main, report says {moved}"
    );
    assert!(
        (N - moved - 1..=N - moved).contains(&in_dlq),
        "{in_dlq} left in the DLQ, report says {moved} moved"
    );
    rabbit.cleanup().await;
}
