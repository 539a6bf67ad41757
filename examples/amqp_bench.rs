//! Throughput of a plain lapin consumer versus the idemq consumer over the same published data.
//!
//! ```text
//! cargo run --release --features amqp,redis --example amqp_bench -- \
//!     --store memory|redis://127.0.0.1:6379 --messages 20000 --dup-rate 0.2
//! ```
//!
//! Both consumers get an identical copy of the data (N messages, a fraction `--dup-rate` of them
//! duplicates of earlier keys) in their own queue, use the same prefetch and a trivial handler, and
//! ack every message. Prints a table, then one JSON line with `raw_msgs_per_s`,
//! `dedup_msgs_per_s`, `ratio`, `handler_runs` and `distinct_keys`, and `cpu_us_per_msg`: the CPU
//! this process, RabbitMQ and Redis used per message in each phase (from `/proc`, Linux only), which
//! on a machine where they share the cores is what sets the throughput.

use futures::StreamExt;
use idemq::amqp::AmqpConsumer;
use idemq::{CancellationToken, HandlerContext, HandlerError};
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
use bench_store::{bench_engine, open_store, Counting};
use cpu::CpuMeter;

struct Args {
    amqp_url: String,
    store: String,
    messages: u64,
    dup_rate: f64,
    prefetch: u16,
    concurrency: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        store: "memory".into(),
        messages: 20_000,
        dup_rate: 0.2,
        prefetch: 256,
        concurrency: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: String| format!("{flag}: {e}");
        match flag.as_str() {
            "--amqp-url" => a.amqp_url = v,
            "--store" => a.store = v,
            "--messages" => a.messages = v.parse().map_err(|e| bad(format!("{e}")))?,
            "--dup-rate" => a.dup_rate = v.parse().map_err(|e| bad(format!("{e}")))?,
            "--prefetch" => a.prefetch = v.parse().map_err(|e| bad(format!("{e}")))?,
            "--concurrency" => a.concurrency = v.parse().map_err(|e| bad(format!("{e}")))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(0.0..1.0).contains(&a.dup_rate) || a.messages == 0 {
        return Err("--dup-rate must be in [0, 1) and --messages positive".into());
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

/// Plain lapin: consume, run the trivial handler, ack.
async fn raw(url: &str, queue: &str, n: u64, prefetch: u16) -> Result<Duration, lapin::Error> {
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
    // Acks run concurrently (one task per delivery, bounded by the prefetch), like the idemq
    // consumer, so the baseline is not limited by awaiting each ack in turn.
    let mut tasks = tokio::task::JoinSet::new();
    let mut taken = 0;
    while let Some(d) = consumer.next().await {
        let d = d?;
        tasks.spawn(async move {
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            std::hint::black_box(v);
            d.ack(BasicAckOptions::default()).await
        });
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

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let distinct = ((a.messages as f64) * (1.0 - a.dup_rate)).round().max(1.0) as u64;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let (q_raw, q_dedup) = (format!("bench-raw-{tag}"), format!("bench-dedup-{tag}"));
    let setup = Connection::connect(&a.amqp_url, ConnectionProperties::default()).await?;
    let ch = setup.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare(&ch, &q_raw).await?;
    declare(&ch, &q_dedup).await?;
    eprintln!(
        "publishing {} messages ({distinct} distinct keys) to two queues...",
        a.messages
    );
    publish_all(&ch, &[&q_raw, &q_dedup], a.messages, distinct).await?;

    let mut meter = CpuMeter::new();
    let raw_took = raw(&a.amqp_url, &q_raw, a.messages, a.prefetch).await?;
    let raw_cpu = meter.read();

    let (inner, sent) = open_store(&a.store)
        .await
        .map_err(|e| e as Box<dyn std::error::Error>)?;
    let counting = Arc::new(Counting::new(inner));
    let sent_before = sent.as_ref().map(|f| f());
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    let consumer = AmqpConsumer::builder(&a.amqp_url, &q_dedup)
        .store(counting.clone())
        .engine_config(bench_engine(format!("bench-{tag}")))
        .prefetch(a.prefetch)
        .concurrency(a.concurrency)
        .handler(move |ctx: HandlerContext| {
            let counter = counter.clone();
            async move {
                let v: serde_json::Value =
                    serde_json::from_slice(&ctx.message.payload).unwrap_or_default();
                counter.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(v["amount"].clone())
            }
        })
        .build()?;
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    meter.restart();
    let start = Instant::now();
    let running = tokio::spawn(consumer.run(stop.clone()));
    while stats.snapshot().settled() < a.messages {
        if running.is_finished() {
            return Err("idemq consumer stopped early".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let dedup_took = start.elapsed();
    let dedup_cpu = meter.read();
    let round_trips = bench_store::per_message(&sent, sent_before, &counting, a.messages as f64);
    stop.cancel();
    let totals = running.await??;

    ch.queue_delete(q_raw.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.queue_delete(q_dedup.as_str().into(), QueueDeleteOptions::default())
        .await?;
    setup.close(200, "done".into()).await?;

    let per_s = |d: Duration| a.messages as f64 / d.as_secs_f64();
    let (raw_rate, dedup_rate) = (per_s(raw_took), per_s(dedup_took));
    let handler_runs = runs.load(Ordering::Relaxed);
    println!("| consumer | store | messages | dup rate | seconds | msgs/s | handler runs | store cmds/msg | CPU per message |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| raw lapin | - | {} | {} | {:.3} | {:.0} | {} | - | {} |",
        a.messages,
        a.dup_rate,
        raw_took.as_secs_f64(),
        raw_rate,
        a.messages,
        raw_cpu.per_message(a.messages)
    );
    println!(
        "| idemq | {} | {} | {} | {:.3} | {:.0} | {} | {:.3} | {} |",
        a.store,
        a.messages,
        a.dup_rate,
        dedup_took.as_secs_f64(),
        dedup_rate,
        handler_runs,
        round_trips,
        dedup_cpu.per_message(a.messages)
    );
    println!(
        "{}",
        serde_json::json!({
            "store": a.store, "messages": a.messages, "dup_rate": a.dup_rate,
            "prefetch": a.prefetch, "concurrency": a.concurrency,
            "raw_msgs_per_s": raw_rate.round(), "dedup_msgs_per_s": dedup_rate.round(),
            "ratio": (dedup_rate / raw_rate * 1000.0).round() / 1000.0,
            "handler_runs": handler_runs, "distinct_keys": distinct,
            "replayed": totals.acked_replayed, "dead_lettered": totals.dead_lettered + totals.rejected,
            "store_cmds_per_msg": (round_trips * 1000.0).round() / 1000.0,
            "ack_frames_per_msg": (totals.ack_frames as f64 / a.messages as f64 * 1000.0).round() / 1000.0,
            "cpu_us_per_msg": {"raw": raw_cpu.json(a.messages), "idemq": dedup_cpu.json(a.messages)},
        })
    );
    if handler_runs != distinct {
        return Err(format!("handler ran {handler_runs} times for {distinct} keys").into());
    }
    Ok(())
}
