//! The fault-injection harness on a Redis Cluster store: the AMQP scenario with a primary killed
//! (SIGKILL while its replica lags) holds every invariant, with and without `WAIT`; with
//! `replicas=1` no key runs twice after the failover. Needs RabbitMQ, `redis-server`,
//! `redis-cli`, `rabbitmqctl` and the example binaries (`cargo build --all-features --examples`).
#![cfg(all(
    feature = "kafka",
    feature = "amqp",
    feature = "redis",
    feature = "postgres"
))]

mod support;

use std::process::Command;
use support::services::{example_binary, in_ci, require_rabbitmq};

#[test]
fn primary_kill_holds_every_invariant_and_wait_prevents_failover_double_runs() {
    if !(require_rabbitmq() && example_binary("chaos").is_some()) {
        return;
    }
    for tool in ["redis-server", "redis-cli"] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            assert!(!in_ci(), "{tool} is needed under CI: {e}");
            eprintln!("SKIPPED: {tool}: {e}");
            return;
        }
    }
    let bin = example_binary("chaos").expect("chaos example built");
    let work = std::env::temp_dir().join(support::services::unique("chaos-cluster"));
    let out = Command::new(bin)
        .args(["--short", "--messages", "2000", "--lag-ms", "1000"])
        .args(["--scenarios", "amqp-redis-cluster,amqp-redis-cluster-wait"])
        .arg("--work-dir")
        .arg(&work)
        .output()
        .expect("run the chaos harness");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert_eq!(out.status.code(), Some(0), "an invariant broke");
    // The failover table: `| scenario | primary kills | failover doubles | other | verdict |`.
    let row = |name: &str| {
        text.lines()
            .rfind(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no failover row for {name}"))
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let wait = row("amqp-redis-cluster-wait");
    assert_eq!(wait.len(), 5, "{wait:?}");
    assert_eq!(wait[1], "1", "one primary kill: {wait:?}");
    assert_eq!(wait[2], "0", "no failover double run with WAIT: {wait:?}");
    assert_eq!(wait[4], "PASS", "{wait:?}");
    let plain = row("amqp-redis-cluster");
    assert_eq!(plain[4], "PASS", "{plain:?}");
}
