//! Consumers on a Redis Cluster store: the engine with several consumers, an AMQP consumer
//! (RabbitMQ) and a Kafka consumer (librdkafka's MockCluster) deduplicate with their records
//! spread over all three primaries.
#![cfg(all(feature = "redis", feature = "amqp", feature = "kafka"))]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::Store;
use idemq::{
    CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message,
    Source,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::redis_cluster::{keys_per_primary, primaries_of, shared_url};
use support::services::unique;

/// A cluster store with a unique prefix, and that prefix.
async fn cluster_store() -> Option<(Arc<dyn Store>, String, String)> {
    let url = shared_url()?;
    let prefix = unique("idemq-ccons");
    let store = RedisStore::builder(url.clone())
        .prefix(prefix.clone())
        .build()
        .await
        .expect("connect to the Redis Cluster");
    Some((Arc::new(store), prefix, url))
}

/// Asserts that the records of `prefix` lie on every one of the three primaries.
fn assert_on_every_primary(url: &str, prefix: &str, total: usize) {
    let spread = keys_per_primary(&primaries_of(url), &format!("{prefix}:*"));
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(spread.iter().all(|(_, n)| *n > 0), "{spread:?}");
    assert_eq!(
        spread.iter().map(|(_, n)| n).sum::<usize>(),
        total,
        "{spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_copies_across_consumers_run_once() {
    let Some((_, prefix, url)) = cluster_store().await else {
        return;
    };
    let scope = unique("orders");
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut engines = Vec::new();
    for _ in 0..4 {
        // Each consumer has its own connection, as separate processes would.
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::builder(url.clone())
                .prefix(prefix.clone())
                .build()
                .await
                .expect("connect"),
        );
        let runs = runs.clone();
        let mut cfg = EngineConfig::new(&scope);
        cfg.retry_backoff =
            idemq::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        engines.push(Arc::new(
            Engine::new(store, cfg, move |ctx: HandlerContext| {
                let runs = runs.clone();
                async move {
                    let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
                    *runs.lock().expect("runs").entry(key).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, HandlerError>("ok")
                }
            })
            .expect("engine"),
        ));
    }
    const KEYS: usize = 60;
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        for e in &engines {
            let e = e.clone();
            let m = Arc::new(
                Message::new("{}".to_string(), Source::Other("test".into()))
                    .with_header("Idempotency-Key", format!("order-{k}")),
            );
            tasks.push(tokio::spawn(async move {
                let stop = CancellationToken::new();
                loop {
                    match e.process(m.clone(), &stop).await {
                        Disposition::Retry { after, .. } => tokio::time::sleep(after).await,
                        other => return other,
                    }
                }
            }));
        }
    }
    let (mut processed, mut replayed) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Disposition::Processed { .. } => processed += 1,
            Disposition::Replayed { .. } => replayed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((processed, replayed), (KEYS, 3 * KEYS));
    let runs = runs.lock().expect("runs");
    assert_eq!(runs.len(), KEYS);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert_on_every_primary(&url, &prefix, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_competing_consumers_run_each_key_once() {
    use support::amqp::{consumer, Rabbit, Recorder, Running};
    let Some((store, prefix, url)) = cluster_store().await else {
        return;
    };
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("cluster").await;
    let rec = Recorder::default();
    const KEYS: usize = 40;
    for k in 0..KEYS {
        let key = format!("k-{k}");
        for _ in 0..2 {
            rabbit.publish(&queue, Some(&key), br#"{"n":1}"#).await;
        }
    }
    let consumers: Vec<Running> = (0..2)
        .map(|_| Running::start(consumer(&queue, store.clone(), &rec)))
        .collect();
    let start = std::time::Instant::now();
    loop {
        let settled: u64 = consumers
            .iter()
            .map(|c| c.stats.snapshot().finished())
            .sum();
        if settled == 2 * KEYS as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {settled} settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut processed = 0;
    for c in consumers {
        let s = c.stop().await;
        assert_eq!(s.dead_lettered + s.amqp.rejected, 0, "{s:?}");
        processed += s.processed;
    }
    assert_eq!(processed, KEYS as u64);
    let runs = rec.successes();
    assert_eq!(runs.len(), KEYS);
    assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
    assert_eq!(rabbit.counts(&queue).await, (0, 0));
    rabbit.cleanup().await;
    assert_on_every_primary(&url, &prefix, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_two_consumers_with_a_rebalance_run_each_key_once() {
    use support::kafka::{scenario_two_consumers_rebalance, Broker};
    let Some((store, prefix, url)) = cluster_store().await else {
        return;
    };
    scenario_two_consumers_rebalance(&Broker::mock(), store).await;
    // The scenario's 40 keys.
    assert_on_every_primary(&url, &prefix, 40);
}
