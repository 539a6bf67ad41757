//! The consumers' health handles as a liveness/readiness probe sees them: ready once consuming, not
//! ready while the store is down (and why), ready again after, not live once stopped. Kafka on
//! librdkafka's MockCluster, AMQP on the local RabbitMQ.

mod support;

use idemq::health::{HealthHandle, PauseReason, RunState};
use idemq::store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;
use support::faulty::FaultyStore;

/// Polls `health` until `cond` holds; panics with the last report after `within`.
async fn until(
    health: &HealthHandle,
    what: &str,
    within: Duration,
    cond: impl Fn(&idemq::health::HealthReport) -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = health.report();
        if cond(&r) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle running consumer keeps beating: live under a stall limit a little above the heartbeat
/// period, for longer than that limit.
async fn stays_live_while_idle(health: &HealthHandle) {
    let strict = health.clone().with_stall_limit(Duration::from_millis(1500));
    let until = std::time::Instant::now() + Duration::from_millis(3000);
    while std::time::Instant::now() < until {
        let r = strict.report();
        assert!(r.live && r.ready, "idle but stalled? {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// While the store is down the report says so: store unreachable with the error, intake paused
/// for it, live but not ready.
/// Takes the store down, publishes one message (`publish`), and follows the report through the
/// outage: not ready, still live, the store unreachable for a growing time; then the store comes
/// back and the consumer is ready again.
async fn outage_is_reported(
    health: &HealthHandle,
    store: &FaultyStore,
    publish: impl std::future::Future<Output = ()>,
) {
    store.set_down(true);
    publish.await;
    until(health, "not ready", Duration::from_secs(30), |r| !r.ready).await;
    assert_store_outage(&health.report());
    // The outage goes on: still live, still not ready, and the time down grows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = health.report();
    assert_store_outage(&r);
    assert!(r.store.unreachable_ms >= 300, "{r:?}");
    println!("{}", serde_json::to_string(&r).unwrap());

    store.set_down(false);
    until(health, "ready again", Duration::from_secs(30), |r| r.ready).await;
}

fn assert_store_outage(r: &idemq::health::HealthReport) {
    assert_eq!(r.state, RunState::Running);
    assert!(r.live && !r.ready, "{r:?}");
    assert!(!r.store.reachable && r.store.waiting >= 1, "{r:?}");
    assert!(
        r.store
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("injected outage")),
        "{r:?}"
    );
    assert!(
        r.intake_paused.contains(&PauseReason::StoreUnavailable),
        "{r:?}"
    );
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_consumer_is_ready_when_assigned_not_ready_while_the_store_is_down_and_not_live_after_stop(
) {
    use support::kafka::{consumer, produce, Broker, Rec, Running, Runs};
    use support::services::unique;

    let broker = Broker::mock();
    let (topic, group) = (unique("health"), unique("health-g"));
    broker.create_topic(&topic, 1).await;
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let runs = Runs::default();
    let c = consumer(&broker, &group, &topic, store.clone(), &runs, 0, |b| b);
    let health = c.health();
    let r = health.report();
    assert_eq!((r.broker, r.state), ("kafka", RunState::NotStarted));
    assert!(r.live && !r.ready, "built, not running: live, not ready");

    let running = Running::start(c);
    until(&health, "ready", Duration::from_secs(30), |r| r.ready).await;
    let r = health.report();
    assert_eq!(r.state, RunState::Running);
    assert_eq!(r.kafka.map(|k| k.partitions_assigned), Some(1));
    assert!(r.store.reachable && r.intake_paused.is_empty(), "{r:?}");

    stays_live_while_idle(&health).await;

    let (bootstrap, k1) = (broker.bootstrap(), [Rec::keyed("k1", "{}")]);
    outage_is_reported(&health, &store, produce(&bootstrap, &topic, &k1)).await;
    support::kafka::wait_for("k1 handled", Duration::from_secs(30), || runs.total() == 1).await;
    let r = health.report();
    assert!(r.store.reachable && r.store.unreachable_ms == 0, "{r:?}");
    assert_eq!(r.store.waiting, 0);

    let stats = running.shutdown().await;
    assert_eq!(stats.processed, 1);
    let r = health.report();
    assert_eq!(r.state, RunState::Stopped);
    assert!(!health.is_live() && !health.is_ready(), "{r:?}");
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_consumer_is_ready_with_an_open_channel_not_ready_while_the_store_is_down_and_not_live_after_stop(
) {
    use support::amqp::{consumer, eventually, Rabbit, Recorder};

    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("health").await;
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let rec = Recorder::default();
    let c = consumer(&queue, store.clone(), &rec)
        .build()
        .expect("consumer builds");
    let health = c.health();
    let r = health.report();
    assert_eq!((r.broker, r.state), ("amqp", RunState::NotStarted));
    assert!(r.live && !r.ready, "built, not running: live, not ready");
    assert_eq!(r.amqp.map(|a| a.channel_open), Some(false));

    let stop = idemq::CancellationToken::new();
    let task = tokio::spawn(c.run(stop.clone()));
    until(&health, "ready", Duration::from_secs(30), |r| r.ready).await;
    let r = health.report();
    assert_eq!(r.amqp.map(|a| a.channel_open), Some(true));
    assert!(r.store.reachable && r.intake_paused.is_empty(), "{r:?}");

    stays_live_while_idle(&health).await;

    outage_is_reported(&health, &store, rabbit.publish(&queue, Some("k1"), b"{}")).await;
    eventually(Duration::from_secs(30), "k1 handled", || {
        rec.total_successes() == 1
    })
    .await;

    stop.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("stops within its deadline")
        .expect("consumer task")
        .expect("consumer run");
    assert_eq!(stats.processed, 1);
    let r = health.report();
    assert_eq!(r.state, RunState::Stopped);
    assert!(!r.live && !r.ready, "{r:?}");
    assert_eq!(r.amqp.map(|a| a.channel_open), Some(false));
    rabbit.cleanup().await;
}
