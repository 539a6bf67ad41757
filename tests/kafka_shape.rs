//! The Kafka consumer's shape shared with the AMQP one, against librdkafka's MockCluster: the
//! escape hatches (a whole `ClientConfig`, [`KafkaHooks`] for librdkafka's events) are applied,
//! and `run_until_signal` stops gracefully on SIGTERM.
#![cfg(all(feature = "kafka", unix))]

mod support;

use idemq::kafka::{KafkaConsumer, KafkaHooks};
use idemq::store::MemoryStore;
use idemq::Store;
use rdkafka::consumer::Rebalance;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::kafka::*;
use support::services::unique;

/// What the hooks saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Events>>);

#[derive(Default, Debug)]
struct Events {
    assigned: usize,
    revoked_before: usize,
    client_ids: Vec<String>,
    /// Results of commits librdkafka reports through the context (asynchronous ones).
    commits_ok: usize,
    errors: usize,
}

impl KafkaHooks for Seen {
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.0.lock().unwrap().revoked_before += 1;
        }
    }

    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.0.lock().unwrap().assigned += tpl.count();
        }
    }

    fn statistics(&self, statistics: Statistics) {
        self.0.lock().unwrap().client_ids.push(statistics.client_id);
    }

    fn error(&self, _error: &KafkaError, _reason: &str) {
        self.0.lock().unwrap().errors += 1;
    }

    fn commit(&self, result: &KafkaResult<()>, _offsets: &TopicPartitionList) {
        if result.is_ok() {
            self.0.lock().unwrap().commits_ok += 1;
        }
    }
}

/// A `ClientConfig` built elsewhere reaches librdkafka (its `client.id` comes back in
/// librdkafka's own statistics), and idemq's context forwards rebalances, statistics and commit
/// results to the hooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_config_and_hooks_are_applied() {
    let broker = Broker::mock();
    let (topic, group) = (unique("hooks"), unique("g"));
    broker.create_topic(&topic, 2).await;
    let recs: Vec<Rec> = (0..6).map(|k| Rec::keyed(&format!("k{k}"), "{}")).collect();
    produce(&broker.bootstrap(), &topic, &recs).await;
    let client_id = unique("idemq-shape");
    let mut extra = ClientConfig::new();
    extra
        .set("client.id", &client_id)
        .set("statistics.interval.ms", "100");
    let seen = Seen::default();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let hooks = seen.clone();
    let c = consumer(&broker, &group, &topic, store, &Runs::default(), 0, |b| {
        b.client_config(&extra).hooks(hooks)
    });
    let run = Running::start(c);
    let stats = run.stats.clone();
    wait_for("6 finished", Duration::from_secs(30), || {
        stats.snapshot().finished() >= 6
    })
    .await;
    let events = seen.clone();
    wait_for("statistics", Duration::from_secs(10), || {
        !events.0.lock().unwrap().client_ids.is_empty()
    })
    .await;
    let summary = run.shutdown().await;
    assert_eq!(summary.processed, 6, "{summary:?}");
    let e = seen.0.lock().unwrap();
    let ids = e.client_ids.len();
    assert_eq!(
        e.assigned, 2,
        "assigned {} revoked {} commits {} errors {} statistics {ids}",
        e.assigned, e.revoked_before, e.commits_ok, e.errors
    );
    // Closing leaves the group: the revocation reaches the hook after idemq's own handling.
    assert!(e.revoked_before >= 1, "revoked {}", e.revoked_before);
    assert!(
        e.client_ids.iter().all(|id| *id == client_id),
        "{:?}",
        e.client_ids.first()
    );
    assert_eq!(e.errors, 0);
}

/// `run_until_signal` ends with the same graceful shutdown as a cancelled token when the process
/// gets SIGTERM, and returns the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_until_signal_stops_gracefully_on_sigterm() {
    // Our own listener first: from now on SIGTERM cannot end the test process.
    let mut own = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM listener");
    let broker = Broker::mock();
    let (topic, group) = (unique("sigterm"), unique("g"));
    broker.create_topic(&topic, 1).await;
    let recs: Vec<Rec> = (0..3).map(|k| Rec::keyed(&format!("k{k}"), "{}")).collect();
    produce(&broker.bootstrap(), &topic, &recs).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let c: KafkaConsumer = consumer(&broker, &group, &topic, store, &Runs::default(), 0, |b| b);
    let stats = c.stats();
    let task = tokio::spawn(c.run_until_signal());
    wait_for("3 processed", Duration::from_secs(30), || {
        stats.snapshot().processed >= 3
    })
    .await;
    // Still running: only the signal stops it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    own.recv().await;
    let summary = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the consumer stops after SIGTERM")
        .expect("consumer task")
        .expect("graceful stop");
    assert_eq!(summary.processed, 3, "{summary:?}");
    // The graceful shutdown committed what finished.
    assert_eq!(committed(&broker.bootstrap(), &group, &topic, 1), vec![3]);
}
