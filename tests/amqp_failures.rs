//! Failures over a real RabbitMQ: store outage, connection loss mid-handler, forced reconnects and
//! graceful shutdown. Every test closes only its own, uniquely named connection.
#![cfg(feature = "amqp")]

mod support;

use idemq::store::{RecordKey, RecordState};
use idemq::{IdempotencyKey, Store};
use std::sync::Arc;
use std::time::Duration;
use support::amqp::{consumer, eventually, force_close, memory, redis, Rabbit, Recorder, Running};
use support::faulty::FaultyStore;
use support::redis_server::PrivateRedis;
use support::services::unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_outage_acks_nothing_runs_nothing_then_recovers() {
    let faulty = FaultyStore::new(memory());
    let (down, up) = (faulty.clone(), faulty.clone());
    outage(
        faulty,
        move || down.set_down(true),
        move || up.set_down(false),
    )
    .await;
}

/// The real thing: the Redis server the store talks to is killed mid-stream, then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_mid_stream_acks_nothing_runs_nothing_then_recovers() {
    let Some(redis) = PrivateRedis::start(&[]) else {
        return;
    };
    let store = idemq::store::connect(&redis.url())
        .await
        .expect("redis store");
    let redis = Arc::new(std::sync::Mutex::new(redis));
    let (down, up) = (redis.clone(), redis.clone());
    outage(
        store,
        move || down.lock().unwrap().kill(),
        move || up.lock().unwrap().restart(),
    )
    .await;
}

/// Store goes down after 3 keys; 10 more arrive; nothing may be acked or run until it is back.
async fn outage(store: Arc<dyn Store>, take_down: impl FnOnce(), bring_back: impl FnOnce()) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("outage").await;
    let rec = Recorder::default();
    // Two handlers at once: up to 6 deliveries in process, fewer than the 10 that arrive.
    let run = Running::start(consumer(&queue, store, &rec).concurrency(2));
    for i in 0..3 {
        rabbit
            .publish(&queue, Some(&format!("before-{i}")), b"{}")
            .await;
    }
    run.wait(Duration::from_secs(10), "3 processed", |s| s.processed == 3)
        .await;

    take_down();
    for i in 0..10 {
        rabbit
            .publish(&queue, Some(&format!("during-{i}")), b"{}")
            .await;
    }
    run.wait(Duration::from_secs(10), "store retries", |s| {
        s.store_unavailable >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = run.stats.snapshot();
    assert_eq!(
        during.finished(),
        3,
        "nothing acked while the store is down: {during:?}"
    );
    assert_eq!(
        during.amqp.requeued + during.dead_lettered + during.amqp.rejected,
        0
    );
    assert_eq!(
        rec.total_successes(),
        3,
        "no handler ran while the store is down"
    );
    assert!(
        during.received - 3 <= 6,
        "intake bounded by the deliveries in process (3 x concurrency) while paused: {during:?}"
    );

    bring_back();
    run.wait(Duration::from_secs(30), "full recovery", |s| {
        s.processed == 13
    })
    .await;
    let stats = run.stop().await;
    let runs = rec.successes();
    assert_eq!(runs.len(), 13);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    assert_eq!(stats.finished(), 13, "{stats:?}");
    assert_eq!(rabbit.counts(&queue).await.0, 0);
    rabbit.cleanup().await;
}

with_stores!(
    connection_closed_mid_handler_runs_once_and_acks_after_completion,
    forced_close_under_load_reconnects_and_finishes,
);

async fn connection_closed_mid_handler_runs_once_and_acks_after_completion(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("midhandler").await;
    let rec = Recorder::default();
    let name = unique("idemq-test-midhandler");
    let run = Running::start(consumer(&queue, store.clone(), &rec).connection_name(&name));
    rabbit
        .publish(&queue, Some("slow"), br#"{"sleep_ms":5000}"#)
        .await;
    eventually(Duration::from_secs(10), "handler started", || {
        rec.started("slow") == 1
    })
    .await;
    force_close(&name).await;
    // The handler finishes and stores its outcome, but its ack is void (channel gone). The broker
    // redelivers; the copy waits for the running claim, then is acked as a replay.
    run.wait(Duration::from_secs(15), "redelivery acked", |s| {
        s.replayed == 1
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(rec.started("slow"), 1, "handler ran once");
    assert_eq!(rec.succeeded("slow"), 1);
    assert_eq!(
        stats.processed, 0,
        "the first ack could not be sent: {stats:?}"
    );
    assert_eq!(stats.amqp.left_unacked, 1, "{stats:?}");
    assert!(stats.amqp.reconnects >= 1);
    assert_eq!(rabbit.counts(&queue).await.0, 0);
    rabbit.cleanup().await;
}

async fn forced_close_under_load_reconnects_and_finishes(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("forced").await;
    let rec = Recorder::default();
    const KEYS: usize = 100;
    for k in 0..KEYS {
        for _ in 0..2 {
            rabbit
                .publish(&queue, Some(&format!("k-{k}")), br#"{"sleep_ms":150}"#)
                .await;
        }
    }
    let name = unique("idemq-test-forced");
    let run = Running::start(consumer(&queue, store.clone(), &rec).connection_name(&name));
    run.wait(Duration::from_secs(20), "some progress", |s| {
        s.finished() >= 10
    })
    .await;
    force_close(&name).await;
    run.wait(
        Duration::from_secs(30),
        "reconnected and all settled",
        |s| s.amqp.reconnects >= 1 && s.finished() >= (2 * KEYS) as u64,
    )
    .await;
    run.drained(&rabbit, &queue, Duration::from_secs(30)).await;
    let stats = run.stop().await;
    assert!(stats.amqp.reconnects >= 1, "{stats:?}");
    let runs = rec.successes();
    assert_eq!(runs.len(), KEYS);
    assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
    assert_eq!(rabbit.counts(&queue).await, (0, 0));
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_short_work_and_releases_long_work() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("shutdown").await;
    let rec = Recorder::default();
    let store = memory();
    // The engine's shutdown grace is 2 s (see test_engine).
    let run = Running::start(consumer(&queue, store.clone(), &rec));
    rabbit
        .publish(&queue, Some("short"), br#"{"sleep_ms":700}"#)
        .await;
    rabbit
        .publish(&queue, Some("long"), br#"{"sleep_ms":30000}"#)
        .await;
    eventually(Duration::from_secs(10), "both started", || {
        rec.started("short") == 1 && rec.started("long") == 1
    })
    .await;
    let begun = std::time::Instant::now();
    let stats = run.stop().await;
    assert!(
        begun.elapsed() < Duration::from_secs(12),
        "shutdown bounded by shutdown_timeout (5 s) plus closing"
    );
    assert_eq!(rec.succeeded("short"), 1, "short work finished");
    assert_eq!(stats.processed, 1, "{stats:?}");
    assert_eq!(stats.amqp.requeued, 1, "long work given back: {stats:?}");
    assert_eq!(rec.succeeded("long"), 0);
    let long = RecordKey::new(queue.as_str(), IdempotencyKey::new("long").unwrap());
    let record = store.get(&long).await.unwrap();
    assert!(
        matches!(record.map(|r| r.state), None | Some(RecordState::Released)),
        "claim released so the next consumer takes it at once"
    );
    assert_eq!(
        rabbit.counts(&queue).await,
        (1, 0),
        "long message back in the queue"
    );
    let _ = Arc::strong_count(&store);
    rabbit.cleanup().await;
}
