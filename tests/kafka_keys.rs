//! The Kafka record key as the idempotency key, with per-topic scopes, over librdkafka's
//! MockCluster: what a service whose producers key their records (and set no header) configures.
#![cfg(feature = "kafka")]

mod support;

use idemq::kafka::KafkaConsumerBuilder;
use idemq::store::{MemoryStore, RecordKey};
use idemq::{HandlerContext, HandlerError, IdempotencyKey, KeySource, Scope, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::kafka::*;
use support::services::unique;

/// A record keyed only by its Kafka record key (no header).
fn by_record_key(key: &str, partition: i32) -> Rec {
    Rec {
        partition: Some(partition),
        kafka_key: Some(key.to_string()),
        headers: Vec::new(),
        payload: format!("{{\"order\":\"{key}\"}}").into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_key_deduplicates_per_topic() {
    let broker = Broker::mock();
    let (orders, refunds, group) = (unique("orders"), unique("refunds"), unique("g"));
    broker.create_topic(&orders, 2).await;
    broker.create_topic(&refunds, 1).await;
    // Every order key twice (on both partitions), and the same keys once on the refunds topic.
    let copies: Vec<Rec> = (0..5)
        .flat_map(|k| [0, 1].map(|p| by_record_key(&format!("o-{k}"), p)))
        .collect();
    produce(&broker.bootstrap(), &orders, &copies).await;
    let once: Vec<Rec> = (0..5)
        .map(|k| by_record_key(&format!("o-{k}"), 0))
        .collect();
    produce(&broker.bootstrap(), &refunds, &once).await;

    // (topic, idempotency key, record key as the handler sees it, has a timestamp)
    type Seen = Arc<Mutex<Vec<(String, String, Option<Vec<u8>>, bool)>>>;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut b = KafkaConsumerBuilder::new()
        .bootstrap_servers(broker.bootstrap())
        .group_id(&group)
        .topics([orders.clone(), refunds.clone()])
        .store(store.clone())
        .engine_config(fast_engine(&group))
        .key_source(KeySource::KafkaKey)
        .scope(Scope::PerTopic)
        .commit_interval(Duration::from_millis(100))
        .handler(move |ctx: HandlerContext| {
            let s = s.clone();
            async move {
                let kafka = ctx.kafka().expect("Kafka metadata");
                s.lock().expect("lock").push((
                    kafka.topic.clone(),
                    ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default(),
                    ctx.kafka_key().map(<[u8]>::to_vec),
                    kafka.timestamp.is_some(),
                ));
                Ok::<_, HandlerError>(())
            }
        });
    for (k, v) in broker.consumer_settings() {
        b = b.set(k, v);
    }
    let c = Running::start(b.build().expect("consumer builds"));
    let stats = c.stats.clone();
    wait_for("15 records finished", Duration::from_secs(30), || {
        stats.snapshot().finished() >= 15
    })
    .await;
    wait_committed(
        &broker.bootstrap(),
        &group,
        &orders,
        &[5, 5],
        Duration::from_secs(10),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!(
        (s.processed, s.replayed, s.dead_lettered),
        (10, 5, 0),
        "{s:?}"
    );

    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen.len(), 10, "each key once per topic: {seen:?}");
    for (topic, key, record_key, stamped) in &seen {
        assert!(topic == &orders || topic == &refunds);
        assert_eq!(record_key.as_deref(), Some(key.as_bytes()));
        assert!(stamped, "records carry their timestamp");
    }
    // The records live in `{group}/{topic}`.
    for topic in [&orders, &refunds] {
        let record = RecordKey::new(
            format!("{group}/{topic}"),
            IdempotencyKey::new("o-0").unwrap(),
        );
        assert!(store.get(&record).await.unwrap().is_some(), "{record}");
    }
}
