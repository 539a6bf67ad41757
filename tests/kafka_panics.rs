//! Panics on the Kafka path (issue 12): neither a handler panic nor a panic in the per-record
//! task may stop a partition from committing. Runs on librdkafka's in-process MockCluster.
#![cfg(feature = "kafka")]

mod support;

use async_trait::async_trait;
use idemq::store::MemoryStore;
use idemq::{
    CancellationToken, Disposition, Engine, HandlerContext, HandlerError, Message, Processor,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::kafka::*;
use support::services::unique;

/// Three records whose handler panics synchronously (before returning its future) on the first
/// attempt, between healthy ones: each panic is a retriable failure retried in place, and the
/// partition commits everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_panics_before_its_future_and_the_partition_keeps_committing() {
    let broker = Broker::mock();
    let (topic, group) = (unique("panic"), unique("g"));
    broker.create_topic(&topic, 1).await;
    let keys = ["a", "boom-1", "b", "boom-2", "boom-3", "c"];
    let recs: Vec<Rec> = keys.iter().map(|k| Rec::keyed(k, "{}")).collect();
    produce(&broker.bootstrap(), &topic, &recs).await;
    let runs = Runs::default();
    let r = runs.clone();
    let mut b = idemq::kafka::KafkaConsumerBuilder::new()
        .bootstrap_servers(broker.bootstrap())
        .group_id(&group)
        .topic(&topic)
        .store(Arc::new(MemoryStore::new()))
        .engine_config(fast_engine(&group))
        .commit_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |ctx: HandlerContext| {
            let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
            if key.starts_with("boom") && ctx.attempt == 1 {
                panic!("synchronous handler bug on {key}");
            }
            let r = r.clone();
            async move {
                r.record(&key);
                Ok::<_, HandlerError>(())
            }
        });
    for (k, v) in broker.consumer_settings() {
        b = b.set(k, v);
    }
    let c = Running::start(b.build().expect("builds"));
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[keys.len() as i64],
        Duration::from_secs(30),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!((s.processed, s.retries), (6, 3), "{s:?}");
    assert_eq!(runs.total(), 6);
    assert_eq!(runs.repeated(), vec![]);
}

/// Panics in the per-record task itself (here: the processor) are retried, not lost: the record
/// is processed again and the partition commits past it.
struct PanicsFirst {
    engine: Arc<dyn Processor>,
    panicked: Mutex<HashSet<String>>,
    panics: AtomicU32,
}

#[async_trait]
impl Processor for PanicsFirst {
    async fn process(&self, message: Arc<Message>, shutdown: &CancellationToken) -> Disposition {
        let key = message
            .header("Idempotency-Key")
            .flatten()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if key.starts_with("boom") && self.panicked.lock().unwrap().insert(key.clone()) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("adapter-level bug on {key}");
        }
        self.engine.process(message, shutdown).await
    }

    fn scope(&self) -> &str {
        self.engine.scope()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_record_task_is_retried_and_the_partition_keeps_committing() {
    let broker = Broker::mock();
    let (topic, group) = (unique("panic-task"), unique("g"));
    broker.create_topic(&topic, 1).await;
    let keys = ["a", "boom-1", "b", "boom-2", "c"];
    let recs: Vec<Rec> = keys.iter().map(|k| Rec::keyed(k, "{}")).collect();
    produce(&broker.bootstrap(), &topic, &recs).await;
    let runs = Runs::default();
    let r = runs.clone();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        fast_engine(&group),
        move |ctx: HandlerContext| {
            let r = r.clone();
            async move {
                r.record(ctx.key.map(|k| k.to_string()).as_deref().unwrap_or(""));
                Ok::<_, HandlerError>(())
            }
        },
    )
    .expect("engine");
    let processor = Arc::new(PanicsFirst {
        engine: Arc::new(engine),
        panicked: Mutex::new(HashSet::new()),
        panics: AtomicU32::new(0),
    });
    let mut b = idemq::kafka::KafkaConsumerBuilder::new()
        .bootstrap_servers(broker.bootstrap())
        .group_id(&group)
        .topic(&topic)
        .processor(processor.clone())
        .commit_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_secs(5));
    for (k, v) in broker.consumer_settings() {
        b = b.set(k, v);
    }
    let c = Running::start(b.build().expect("builds"));
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[keys.len() as i64],
        Duration::from_secs(30),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!(processor.panics.load(Ordering::SeqCst), 2);
    assert_eq!(s.processed, 5, "{s:?}");
    assert_eq!(runs.total(), 5);
    assert_eq!(runs.repeated(), vec![]);
}
