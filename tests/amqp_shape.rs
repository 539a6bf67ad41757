//! The AMQP consumer's shape shared with the Kafka one: lapin's `ConnectionProperties` reach the
//! broker, and `run_until_signal` stops gracefully on SIGTERM.
#![cfg(all(feature = "amqp", unix))]

mod support;

use lapin::types::LongString;
use lapin::ConnectionProperties;
use std::time::Duration;
use support::amqp::{consumer, memory, Rabbit, Recorder, Running};
use support::services::unique;

/// The client properties RabbitMQ lists for its connections (`rabbitmqctl`, no management API).
async fn broker_client_properties() -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "client_properties"])
        .output()
        .await
        .expect("run rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_properties_and_name_reach_the_broker() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("props").await;
    rabbit.publish(&queue, Some("k1"), b"{}").await;
    let (name, marker) = (unique("idemq-shape-conn"), unique("marker"));
    let props = ConnectionProperties::default()
        .with_client_property("x-idemq-test".into(), LongString::from(marker.clone()));
    let rec = Recorder::default();
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .connection_properties(props)
            .connection_name(name.clone()),
    );
    run.wait(Duration::from_secs(20), "1 processed", |s| s.processed == 1)
        .await;
    let listed = broker_client_properties().await;
    let line = listed
        .lines()
        .find(|l| l.contains(&marker))
        .unwrap_or_else(|| panic!("no connection with the custom property: {listed}"));
    // The builder's connection name is added on top of the given properties, not instead.
    assert!(line.contains(&name), "{line}");
    run.stop().await;
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_signal_stops_gracefully_on_sigterm() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    // Our own listener first: from now on SIGTERM cannot end the test process.
    let mut own = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM listener");
    let queue = rabbit.queue("sigterm").await;
    for k in 0..3 {
        rabbit.publish(&queue, Some(&format!("k{k}")), b"{}").await;
    }
    let rec = Recorder::default();
    let c = consumer(&queue, memory(), &rec).build().expect("builds");
    let stats = c.stats();
    let task = tokio::spawn(c.run_until_signal());
    let start = std::time::Instant::now();
    while stats.snapshot().processed < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still running: only the signal stops it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    own.recv().await;
    let summary = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the consumer stops after SIGTERM")
        .expect("consumer task")
        .expect("graceful stop");
    assert_eq!(summary.processed, 3, "{summary:?}");
    assert_eq!(summary.in_progress, 0, "{summary:?}");
    // Everything was acked before the connection closed.
    assert_eq!(rabbit.counts(&queue).await, (0, 0));
    rabbit.cleanup().await;
}

/// `declare(Topology)` uses what exists as it is: a queue an operator created with its own
/// arguments (here `x-expires`, which a plain durable declare would contradict with
/// PRECONDITION_FAILED) is consumed, and a missing dead-letter exchange and queue are created and
/// bound, so the first dead letter lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_keeps_an_existing_queue_and_creates_the_missing_dead_letter_pair() {
    use idemq::amqp::Topology;
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("declare").await; // non-durable, with x-expires
    let (dlx, dlq) = (format!("{queue}.dlx"), format!("{queue}.dlq"));
    rabbit.publish(&queue, Some("k1"), b"{}").await;
    rabbit.publish(&queue, None, b"{}").await; // no key: dead-lettered
    let rec = Recorder::default();
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .dead_letter(dlx.as_str())
            .declare(Topology::queue().dead_letter_queue(dlq.clone())),
    );
    run.wait(Duration::from_secs(20), "2 finished", |s| s.finished() == 2)
        .await;
    let stats = run.stop().await;
    assert_eq!((stats.processed, stats.dead_lettered), (1, 1), "{stats:?}");
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(
        dead[0].header("x-idemq-reason").as_deref(),
        Some("missing-idempotency-key")
    );
    rabbit.delete_at_cleanup(&[&dlq], &[&dlx]);
    rabbit.cleanup().await;
}
