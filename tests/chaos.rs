//! The fault-injection harness (`examples/chaos`) in its short configuration: every scenario
//! (RabbitMQ and Kafka × Redis and Postgres transactional) must hold every invariant under
//! SIGKILLs, a Redis outage, closed connections and rebalances; and a negative control (one
//! in-memory store per consumer process, so duplicates do run twice) must be caught.
//!
//! Needs RabbitMQ, PostgreSQL, `redis-server`, `rabbitmqctl`, the Tansu broker and the example
//! binaries (`cargo test --all-features` builds them; alone: `cargo build --all-features
//! --examples` first).
#![cfg(all(
    feature = "kafka",
    feature = "amqp",
    feature = "redis",
    feature = "postgres"
))]

mod support;

use std::process::Command;
use support::services::{example_binary, require_postgres, require_rabbitmq};

fn chaos(args: &[&str]) -> (i32, String) {
    let bin = example_binary("chaos").expect("chaos example built");
    let work = std::env::temp_dir().join(support::services::unique("chaos-test"));
    let out = Command::new(bin)
        .args(args)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .expect("run the chaos harness");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown when the test fails (and with --nocapture).
    println!("{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn short_chaos_run_holds_every_invariant_and_the_negative_control_is_caught() {
    if !(require_rabbitmq() && require_postgres() && example_binary("chaos").is_some()) {
        return;
    }
    // Negative control first: without a shared store, duplicates reach different processes
    // and run twice. The harness must say so and exit 1.
    let (code, text) = chaos(&[
        "--scenarios",
        "amqp-memory",
        "--messages",
        "200",
        "--dup-rate",
        "0.5",
        "--kills",
        "0",
        "--broker-faults",
        "0",
    ]);
    assert_eq!(code, 1, "the negative control must fail the run");
    assert!(
        text.contains("keys run twice without a kill in between"),
        "the double runs are reported"
    );

    let (code, text) = chaos(&["--short"]);
    assert_eq!(code, 0, "an invariant broke or a scenario could not run");
    for scenario in [
        "amqp-redis",
        "amqp-postgres",
        "kafka-redis",
        "kafka-postgres",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no table row for {scenario}"));
        assert!(row.ends_with("| PASS |"), "{scenario} must pass: {row}");
    }
    assert!(text.contains("every invariant held"));
}

/// Kafka consumers with static group membership (`--static-members`: every consumer has a
/// `group.instance.id`, a killed one's replacement reuses it) hold every invariant too.
///
/// Not in the default run: neither broker available here implements static-member replacement
/// (KIP-345). Tansu treats the replacement's join as a new member and rebalances, and in one CI
/// run of the short configuration left 25 records of a partition unconsumed for 120 s. Run it
/// against Apache Kafka ≥ 2.3 with `cargo test --all-features --test chaos -- --ignored`.
#[test]
#[ignore = "needs a broker with static membership (KIP-345); Tansu rebalances instead"]
fn short_chaos_run_with_static_kafka_members_holds_every_invariant() {
    if example_binary("chaos").is_none() {
        return;
    }
    let (code, text) = chaos(&["--short", "--scenarios", "kafka-redis", "--static-members"]);
    assert_eq!(code, 0, "an invariant broke or the scenario could not run");
    let row = text
        .lines()
        .find(|l| l.starts_with("| kafka-redis-static |"))
        .expect("a table row for kafka-redis-static");
    assert!(row.ends_with("| PASS |"), "{row}");
}
