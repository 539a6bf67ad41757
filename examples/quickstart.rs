//! idemq in one command: no flags, no services.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! 1. Starts an in-process Kafka (librdkafka's MockCluster) and publishes 31 orders: 20 distinct
//!    `Idempotency-Key`s, 10 of them published twice (a producer retry), plus one without a key.
//! 2. Consumer 1 handles everything, but the broker refuses its offset commits (simulated), so when
//!    it stops, Kafka believes nothing was consumed: every order will be delivered again.
//! 3. Consumers 2 and 3 join the same group and get all of it redelivered.
//!
//! The handler ("charge the card") must still run exactly once per key. The program exits 0 when
//! handler runs == distinct keys and every order was committed, 1 otherwise.

use idemq::kafka::{ConsumerStats, KafkaConsumerBuilder, StatsHandle};
use idemq::store::MemoryStore;
use idemq::{CancellationToken, EngineConfig, HandlerContext, HandlerError, Store};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TOPIC: &str = "orders";
const DEAD_LETTER_TOPIC: &str = "orders.dlq";
const GROUP: &str = "payments";
const PARTITIONS: i32 = 3;

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("quickstart failed: {err}");
            std::process::exit(2);
        }
    }
}

async fn run() -> BoxResult<bool> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, PARTITIONS, 1)?;
    cluster.create_topic(DEAD_LETTER_TOPIC, 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();

    println!("1. Publishing orders to an in-process Kafka ({bootstrap})");
    let ends = publish_orders(&bootstrap).await?;
    let published: i64 = ends.values().sum();
    println!("   {published} messages: 20 distinct keys, 10 published twice, 1 without a key\n");

    // One store for the whole demo: in production this is Redis or Postgres, shared by every
    // consumer of the group.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let charges: Arc<Mutex<HashMap<String, u32>>> = Arc::default();

    println!("2. Consumer 1 runs, but the broker refuses its offset commits (simulated failure)");
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 1000],
    );
    let first = start(&bootstrap, store.clone(), charges.clone(), "consumer-1")?;
    wait_until(Duration::from_secs(60), || {
        first.stats.snapshot().finished() >= published as u64
    })
    .await?;
    let s1 = first.stop().await?;
    println!(
        "   handled {} messages; commits refused: {}; committed offsets: {:?}",
        s1.finished(),
        s1.kafka.commit_failures,
        committed(&bootstrap)?
    );
    println!("   -> Kafka will deliver every order again\n");
    cluster.clear_request_errors(RDKafkaApiKey::OffsetCommit);

    println!("3. Consumers 2 and 3 join the same group and receive the redeliveries");
    let second = start(&bootstrap, store.clone(), charges.clone(), "consumer-2")?;
    let third = start(&bootstrap, store.clone(), charges.clone(), "consumer-3")?;
    let expected: Vec<i64> = (0..PARTITIONS)
        .map(|p| ends.get(&p).copied().unwrap_or(0))
        .collect();
    let all_committed = wait_until(Duration::from_secs(60), || {
        committed(&bootstrap).is_ok_and(|c| c == expected)
    })
    .await
    .is_ok();
    let (s2, s3) = (second.stop().await?, third.stop().await?);
    println!(
        "   consumer 2: {} replayed, {} ran; consumer 3: {} replayed, {} ran",
        s2.replayed, s2.processed, s3.replayed, s3.processed
    );
    println!("   committed offsets: {:?}\n", committed(&bootstrap)?);

    let total = |f: fn(&ConsumerStats) -> u64| f(&s1) + f(&s2) + f(&s3);
    let charges = charges.lock().map_err(|_| "poisoned")?.clone();
    let handler_runs: u32 = charges.values().sum();
    let distinct = charges.len();
    let twice: Vec<_> = charges.iter().filter(|(_, n)| **n > 1).collect();
    println!("Summary");
    println!(
        "  messages consumed (incl. redeliveries) : {}",
        total(|s| s.received)
    );
    println!("  handler runs                           : {handler_runs}");
    println!(
        "  replays acked without running          : {}",
        total(|s| s.replayed)
    );
    println!(
        "  dead-lettered (no key; once per delivery): {}",
        total(|s| s.dead_lettered)
    );
    println!("  distinct keys                          : {distinct}");
    let ok =
        handler_runs as usize == distinct && distinct == 20 && twice.is_empty() && all_committed;
    if ok {
        println!("  check: handler runs == distinct keys ({handler_runs} == {distinct}), every order committed: OK");
    } else {
        println!("  check FAILED: runs {handler_runs}, distinct {distinct}, ran twice {twice:?}, all committed {all_committed}");
    }
    Ok(ok)
}

/// Publishes the orders and returns, per partition, the end offset (records published).
async fn publish_orders(bootstrap: &str) -> BoxResult<BTreeMap<i32, i64>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut orders: Vec<(Option<String>, String)> = (1..=20)
        .map(|n| {
            (
                Some(format!("order-{n}")),
                format!("{{\"order\":{n},\"cents\":{}}}", n * 100),
            )
        })
        .collect();
    // A producer that retried: the same order, same key, published again.
    for n in (1..=20).step_by(2) {
        orders.push((
            Some(format!("order-{n}")),
            format!("{{\"order\":{n},\"cents\":{}}}", n * 100),
        ));
    }
    orders.push((None, "{\"order\":\"no key\"}".into()));
    let mut ends = BTreeMap::new();
    for (i, (key, payload)) in orders.iter().enumerate() {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(TOPIC)
            .payload(payload.as_str())
            .partition(i as i32 % PARTITIONS);
        if let Some(k) = key {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "Idempotency-Key",
                value: Some(k.as_str()),
            }));
        }
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
        let end = ends.entry(delivery.partition).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
    }
    Ok(ends)
}

struct Started {
    stats: StatsHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<ConsumerStats, idemq::kafka::KafkaConsumerError>>,
}

impl Started {
    async fn stop(self) -> BoxResult<ConsumerStats> {
        self.stop.cancel();
        Ok(self.task.await??)
    }
}

fn start(
    bootstrap: &str,
    store: Arc<dyn Store>,
    charges: Arc<Mutex<HashMap<String, u32>>>,
    name: &'static str,
) -> BoxResult<Started> {
    let consumer = KafkaConsumerBuilder::new()
        .bootstrap_servers(bootstrap)
        .group_id(GROUP)
        .topic(TOPIC)
        .dead_letter_topic(DEAD_LETTER_TOPIC)
        .store(store)
        .engine_config(EngineConfig::new(GROUP))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(100))
        .handler(move |ctx: HandlerContext| {
            let charges = charges.clone();
            async move {
                let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
                // The side effect that must not happen twice.
                println!("   [{name}] charging {key}");
                if let Ok(mut c) = charges.lock() {
                    *c.entry(key.clone()).or_default() += 1;
                }
                Ok::<_, HandlerError>(format!("charged {key}"))
            }
        })
        .build()?;
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    Ok(Started { stats, stop, task })
}

/// Committed offsets of the group per partition (-1: nothing committed).
fn committed(bootstrap: &str) -> BoxResult<Vec<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(got
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect())
}

async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> BoxResult<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
