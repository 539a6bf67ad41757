//! The idempotent Kafka consumer against librdkafka's in-process MockCluster.

mod support;

use idemq::store::MemoryStore;
use idemq::Store;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::Arc;
use std::time::Duration;
use support::kafka::*;
use support::services::unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_publishes_run_the_handler_once() {
    scenario_duplicate_publishes_run_once(&Broker::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_consumers_with_duplicates_and_a_rebalance_run_each_key_once() {
    scenario_two_consumers_rebalance(&Broker::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_missing_and_invalid_keys_are_dead_lettered_and_committed() {
    scenario_dead_letters(&Broker::mock()).await;
}
