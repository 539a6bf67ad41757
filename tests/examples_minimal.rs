//! The copy-me examples `minimal_kafka` and `minimal_amqp`, run as users run them: as processes
//! against a broker, fed a duplicate and a keyless message, stopped with SIGTERM. Each must print
//! one JSON line per handled key (a duplicate is not handled again), dead-letter the keyless
//! message, and exit 0 by itself.
//!
//! Needs the example binaries (`cargo test --all-features` builds examples before running tests;
//! with `--test examples_minimal` alone, build them first: `cargo build --all-features --example
//! minimal_kafka --example minimal_amqp`).
#![cfg(unix)]

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::example_process::ExampleProcess;

/// How often each `"key"` occurs in the handler's JSON lines (every line must be JSON).
fn handled_keys(lines: &[String]) -> HashMap<String, u32> {
    let mut runs = HashMap::new();
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let key = v["key"].as_str().expect("key").to_string();
        *runs.entry(key).or_insert(0) += 1;
    }
    runs
}

fn once_each(keys: &[&str]) -> HashMap<String, u32> {
    keys.iter().map(|k| (k.to_string(), 1)).collect()
}

async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_kafka_handles_each_key_once_and_stops_on_sigterm() {
    use support::kafka::{committed, example_orders, produce, read_all, Broker};
    use support::services::{example_binary, unique};

    let Some(bin) = example_binary("minimal_kafka") else {
        return;
    };
    // An in-process MockCluster listens on a real port, so the example process can reach it.
    let broker = Broker::mock();
    let (topic, group) = (unique("minimal"), unique("minimal-g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await;
    broker.create_topic(&dlq, 1).await;
    let recs = example_orders();
    produce(&broker.bootstrap(), &topic, &recs).await;

    let mut cmd = Command::new(bin);
    cmd.args(["--bootstrap", &broker.bootstrap(), "--topic", &topic])
        .args(["--group", &group, "--store", "memory"]);
    let example = ExampleProcess::start(cmd, "info");
    let bootstrap = broker.bootstrap();
    // Everything up to the last record was handled or dead-lettered: 3 keys printed and the
    // keyless record in the DLQ.
    wait_until("3 handled keys", Duration::from_secs(60), async || {
        example.stdout_lines().len() >= 3
    })
    .await;
    let dead = read_all(&bootstrap, &dlq, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "the keyless record is dead-lettered");
    assert_eq!(
        support::kafka::header(&dead[0], "x-idemq-reason").as_deref(),
        Some("missing-idempotency-key")
    );

    let (status, lines, stderr) = example.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{stderr}"
    );
    assert_eq!(
        handled_keys(&lines),
        once_each(&["order-1", "order-2", "order-3"])
    );
    // The graceful stop committed all five records, the duplicate and the dead letter included.
    assert_eq!(committed(&bootstrap, &group, &topic, 1), vec![5]);
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_amqp_handles_each_key_once_and_stops_on_sigterm() {
    use support::amqp::Rabbit;
    use support::services::{amqp_url, example_binary};

    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(bin) = example_binary("minimal_amqp") else {
        return;
    };
    // Declared here as the example declares it, so the messages can be published before it starts.
    let queue = rabbit.durable_queue("minimal").await;
    let (dlx, dlq) = (format!("{queue}.dlx"), format!("{queue}.dlq"));
    rabbit
        .publish(&queue, Some("order-1"), br#"{"amount":1}"#)
        .await;
    rabbit
        .publish(&queue, Some("order-2"), br#"{"amount":2}"#)
        .await;
    rabbit
        .publish(&queue, Some("order-1"), br#"{"amount":1}"#)
        .await;
    rabbit.publish(&queue, None, br#"{"amount":9}"#).await;
    rabbit
        .publish(&queue, Some("order-3"), br#"{"amount":3}"#)
        .await;

    let mut cmd = Command::new(bin);
    cmd.args(["--amqp-url", &amqp_url(), "--queue", &queue])
        .args(["--store", "memory"]);
    let example = ExampleProcess::start(cmd, "info");
    wait_until("3 handled keys", Duration::from_secs(60), async || {
        example.stdout_lines().len() >= 3
    })
    .await;
    // The example declared the dead-letter exchange and queue; the first dead letter lands there.
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1, "the keyless message is dead-lettered");
    assert_eq!(
        dead[0].header("x-idemq-reason").as_deref(),
        Some("missing-idempotency-key")
    );
    // The duplicate was settled too (acked as a replay): nothing left in the queue.
    wait_until("the queue drained", Duration::from_secs(30), async || {
        rabbit.counts(&queue).await.0 == 0
    })
    .await;

    let (status, lines, stderr) = example.terminate();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{stderr}"
    );
    assert_eq!(
        handled_keys(&lines),
        once_each(&["order-1", "order-2", "order-3"])
    );
    let (ready, _) = rabbit.counts(&queue).await;
    assert_eq!(ready, 0, "nothing requeued by the shutdown");
    rabbit.delete_at_cleanup(&[&dlq], &[&dlx]);
    rabbit.cleanup().await;
}
