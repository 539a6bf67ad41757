//! RabbitMQ fixtures for the AMQP consumer tests: a setup connection with confirms, unique queues
//! that expire on their own if a test dies, a recording handler, and closing one named connection.
#![cfg(feature = "amqp")]

use idemq::amqp::{AmqpConsumer, AmqpConsumerBuilder, ConsumerStats, StatsHandle};
use idemq::store::MemoryStore;
use idemq::{CancellationToken, EngineConfig, HandlerContext, HandlerError, Store};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

use super::services::{amqp_url, redis_url, require_rabbitmq, require_redis, unique};

/// Queues and exchanges of a test vanish 10 minutes after last use even if the test panics.
const EXPIRES_MS: i64 = 600_000;

/// A message read back from a queue.
#[derive(Debug)]
pub struct Got {
    pub props: BasicProperties,
    pub body: Vec<u8>,
    pub redelivered: bool,
}

impl Got {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.props
            .headers()
            .as_ref()
            .and_then(|h| idemq::amqp::header_text(h, name))
    }
}

/// The test's own connection for setup, publishing and inspection.
pub struct Rabbit {
    conn: Connection,
    pub ch: Channel,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl Rabbit {
    /// `None` (test skipped) when RabbitMQ is not reachable outside CI.
    pub async fn connect() -> Option<Rabbit> {
        if !require_rabbitmq() {
            return None;
        }
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Some(Rabbit {
            conn,
            ch,
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        })
    }

    /// Declares a unique queue (not auto-delete: consumers come and go across reconnects).
    pub async fn queue(&self, prefix: &str) -> String {
        self.queue_with(prefix, FieldTable::default()).await
    }

    /// A unique durable queue without arguments, as an application (or `Topology::queue()`)
    /// declares it, for example processes that declare their queue themselves.
    pub async fn durable_queue(&self, prefix: &str) -> String {
        let name = unique(prefix);
        self.ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("queue.declare");
        self.queues.lock().unwrap().push(name.clone());
        name
    }

    /// A unique queue whose rejected messages go to `dlx` (the broker-native dead-lettering).
    pub async fn queue_with_dlx(&self, prefix: &str, dlx: &str) -> String {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
        self.queue_with(prefix, args).await
    }

    async fn queue_with(&self, prefix: &str, mut args: FieldTable) -> String {
        let name = unique(prefix);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
        self.ch
            .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .expect("queue.declare");
        self.queues.lock().unwrap().push(name.clone());
        name
    }

    /// A unique fanout exchange bound to a new unique queue: a dead-letter destination.
    pub async fn dead_letter_pair(&self, prefix: &str) -> (String, String) {
        let exchange = unique(&format!("{prefix}-dlx"));
        self.ch
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("exchange.declare");
        self.exchanges.lock().unwrap().push(exchange.clone());
        let queue = self.queue(&format!("{prefix}-dlq")).await;
        self.ch
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        (exchange, queue)
    }

    /// Publishes to a queue through the default exchange, with an optional key header, and waits
    /// for the confirm.
    pub async fn publish(&self, queue: &str, key: Option<&str>, payload: &[u8]) {
        let mut headers = FieldTable::default();
        if let Some(k) = key {
            headers.insert("Idempotency-Key".into(), AMQPValue::LongString(k.into()));
        }
        self.publish_props(
            "",
            queue,
            payload,
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }

    /// Publishes with explicit properties and waits for the confirm.
    pub async fn publish_props(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        props: BasicProperties,
    ) {
        let confirm = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "publish not confirmed");
    }

    /// Ready messages and consumers of a queue (passive declare).
    pub async fn counts(&self, queue: &str) -> (u32, u32) {
        let ch = self.conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default().passive(),
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        let _ = ch.close(200, "ok".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Takes every ready message off a queue (acking them).
    pub async fn drain(&self, queue: &str) -> Vec<Got> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            out.push(Got {
                props: m.delivery.properties.clone(),
                body: m.delivery.data.clone(),
                redelivered: m.delivery.redelivered,
            });
        }
        out
    }

    /// Waits until `n` messages are ready on `queue`, then drains them.
    pub async fn wait_drain(&self, queue: &str, n: u32, timeout: Duration) -> Vec<Got> {
        let start = Instant::now();
        while self.counts(queue).await.0 < n && start.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.drain(queue).await
    }

    /// Moves every message from one queue to another, as an operator replaying a DLQ would.
    pub async fn move_all(&self, from: &str, to: &str) -> usize {
        let msgs = self.drain(from).await;
        for m in &msgs {
            self.publish_props("", to, &m.body, m.props.clone()).await;
        }
        msgs.len()
    }

    /// Queues and exchanges someone else declared (an example process, a consumer's `declare`)
    /// that [`cleanup`](Self::cleanup) deletes too.
    pub fn delete_at_cleanup(&self, queues: &[&str], exchanges: &[&str]) {
        let own = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        self.queues.lock().unwrap().extend(own(queues));
        self.exchanges.lock().unwrap().extend(own(exchanges));
    }

    /// Deletes what this fixture declared.
    pub async fn cleanup(self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        for q in queues {
            let _ = self
                .ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap());
        for e in exchanges {
            let _ = self
                .ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// How the recording handler behaves for a payload (JSON): `{"sleep_ms": N, "fail": "permanent" |
/// "retriable" | "retriable-once"}`; anything else succeeds at once.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderState>>,
}

#[derive(Default)]
struct RecorderState {
    started: HashMap<String, u32>,
    succeeded: HashMap<String, u32>,
    broken: bool,
}

impl Recorder {
    /// While broken, every run fails permanently.
    pub fn set_broken(&self, broken: bool) {
        self.inner.lock().unwrap().broken = broken;
    }

    /// Runs started for `key`.
    pub fn started(&self, key: &str) -> u32 {
        *self.inner.lock().unwrap().started.get(key).unwrap_or(&0)
    }

    /// Successful runs of `key`.
    pub fn succeeded(&self, key: &str) -> u32 {
        *self.inner.lock().unwrap().succeeded.get(key).unwrap_or(&0)
    }

    /// All successful runs by key.
    pub fn successes(&self) -> HashMap<String, u32> {
        self.inner.lock().unwrap().succeeded.clone()
    }

    /// Total successful runs.
    pub fn total_successes(&self) -> u32 {
        self.inner.lock().unwrap().succeeded.values().sum()
    }

    /// The handler to give the consumer. The outcome embeds a per-run nonce so a replayed reply
    /// can be told from a re-run.
    pub fn handler(
        &self,
    ) -> impl Fn(
        HandlerContext,
    ) -> futures::future::BoxFuture<'static, Result<serde_json::Value, HandlerError>>
           + Send
           + Sync
           + 'static {
        let rec = self.clone();
        move |ctx: HandlerContext| {
            let rec = rec.clone();
            Box::pin(async move {
                let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
                let spec: serde_json::Value =
                    serde_json::from_slice(&ctx.message.payload).unwrap_or_default();
                let broken = {
                    let mut s = rec.inner.lock().unwrap();
                    *s.started.entry(key.clone()).or_default() += 1;
                    s.broken
                };
                if let Some(ms) = spec["sleep_ms"].as_u64() {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                match (broken, spec["fail"].as_str()) {
                    (true, _) | (_, Some("permanent")) => {
                        return Err(HandlerError::permanent("handler is broken"))
                    }
                    (_, Some("retriable")) => return Err(HandlerError::retriable("try later")),
                    (_, Some("retriable-once")) if ctx.attempt == 1 => {
                        return Err(HandlerError::retriable("first attempt fails"))
                    }
                    _ => {}
                }
                let nonce = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                *rec.inner
                    .lock()
                    .unwrap()
                    .succeeded
                    .entry(key.clone())
                    .or_default() += 1;
                Ok(
                    serde_json::json!({ "key": key, "attempt": ctx.attempt, "nonce": nonce.to_string() }),
                )
            })
        }
    }
}

/// Engine settings for tests: short lease and quick retries.
pub fn test_engine(scope: &str) -> EngineConfig {
    let mut c = EngineConfig::new(scope);
    c.lease = Duration::from_secs(3);
    c.retry_backoff = idemq::Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    c.store_backoff = idemq::Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    c.in_flight_poll = idemq::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    c.max_attempts = 3;
    // Test records in the shared Redis go away soon.
    c.retention = Duration::from_secs(600);
    c.shutdown_grace = Duration::from_secs(2);
    c
}

/// A consumer builder with test defaults for `queue`.
pub fn consumer(queue: &str, store: Arc<dyn Store>, rec: &Recorder) -> AmqpConsumerBuilder {
    AmqpConsumer::builder()
        .url(amqp_url())
        .queue(queue)
        .store(store)
        .engine_config(test_engine(queue))
        .prefetch(16)
        .concurrency(8)
        .reconnect_backoff(idemq::Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
        .shutdown_timeout(Duration::from_secs(5))
        .handler(rec.handler())
}

/// A consumer running in the background.
pub struct Running {
    pub stats: StatsHandle,
    pub stop: CancellationToken,
    handle: JoinHandle<Result<ConsumerStats, idemq::amqp::AmqpError>>,
}

impl Running {
    /// Builds and starts `builder`.
    pub fn start(builder: AmqpConsumerBuilder) -> Running {
        let consumer = builder.build().expect("consumer builds");
        let stats = consumer.stats();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(consumer.run(stop.clone()));
        Running {
            stats,
            stop,
            handle,
        }
    }

    /// Waits until `cond(stats)` holds; panics with the stats after `timeout`.
    pub async fn wait(&self, timeout: Duration, what: &str, cond: impl Fn(&ConsumerStats) -> bool) {
        let start = Instant::now();
        loop {
            let s = self.stats.snapshot();
            if cond(&s) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the queue holds no ready message and every delivery this consumer received has
    /// reached its end (acked, dead-lettered, rejected, requeued or left to the broker), twice in a
    /// row. Counting settled deliveries alone is not enough after a forced close: an ack written
    /// just before the close can be lost, and its redelivery is settled a second time as a replay.
    pub async fn drained(&self, rabbit: &Rabbit, queue: &str, timeout: Duration) {
        let start = Instant::now();
        let mut quiet = 0;
        loop {
            let s = self.stats.snapshot();
            let ended = s.finished() + s.amqp.requeued + s.amqp.left_unacked;
            if s.received == ended && rabbit.counts(queue).await.0 == 0 {
                quiet += 1;
                if quiet == 2 {
                    return;
                }
            } else {
                quiet = 0;
            }
            assert!(
                start.elapsed() < timeout,
                "queue {queue} not drained: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Cancels and returns the final stats.
    pub async fn stop(self) -> ConsumerStats {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("consumer stops within its shutdown deadline")
            .expect("consumer task")
            .expect("consumer run")
    }
}

/// Waits until `cond()` holds or panics after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The memory store.
pub fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

/// The Redis store, or `None` (skip) when Redis is unreachable outside CI.
pub async fn redis() -> Option<Arc<dyn Store>> {
    if !require_redis() {
        return None;
    }
    match idemq::store::connect(&redis_url()).await {
        Ok(store) => Some(store),
        Err(err) => panic!("redis store: {err}"),
    }
}

/// Closes the broker connection whose `connection_name` client property is `name`, as an operator
/// (or a broker restart) would: `rabbitmqctl close_connection`. Returns how many were closed.
pub fn close_connection_named(name: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("run rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(name)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "idemq test: forced close"])
            .status()
            .expect("run rabbitmqctl");
        if status.success() {
            closed += 1;
        }
    }
    closed
}

/// Messages of `queue` delivered but not yet acknowledged, as the broker counts them
/// (`rabbitmqctl list_queues`).
pub async fn unacked_at_broker(queue: &str) -> u64 {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages_unacknowledged"])
        .output()
        .await
        .expect("run rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(name, _)| *name == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("queue {queue} not listed by rabbitmqctl: {text}"))
}

/// Waits for the named connection to show up at the broker, then closes it.
pub async fn force_close(name: &str) {
    let start = Instant::now();
    loop {
        let owned = name.to_string();
        let n = tokio::task::spawn_blocking(move || close_connection_named(&owned))
            .await
            .expect("rabbitmqctl task");
        if n > 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "connection {name} never appeared at the broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Generates `memory_store::<name>` and `redis_store::<name>` tests that run `async fn
/// <name>(store: Arc<dyn Store>)` (the Redis variant skips, printing why, when Redis is absent
/// outside CI). The calling file must import `memory` and `redis` from this module.
#[macro_export]
macro_rules! with_stores {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::$name(super::memory()).await
            })*
        }
        mod redis_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                if let Some(store) = super::redis().await {
                    super::$name(store).await
                }
            })*
        }
    };
}
