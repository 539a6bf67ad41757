//! Throughput of a plain lapin consumer versus the idemq consumer over the same published data.
//!
//! ```text
//! cargo run --release --features amqp,redis --example amqp_bench -- \
//!     --store memory|redis://127.0.0.1:6379 --messages 20000 --dup-rate 0.2 [--rounds 3] \
//!     [--prefetch 256] [--concurrency 64] [--handler-us 0] [--local-cache ENTRIES] \
//!     [--local-cache-age-ms 60000] [--soak]
//! ```
//!
//! Each round publishes an identical copy of the data (N messages, a fraction `--dup-rate` of them
//! duplicates of earlier keys) to two fresh queues, then runs both consumers with the same prefetch
//! and the same handler, one after the other; which one goes first alternates between rounds, so
//! drift in the machine's load falls on both alike. The handler parses the JSON body and awaits
//! `--handler-us` µs (`tokio::time::sleep`, millisecond timer resolution; 0 by default). The raw
//! consumer runs up to `--concurrency` handlers at once and acks each message after its handler;
//! the idemq consumer claims every key, stores every outcome and acks replays without running the
//! handler. `--local-cache N` puts a `CachedStore` of N completed keys in front of the store.
//! `--soak` runs only the idemq consumer over 1,000,000 messages (or `--messages`), published while
//! it consumes, and prints the process RSS at every 10%; its records are left to expire.
//! Every round checks `handler_runs == distinct_keys` and fails otherwise; the idemq records are
//! deleted after each round (outside the measurement), so expiring keys do not load Redis later.
//!
//! Prints a table (one row per consumer and round), then one JSON line with `raw_msgs_per_s`,
//! `dedup_msgs_per_s` and `ratio` over all rounds, `round_ratios` and `median_round_ratio`,
//! `handler_runs`, `distinct_keys`, store commands and ack frames per message, and
//! `cpu_us_per_msg`: the CPU this process, RabbitMQ and Redis used per message in each consumer's
//! phases (from `/proc`, Linux only), which on a machine where they share the cores is what sets
//! the throughput.

use clap::Parser;
use futures::StreamExt;
use idemq::amqp::AmqpConsumer;
use idemq::store::{RecordKey, Store};
use idemq::{CancellationToken, HandlerContext, HandlerError, IdempotencyKey};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "shared/bench_store.rs"]
mod bench_store;
#[path = "shared/cpu.rs"]
mod cpu;
#[path = "shared/soak.rs"]
mod soak;
use bench_store::{bench_engine, open_store, with_local_cache, Counting, LocalCache, SentCounter};
use cpu::{CpuMeter, CpuUse};
use idemq::amqp::ConsumerStats;
use soak::RssSamples;

/// mimalloc rather than glibc's malloc: under a long run glibc's per-thread arenas keep freed
/// memory of one thread from serving another (RSS grew by a third over a Kafka soak), where
/// mimalloc's stays flat. Both sides of every comparison run with it; docs/benchmarks.md
/// recommends the same for services.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The processes whose CPU the benchmark reports besides its own.
const CPU_GROUPS: [(&str, &str); 2] = [("rabbitmq", "beam.smp"), ("redis", "redis-server")];

/// Throughput of a plain lapin consumer versus the idemq consumer over the same published data.
#[derive(Parser)]
#[command(name = "amqp_bench")]
struct Args {
    /// The RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// `memory` or a Redis URL (`redis://127.0.0.1:6379`).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Messages to publish [default: 20000, or 1000000 with --soak].
    #[arg(long = "messages", value_name = "N")]
    messages_flag: Option<u64>,
    /// The messages to publish (`--messages` or its default).
    #[arg(skip)]
    messages: u64,
    /// Fraction of the messages that repeat an earlier key, in [0, 1).
    #[arg(long, default_value_t = 0.2)]
    dup_rate: f64,
    /// Prefetch of both consumers.
    #[arg(long, default_value_t = 256)]
    prefetch: u16,
    /// Handlers running at once, on both sides.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rounds; which consumer goes first alternates.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The handler awaits this many µs (`tokio::time::sleep`).
    #[arg(long, default_value_t = 0)]
    handler_us: u64,
    /// Entries of a local cache of completed keys in front of the store (0: none).
    #[arg(long, default_value_t = 0)]
    local_cache: usize,
    /// How long the local cache keeps a completed key, in ms.
    #[arg(long, default_value_t = 60_000)]
    local_cache_age_ms: u64,
    /// Only the idemq consumer, messages published while it consumes, RSS printed at every 10%.
    #[arg(long)]
    soak: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args::parse();
    a.messages = a
        .messages_flag
        .unwrap_or(if a.soak { soak::SOAK_MESSAGES } else { 20_000 });
    if !(0.0..1.0).contains(&a.dup_rate) || a.messages == 0 || a.rounds == 0 || a.concurrency == 0 {
        return Err(
            "--dup-rate must be in [0, 1), --messages, --rounds and --concurrency positive".into(),
        );
    }
    Ok(a)
}

/// Key of message `i`: the first `distinct` messages have new keys, the rest repeat earlier ones.
fn key_of(i: u64, distinct: u64) -> String {
    if i < distinct {
        format!("bench-{i}")
    } else {
        // Spread duplicates over the distinct keys deterministically.
        format!("bench-{}", (i.wrapping_mul(2_654_435_761)) % distinct)
    }
}

/// Deletes the records of keys `0..distinct` in `scope`, a few calls at a time.
async fn forget_records(
    store: Arc<dyn Store>,
    scope: &str,
    distinct: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (store, scope) = (store.clone(), scope.to_string());
        tasks.spawn(async move {
            for i in (lane..distinct).step_by(16) {
                let key = IdempotencyKey::new(key_of(i, distinct))?;
                store.forget(&RecordKey::new(scope.as_str(), key)).await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }
    Ok(())
}

async fn declare(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .map(|_| ())
}

async fn publish_all(
    ch: &Channel,
    queues: &[&str],
    n: u64,
    distinct: u64,
) -> Result<(), lapin::Error> {
    for i in 0..n {
        let key = key_of(i, distinct);
        let mut h = FieldTable::default();
        h.insert(
            "Idempotency-Key".into(),
            AMQPValue::LongString(key.as_str().into()),
        );
        // Copies of a key carry the same payload (a true duplicate, not a conflict).
        let body = format!("{{\"order\":\"{key}\",\"amount\":{}}}", key.len() * 7);
        for q in queues {
            // Publish without waiting per message; confirms are awaited in bulk below.
            ch.basic_publish(
                "".into(),
                (*q).into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_headers(h.clone()),
            )
            .await?;
        }
        if i % 1000 == 999 {
            ch.wait_for_confirms().await?;
        }
    }
    ch.wait_for_confirms().await?;
    Ok(())
}

/// The handler both sides run: parse the body, await `handler_us` µs (nothing at 0).
async fn handler_work(body: &[u8], handler_us: u64) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if handler_us > 0 {
        tokio::time::sleep(Duration::from_micros(handler_us)).await;
    }
    v
}

/// Plain lapin: consume, run the handler (at most `concurrency` at once), ack after it.
async fn raw(
    url: &str,
    queue: &str,
    n: u64,
    prefetch: u16,
    concurrency: usize,
    handler_us: u64,
) -> Result<Duration, lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Handlers and acks run concurrently (one task per delivery, at most `concurrency` at once,
    // as in the idemq consumer), so the baseline is not limited by awaiting each ack in turn.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut taken = 0;
    while let Some(d) = consumer.next().await {
        let d = d?;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        tasks.spawn(async move {
            std::hint::black_box(handler_work(&d.data, handler_us).await);
            let acked = d.ack(BasicAckOptions::default()).await;
            drop(slot);
            acked
        });
        // Reap finished tasks as we go, so a long run does not hold every result.
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| lapin::Error::from(std::io::Error::other(e)))??;
        }
        taken += 1;
        if taken == n {
            break;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| lapin::Error::from(std::io::Error::other(e)))??;
    }
    let took = start.elapsed();
    conn.close(200, "done".into()).await?;
    Ok(took)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("amqp_bench: {e}");
        std::process::exit(1);
    }
}

/// One measured phase: how long it took and the CPU each process group used.
struct Phase {
    took: Duration,
    cpu: CpuUse,
}

/// What one round of the idemq consumer reports besides its phase.
struct DedupRound {
    phase: Phase,
    handler_runs: u64,
    store_cmds: f64,
    /// Store calls (claim, complete, …) per message that reached the store.
    store_ops: f64,
    totals: ConsumerStats,
    cache_hits: u64,
    /// Mean µs of a claim and of a complete, as the consumer waited for them.
    latency_us: (Option<f64>, Option<f64>),
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let distinct = ((a.messages as f64) * (1.0 - a.dup_rate)).round().max(1.0) as u64;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let (inner, sent) = open_store(&a.store)
        .await
        .map_err(|e| e as Box<dyn std::error::Error>)?;
    let store = Stores { inner, sent };
    let setup = Connection::connect(&a.amqp_url, ConnectionProperties::default()).await?;
    let ch = setup.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    if a.soak {
        let result = soak_run(&a, &ch, &tag, &store, distinct).await;
        setup.close(200, "done".into()).await?;
        return result;
    }

    let (mut raws, mut dedups) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let rtag = format!("{tag}-{round}");
        let (q_raw, q_dedup) = (format!("bench-raw-{rtag}"), format!("bench-dedup-{rtag}"));
        declare(&ch, &q_raw).await?;
        declare(&ch, &q_dedup).await?;
        eprintln!(
            "round {}/{}: publishing {} messages ({distinct} distinct keys) to two queues...",
            round + 1,
            a.rounds,
            a.messages
        );
        publish_all(&ch, &[&q_raw, &q_dedup], a.messages, distinct).await?;
        // Alternate which consumer goes first, so drift in the machine's load during a run
        // (other tenants, RabbitMQ's own housekeeping) falls on both sides alike.
        let (raw_phase, dedup_round) = if round % 2 == 0 {
            let r = raw_phase(&a, &q_raw).await?;
            (
                r,
                dedup_phase(&a, &q_dedup, &rtag, &store, distinct, None).await?,
            )
        } else {
            let d = dedup_phase(&a, &q_dedup, &rtag, &store, distinct, None).await?;
            (raw_phase(&a, &q_raw).await?, d)
        };
        for q in [&q_raw, &q_dedup] {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        raws.push(raw_phase);
        dedups.push(dedup_round);
    }
    setup.close(200, "done".into()).await?;
    report(&a, distinct, &raws, &dedups)
}

/// The plain lapin consumer over `queue`, measured.
async fn raw_phase(a: &Args, queue: &str) -> Result<Phase, Box<dyn std::error::Error>> {
    let meter = CpuMeter::new(&CPU_GROUPS);
    let took = raw(
        &a.amqp_url,
        queue,
        a.messages,
        a.prefetch,
        a.concurrency,
        a.handler_us,
    )
    .await?;
    Ok(Phase {
        took,
        cpu: meter.read(),
    })
}

/// The store a run uses and what Redis reports it sent.
struct Stores {
    inner: Arc<dyn Store>,
    sent: Option<SentCounter>,
}

/// The idemq consumer over `queue` until every message is settled, measured. Without `rss` its
/// records are deleted afterwards (outside the measurement) so that expiring keys do not load the
/// next round; with `rss` (a soak) memory is sampled at every 10% and the records left to expire.
async fn dedup_phase(
    a: &Args,
    queue: &str,
    rtag: &str,
    stores: &Stores,
    distinct: u64,
    mut rss: Option<&mut RssSamples>,
) -> Result<DedupRound, Box<dyn std::error::Error>> {
    let (store, sent) = (&stores.inner, &stores.sent);
    let counting = Arc::new(Counting::new(store.clone()));
    let sent_before = sent.as_ref().map(|f| f());
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let scope = format!("bench-{rtag}");
    let handler_us = a.handler_us;
    // Redis counts its own round trips, other stores are counted by the wrapper; the wrapper
    // also times claims and completes (two clock readings per call, nothing measurable). It sits
    // between the local cache (a fresh one per phase: each phase has its own scope) and the
    // store, so it sees what reaches the store.
    let (measured, cache): (Arc<dyn Store>, Option<LocalCache>) = with_local_cache(
        counting.clone(),
        a.local_cache,
        Duration::from_millis(a.local_cache_age_ms),
    );
    let consumer = AmqpConsumer::builder()
        .url(&a.amqp_url)
        .queue(queue)
        .store(measured)
        .engine_config(bench_engine(scope.clone()))
        .prefetch(a.prefetch)
        .concurrency(a.concurrency)
        .handler(move |ctx: HandlerContext| {
            let counter = counter.clone();
            async move {
                let v = handler_work(&ctx.message.payload, handler_us).await;
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(v["amount"].clone())
            }
        })
        .build()?;
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let meter = CpuMeter::new(&CPU_GROUPS);
    let start = Instant::now();
    let running = tokio::spawn(consumer.run(stop.clone()));
    loop {
        let settled = stats.snapshot().finished();
        if let Some(r) = rss.as_deref_mut() {
            r.observe(settled);
        }
        if settled >= a.messages {
            break;
        }
        if running.is_finished() {
            return Err("idemq consumer stopped early".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    let cpu = meter.read();
    let store_cmds = bench_store::per_message(sent, sent_before, &counting, a.messages as f64);
    let store_ops = bench_store::ops_per_message(&counting, a.messages as f64);
    stop.cancel();
    let totals = running.await??;
    let cache_hits = cache.as_ref().map_or(0, |c| c.hits());
    if rss.is_none() {
        forget_records(store.clone(), &scope, distinct).await?;
    }
    let handler_runs = runs.load(Ordering::Relaxed);
    if handler_runs != distinct {
        return Err(format!("handler ran {handler_runs} times for {distinct} keys").into());
    }
    Ok(DedupRound {
        phase: Phase { took, cpu },
        handler_runs,
        store_cmds,
        store_ops,
        totals,
        cache_hits,
        latency_us: counting.mean_latency_us(),
    })
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

/// Mean of the known values, rounded to whole µs.
fn mean_of(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let known: Vec<f64> = v.flatten().collect();
    (!known.is_empty()).then(|| (known.iter().sum::<f64>() / known.len() as f64).round())
}

fn fmt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn report(
    a: &Args,
    distinct: u64,
    raws: &[Phase],
    dedups: &[DedupRound],
) -> Result<(), Box<dyn std::error::Error>> {
    let rate = |took: Duration| a.messages as f64 / took.as_secs_f64();
    println!("| round | consumer | store | messages | dup rate | handler µs | seconds | msgs/s | handler runs | store cmds/msg | claim / complete µs | ack frames/msg | CPU per message |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (r, d)) in raws.iter().zip(dedups).enumerate() {
        println!(
            "| {} | raw lapin | - | {} | {} | {} | {:.3} | {:.0} | {} | - | - | 1 | {} |",
            i + 1,
            a.messages,
            a.dup_rate,
            a.handler_us,
            r.took.as_secs_f64(),
            rate(r.took),
            a.messages,
            r.cpu.per_message(a.messages)
        );
        println!(
            "| {} | idemq | {} | {} | {} | {} | {:.3} | {:.0} | {} | {:.3} | {} / {} | {:.3} | {} |",
            i + 1,
            a.store,
            a.messages,
            a.dup_rate,
            a.handler_us,
            d.phase.took.as_secs_f64(),
            rate(d.phase.took),
            d.handler_runs,
            d.store_cmds,
            fmt_us(d.latency_us.0),
            fmt_us(d.latency_us.1),
            d.totals.amqp.ack_frames as f64 / a.messages as f64,
            d.phase.cpu.per_message(a.messages)
        );
        ratios.push(rate(d.phase.took) / rate(r.took));
    }
    let total = a.messages * raws.len() as u64;
    let raw_took: Duration = raws.iter().map(|r| r.took).sum();
    let dedup_took: Duration = dedups.iter().map(|d| d.phase.took).sum();
    let (raw_rate, dedup_rate) = (
        total as f64 / raw_took.as_secs_f64(),
        total as f64 / dedup_took.as_secs_f64(),
    );
    let raw_cpu = cpu::sum(raws.iter().map(|r| &r.cpu));
    let dedup_cpu = cpu::sum(dedups.iter().map(|d| &d.phase.cpu));
    println!(
        "{}",
        serde_json::json!({
            "store": a.store, "messages": a.messages, "rounds": a.rounds, "dup_rate": a.dup_rate,
            "prefetch": a.prefetch, "concurrency": a.concurrency, "handler_us": a.handler_us,
            "raw_msgs_per_s": raw_rate.round(), "dedup_msgs_per_s": dedup_rate.round(),
            "ratio": round3(dedup_rate / raw_rate),
            "round_ratios": ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
            "median_round_ratio": round3(median(ratios.clone())),
            "handler_runs": dedups.iter().map(|d| d.handler_runs).sum::<u64>(),
            "distinct_keys": distinct * dedups.len() as u64,
            "replayed": dedups.iter().map(|d| d.totals.replayed).sum::<u64>(),
            "dead_lettered": dedups.iter().map(|d| d.totals.dead_lettered + d.totals.amqp.rejected).sum::<u64>(),
            "store_cmds_per_msg": round3(dedups.iter().map(|d| d.store_cmds).sum::<f64>() / dedups.len() as f64),
            "store_ops_per_msg": round3(dedups.iter().map(|d| d.store_ops).sum::<f64>() / dedups.len() as f64),
            "ack_frames_per_msg": round3(dedups.iter().map(|d| d.totals.amqp.ack_frames).sum::<u64>() as f64 / total as f64),
            "local_cache": a.local_cache, "local_cache_age_ms": a.local_cache_age_ms,
            "local_cache_hits": dedups.iter().map(|d| d.cache_hits).sum::<u64>(),
            "claim_us": mean_of(dedups.iter().map(|d| d.latency_us.0)),
            "complete_us": mean_of(dedups.iter().map(|d| d.latency_us.1)),
            "cpu_us_per_msg": {"raw": raw_cpu.json(total), "idemq": dedup_cpu.json(total)},
        })
    );
    Ok(())
}

/// Only the idemq consumer over `a.messages` messages, published into its queue while it
/// consumes, sampling RSS at every 10%.
async fn soak_run(
    a: &Args,
    ch: &Channel,
    tag: &str,
    stores: &Stores,
    distinct: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let queue = format!("bench-soak-{tag}");
    declare(ch, &queue).await?;
    eprintln!(
        "soak: publishing {} messages ({distinct} distinct keys) while the idemq consumer runs…",
        a.messages
    );
    let publisher = {
        let (ch, queue, n) = (ch.clone(), queue.clone(), a.messages);
        tokio::spawn(async move { publish_all(&ch, &[&queue], n, distinct).await })
    };
    let mut rss = RssSamples::new(a.messages);
    let d = dedup_phase(a, &queue, tag, stores, distinct, Some(&mut rss)).await?;
    publisher.await??;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let rate = a.messages as f64 / d.phase.took.as_secs_f64();
    rss.print_table();
    println!("| store | messages | handler µs | idemq msgs/s | handler runs | distinct keys | store cmds/msg | local cache hits |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {rate:.0} | {} | {distinct} | {:.3} | {} |",
        a.store, a.messages, a.handler_us, d.handler_runs, d.store_cmds, d.cache_hits
    );
    let mut json = serde_json::Map::new();
    for (k, v) in [
        ("mode", serde_json::json!("soak")),
        ("store", serde_json::json!(a.store)),
        ("messages", serde_json::json!(a.messages)),
        ("dup_rate", serde_json::json!(a.dup_rate)),
        ("handler_us", serde_json::json!(a.handler_us)),
        ("dedup_msgs_per_s", serde_json::json!(rate.round())),
        ("handler_runs", serde_json::json!(d.handler_runs)),
        ("distinct_keys", serde_json::json!(distinct)),
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
