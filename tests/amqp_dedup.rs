//! Deduplication over a real RabbitMQ: duplicates, competing consumers and request/reply replays.
#![cfg(feature = "amqp")]

mod support;

use idemq::Store;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Duration;
use support::amqp::{consumer, memory, redis, Rabbit, Recorder, Running};

with_stores!(
    concurrency_one_runs_handlers_in_queue_order,
    published_twice_runs_once,
    four_consumers_eight_copies_each_key_once,
    rpc_replay_returns_the_stored_reply
);

/// With `concurrency(1)` one delivery is in process at a time (claim, handler, outcome), so
/// handlers run in queue order even though a Redis claim takes a round trip (docs/semantics.md,
/// "Handler slots").
async fn concurrency_one_runs_handlers_in_queue_order(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("in-order").await;
    let keys: Vec<String> = (0..30).map(|i| format!("order-{i:02}")).collect();
    for key in &keys {
        rabbit.publish(&queue, Some(key), b"{}").await;
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let builder = consumer(&queue, store, &Recorder::default())
        .concurrency(1)
        .handler(move |ctx: idemq::HandlerContext| {
            let record = record.clone();
            async move {
                let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
                record.lock().unwrap().push(key);
                Ok::<_, idemq::HandlerError>(())
            }
        });
    let run = Running::start(builder);
    run.wait(Duration::from_secs(30), "30 processed", |s| {
        s.processed == 30
    })
    .await;
    run.stop().await;
    assert_eq!(*seen.lock().unwrap(), keys);
    rabbit.cleanup().await;
}

async fn published_twice_runs_once(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("twice").await;
    let rec = Recorder::default();
    for i in 0..10 {
        let key = format!("order-{i}");
        let body = format!("{{\"n\":{i}}}");
        rabbit.publish(&queue, Some(&key), body.as_bytes()).await;
        rabbit.publish(&queue, Some(&key), body.as_bytes()).await;
    }
    let run = Running::start(consumer(&queue, store, &rec));
    run.wait(Duration::from_secs(20), "20 settled", |s| {
        s.finished() == 20
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(stats.processed, 10, "{stats:?}");
    assert_eq!(stats.replayed, 10, "{stats:?}");
    for i in 0..10 {
        assert_eq!(rec.succeeded(&format!("order-{i}")), 1);
        assert_eq!(rec.started(&format!("order-{i}")), 1);
    }
    assert_eq!(
        rabbit.counts(&queue).await,
        (0, 0),
        "queue empty, no consumer"
    );
    rabbit.cleanup().await;
}

async fn four_consumers_eight_copies_each_key_once(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let rabbit = Arc::new(rabbit);
    let queue = rabbit.queue("four").await;
    let rec = Recorder::default();
    let consumers: Vec<Running> = (0..4)
        .map(|_| Running::start(consumer(&queue, store.clone(), &rec)))
        .collect();
    const KEYS: usize = 40;
    const COPIES: usize = 8;
    // Eight publishers each send one copy of every key at the same time.
    let publishers: Vec<_> = (0..COPIES)
        .map(|_| {
            let rabbit = rabbit.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                for k in 0..KEYS {
                    let key = format!("k-{k}");
                    rabbit
                        .publish(&queue, Some(&key), br#"{"sleep_ms":15}"#)
                        .await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let total = (KEYS * COPIES) as u64;
    let start = std::time::Instant::now();
    loop {
        let settled: u64 = consumers
            .iter()
            .map(|c| c.stats.snapshot().finished())
            .sum();
        if settled == total {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "only {settled} of {total} settled"
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
    assert_eq!(runs.len(), KEYS, "every key ran");
    assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
    // All consumers are gone: anything left unacked would be back in the queue now.
    assert_eq!(
        rabbit.counts(&queue).await,
        (0, 0),
        "nothing unacked, nothing left"
    );
    if let Ok(r) = Arc::try_unwrap(rabbit) {
        r.cleanup().await;
    }
}

async fn rpc_replay_returns_the_stored_reply(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("rpc").await;
    let replies = rabbit.queue("rpc-replies").await;
    let rec = Recorder::default();
    let run = Running::start(consumer(&queue, store, &rec));
    let request = |corr: &str| {
        let mut h = FieldTable::default();
        h.insert(
            "Idempotency-Key".into(),
            AMQPValue::LongString("quote-1".into()),
        );
        BasicProperties::default()
            .with_headers(h)
            .with_reply_to(replies.as_str().into())
            .with_correlation_id(corr.into())
    };
    rabbit
        .publish_props("", &queue, b"{\"amount\":10}", request("corr-1"))
        .await;
    let first = rabbit
        .wait_drain(&replies, 1, Duration::from_secs(10))
        .await;
    assert_eq!(first.len(), 1, "one reply to the first request");
    // The client retries the same request (e.g. after a timeout).
    rabbit
        .publish_props("", &queue, b"{\"amount\":10}", request("corr-1"))
        .await;
    let second = rabbit
        .wait_drain(&replies, 1, Duration::from_secs(10))
        .await;
    assert_eq!(second.len(), 1, "one reply to the replayed request");
    let stats = run.stop().await;

    assert_eq!(rec.started("quote-1"), 1, "handler ran once");
    assert_eq!(first[0].body, second[0].body, "identical stored reply");
    assert_eq!(first[0].header("Idempotent-Replay"), None);
    assert_eq!(
        second[0].header("Idempotent-Replay").as_deref(),
        Some("true")
    );
    for r in [&first[0], &second[0]] {
        assert_eq!(
            r.props.correlation_id().as_ref().map(|c| c.as_str()),
            Some("corr-1")
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&first[0].body).expect("json reply");
    assert_eq!(body["key"], "quote-1");
    assert_eq!(
        (stats.processed, stats.replayed, stats.amqp.replies),
        (1, 1, 2)
    );
    assert_eq!(rabbit.counts(&queue).await.0, 0);
    rabbit.cleanup().await;
}
