//! Panics on the AMQP path (issue 12), over a real RabbitMQ: more panicking deliveries than the
//! prefetch must all be settled, and intake must go on. Unsettled, each would hold a prefetch slot
//! on a healthy channel until the broker sent nothing more.
#![cfg(feature = "amqp")]

mod support;

use async_trait::async_trait;
use idemq::{
    CancellationToken, Disposition, Engine, HandlerContext, HandlerError, Message, Processor,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::amqp::{consumer, memory, test_engine, Rabbit, Recorder, Running};

const PREFETCH: u16 = 4;
const PANICKING: usize = 10;
const HEALTHY: usize = 5;

/// Successful runs by key.
#[derive(Clone, Default)]
struct Successes(Arc<Mutex<HashMap<String, u32>>>);

impl Successes {
    fn record(&self, key: &str) {
        *self.0.lock().unwrap().entry(key.to_string()).or_default() += 1;
    }

    fn check(&self) {
        let runs = self.0.lock().unwrap();
        assert_eq!(runs.len(), PANICKING + HEALTHY, "{runs:?}");
        assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
    }
}

async fn publish_all(rabbit: &Rabbit, queue: &str) {
    for i in 0..PANICKING {
        rabbit
            .publish(queue, Some(&format!("boom-{i}")), b"{}")
            .await;
    }
    for i in 0..HEALTHY {
        rabbit.publish(queue, Some(&format!("ok-{i}")), b"{}").await;
    }
}

/// The handler panics synchronously (before returning its future) on the first attempt of every
/// `boom-*` key: each panic is a retriable failure, requeued, and succeeds on its next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_prefetch_handler_panics_are_settled_and_intake_continues() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("handler-panics").await;
    publish_all(&rabbit, &queue).await;
    let ok = Successes::default();
    let o = ok.clone();
    // A lease far beyond the wait below: only a claim released right after the panic (not one
    // left to expire) lets the retry run in time.
    let mut cfg = test_engine(&queue);
    cfg.lease = Duration::from_secs(120);
    let builder = consumer(&queue, memory(), &Recorder::default())
        .engine_config(cfg)
        .prefetch(PREFETCH)
        .concurrency(usize::from(PREFETCH))
        .handler(move |ctx: HandlerContext| {
            let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
            if key.starts_with("boom") && ctx.attempt == 1 {
                panic!("synchronous handler bug on {key}");
            }
            let o = o.clone();
            async move {
                o.record(&key);
                Ok::<_, HandlerError>(())
            }
        });
    let run = Running::start(builder);
    let total = (PANICKING + HEALTHY) as u64;
    run.wait(Duration::from_secs(30), "every delivery processed", |s| {
        s.processed == total
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(stats.amqp.requeued, PANICKING as u64, "{stats:?}");
    ok.check();
    assert_eq!(rabbit.counts(&queue).await, (0, 0));
    rabbit.cleanup().await;
}

/// A processor that panics the first time it sees each `boom-*` key: a panic in the delivery task
/// itself, past the engine's own panic handling.
struct PanicsFirst {
    engine: Arc<dyn Processor>,
    seen: Mutex<HashSet<String>>,
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
        if key.starts_with("boom") && self.seen.lock().unwrap().insert(key.clone()) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("delivery task bug on {key}");
        }
        self.engine.process(message, shutdown).await
    }

    fn scope(&self) -> &str {
        self.engine.scope()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_prefetch_panicking_delivery_tasks_are_requeued_and_intake_continues() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("task-panics").await;
    publish_all(&rabbit, &queue).await;
    let ok = Successes::default();
    let o = ok.clone();
    let engine = Engine::new(memory(), test_engine(&queue), move |ctx: HandlerContext| {
        let o = o.clone();
        async move {
            o.record(ctx.key.map(|k| k.to_string()).as_deref().unwrap_or(""));
            Ok::<_, HandlerError>(())
        }
    })
    .expect("engine");
    let processor = Arc::new(PanicsFirst {
        engine: Arc::new(engine),
        seen: Mutex::new(HashSet::new()),
        panics: AtomicU32::new(0),
    });
    let builder = consumer(&queue, memory(), &Recorder::default())
        .prefetch(PREFETCH)
        .concurrency(usize::from(PREFETCH))
        .processor(processor.clone());
    let run = Running::start(builder);
    let total = (PANICKING + HEALTHY) as u64;
    run.wait(Duration::from_secs(30), "every delivery processed", |s| {
        s.processed == total
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(processor.panics.load(Ordering::SeqCst), PANICKING as u32);
    assert_eq!(stats.amqp.requeued, PANICKING as u64, "{stats:?}");
    ok.check();
    assert_eq!(rabbit.counts(&queue).await, (0, 0));
    rabbit.cleanup().await;
}
