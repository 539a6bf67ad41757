//! The engine on the Redis store: the contract's invariants with several consumers sharing one
//! Redis (each with its own connection, as separate processes would have).
#![cfg(feature = "redis")]

mod support;

use idemq::store::redis::RedisStore;
use idemq::store::Store;
use idemq::{
    CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message,
    RetryCause, Source,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis_server::PrivateRedis;
use support::services::{redis_url, require_redis, unique};

fn msg(key: &str, payload: &str) -> Arc<Message> {
    Arc::new(
        Message::new(payload.to_string(), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

fn config(scope: &str, lease: Duration) -> EngineConfig {
    let mut c = EngineConfig::new(scope);
    c.lease = lease;
    c.retention = Duration::from_secs(60);
    c.retry_backoff = idemq::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    c
}

async fn redis_store(url: &str, prefix: &str) -> Arc<dyn Store> {
    Arc::new(
        RedisStore::builder(url)
            .prefix(prefix)
            .timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(300))
            .build()
            .await
            .expect("connect"),
    )
}

type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// An engine whose handler takes `work` and counts runs per key.
fn engine(
    store: Arc<dyn Store>,
    cfg: EngineConfig,
    runs: Runs,
    work: Duration,
) -> Engine<impl idemq::Handler> {
    Engine::new(store, cfg, move |ctx: HandlerContext| {
        let runs = runs.clone();
        async move {
            let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            *runs.lock().expect("runs").entry(key).or_default() += 1;
            tokio::time::sleep(work).await;
            Ok::<_, HandlerError>(ctx.message.payload.len())
        }
    })
    .expect("engine")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_across_consumers_run_the_handler_once() {
    if !require_redis() {
        return;
    }
    let (prefix, scope) = (unique("idemq-eng"), unique("orders"));
    let runs: Runs = Arc::default();
    let mut engines = Vec::new();
    for _ in 0..4 {
        let store = redis_store(&redis_url(), &prefix).await;
        engines.push(Arc::new(engine(
            store,
            config(&scope, Duration::from_secs(5)),
            runs.clone(),
            Duration::from_millis(50),
        )));
    }
    // 20 keys, every key delivered once to each of the 4 consumers at the same time.
    let mut tasks = Vec::new();
    for k in 0..20 {
        for e in &engines {
            let e = e.clone();
            let m = msg(&format!("order-{k}"), "{\"amount\":5}");
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
            Disposition::Replayed { outcome } => {
                assert_eq!(&outcome.body[..], b"12");
                replayed += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((processed, replayed), (20, 60));
    let runs = runs.lock().expect("runs");
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumers_key_is_taken_over_after_its_lease() {
    if !require_redis() {
        return;
    }
    let (prefix, scope) = (unique("idemq-eng"), unique("orders"));
    let lease = Duration::from_millis(800);
    let runs: Runs = Arc::default();
    let crashing = Arc::new(engine(
        redis_store(&redis_url(), &prefix).await,
        config(&scope, lease),
        runs.clone(),
        Duration::from_secs(3600),
    ));
    let m = msg("pay-1", "p");
    // The first consumer claims and then "crashes": its task (and lease renewal) disappears.
    let doomed = {
        let (e, m) = (crashing.clone(), m.clone());
        tokio::spawn(async move { e.process(m, &CancellationToken::new()).await })
    };
    while runs.lock().expect("runs").is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.abort();
    let crashed_at = Instant::now();

    let survivor = engine(
        redis_store(&redis_url(), &prefix).await,
        config(&scope, lease),
        runs.clone(),
        Duration::from_millis(10),
    );
    let stop = CancellationToken::new();
    let d = loop {
        match survivor.process(m.clone(), &stop).await {
            Disposition::Retry { after, .. } => tokio::time::sleep(after).await,
            other => break other,
        }
    };
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    let took = crashed_at.elapsed();
    // Not before the lease ends (the owner might still be alive), and within lease + one retry
    // interval after it.
    assert!(
        took >= lease - Duration::from_millis(150) && took < lease + Duration::from_secs(1),
        "takeover took {took:?}"
    );
    assert_eq!(runs.lock().expect("runs").get("pay-1"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_closed() {
    let Some(mut server) = PrivateRedis::start(&[]) else {
        return;
    };
    let runs: Runs = Arc::default();
    let e = engine(
        redis_store(&server.url(), "idemq").await,
        config("orders", Duration::from_secs(5)),
        runs.clone(),
        Duration::ZERO,
    );
    server.kill();
    let d = e.process(msg("k", "p"), &CancellationToken::new()).await;
    assert!(
        matches!(
            d,
            Disposition::Retry {
                cause: RetryCause::StoreUnavailable { .. },
                ..
            }
        ),
        "{d:?}"
    );
    assert!(
        runs.lock().expect("runs").is_empty(),
        "the handler must not run"
    );
}
