//! The order examples' `--metrics-addr`, scraped as Prometheus and a probe would: started as
//! processes on a free port, fed three keys, a duplicate and a keyless message, then `/metrics`
//! must count exactly that (processed = distinct keys, replayed = duplicates, dead-lettered = the
//! keyless one) and `/healthz` and `/readyz` must answer 200 with the health report.
//!
//! Needs the example binaries (`cargo test --all-features` builds examples before running tests;
//! with `--test examples_metrics` alone, build them first: `cargo build --all-features --example
//! amqp_orders --example kafka_orders`). Run with `--nocapture` to see the scrape.
#![cfg(unix)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::example_process::ExampleProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The address the example printed as `serving http://ADDR`.
async fn http_addr(example: &ExampleProcess) -> String {
    example
        .wait_for_stderr(Duration::from_secs(60), |l| {
            l.split_once("serving http://")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_string)
        })
        .await
}

/// SIGTERM; the example must exit cleanly.
fn terminate(example: ExampleProcess) {
    let (status, _, stderr) = example.terminate();
    assert!(status.success(), "clean exit: {status:?}\n{stderr}");
}

/// `GET path` over a fresh connection: status code, content type and body.
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut raw))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then_some((rest, value))
        })
        .filter(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("sample value"))
        .sum()
}

/// Scrapes until `idemq_messages_total` counts `finished` decisions (the consumer is done), then
/// checks each decision, the probes, and returns the scrape.
async fn check_scrape(addr: &str, scope: &str) -> String {
    let decided = |text: &str| {
        ["processed", "replayed", "dead_letter"]
            .iter()
            .map(|d| sample(text, "idemq_messages_total", &[("decision", d)]))
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (status, content_type, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        if decided(&text) >= 5.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "5 decisions not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let scoped = |decision: &str| {
        sample(
            &text,
            "idemq_messages_total",
            &[("decision", decision), ("scope", scope)],
        )
    };
    assert_eq!(scoped("processed"), 3.0, "one per distinct key:\n{text}");
    assert_eq!(scoped("replayed"), 1.0, "the duplicate:\n{text}");
    assert_eq!(scoped("dead_letter"), 1.0, "the keyless one:\n{text}");
    assert_eq!(
        sample(
            &text,
            "idemq_messages_total",
            &[
                ("decision", "dead_letter"),
                ("reason", "missing-idempotency-key")
            ]
        ),
        1.0
    );
    assert_eq!(decided(&text), 5.0, "nothing else decided:\n{text}");
    // Histograms as the Grafana dashboard queries them (`_bucket`), not summaries.
    for series in [
        "idemq_store_latency_seconds_bucket",
        "idemq_handler_duration_seconds_bucket",
        "# HELP idemq_messages_total",
    ] {
        assert!(text.contains(series), "{series} served:\n{text}");
    }

    for path in ["/healthz", "/readyz"] {
        let (status, content_type, body) = get(addr, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(content_type, "application/json");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON report");
        assert_eq!(report["state"], "running", "{body}");
        assert_eq!(
            (&report["live"], &report["ready"]),
            (&true.into(), &true.into())
        );
        assert_eq!(report["store"]["reachable"], true, "{body}");
    }
    let (status, _, _) = get(addr, "/nothing").await;
    assert_eq!(status, 404);
    println!("--- GET /metrics\n{text}");
    let (_, _, ready) = get(addr, "/readyz").await;
    println!("--- GET /readyz\n{ready}");
    text
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_orders_serves_metrics_that_count_what_happened_and_probes() {
    use support::amqp::Rabbit;
    use support::services::{amqp_url, example_binary};

    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(bin) = example_binary("amqp_orders") else {
        return;
    };
    let queue = rabbit.durable_queue("scrape").await;
    let (dlx, dlq) = (format!("{queue}.dlx"), format!("{queue}.dlq"));
    for key in [Some("order-1"), Some("order-2"), Some("order-1"), None] {
        rabbit.publish(&queue, key, br#"{"amount":1}"#).await;
    }
    rabbit
        .publish(&queue, Some("order-3"), br#"{"amount":3}"#)
        .await;

    let mut cmd = Command::new(bin);
    cmd.args(["--amqp-url", &amqp_url(), "--queue", &queue])
        .args(["--dead-letter-exchange", &dlx, "--store", "memory"])
        .args(["--metrics-addr", "127.0.0.1:0"]);
    let example = ExampleProcess::start(cmd, "info,librdkafka=warn");
    let addr = http_addr(&example).await;
    check_scrape(&addr, &queue).await;
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(
        dead.len(),
        1,
        "the keyless message is in the dead-letter queue"
    );
    terminate(example);

    rabbit.delete_at_cleanup(&[&dlq], &[&dlx]);
    rabbit.cleanup().await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_orders_serves_metrics_that_count_what_happened_and_probes() {
    use support::kafka::{example_orders, produce, read_all, Broker};
    use support::services::{example_binary, unique};

    let Some(bin) = example_binary("kafka_orders") else {
        return;
    };
    // An in-process MockCluster listens on a real port, so the example process can reach it.
    let broker = Broker::mock();
    let (topic, group) = (unique("scrape"), unique("scrape-g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await;
    broker.create_topic(&dlq, 1).await;
    let recs = example_orders();
    produce(&broker.bootstrap(), &topic, &recs).await;

    let mut cmd = Command::new(bin);
    cmd.args(["--bootstrap", &broker.bootstrap(), "--topic", &topic])
        .args(["--group", &group, "--store", "memory"])
        .args(["--dead-letter-topic", &dlq, "--metrics-addr", "127.0.0.1:0"]);
    let example = ExampleProcess::start(cmd, "info,librdkafka=warn");
    let addr = http_addr(&example).await;
    check_scrape(&addr, &group).await;
    let dead = read_all(&broker.bootstrap(), &dlq, 1, Duration::from_secs(30));
    assert_eq!(dead.len(), 1, "the keyless record is dead-lettered");
    terminate(example);
}
