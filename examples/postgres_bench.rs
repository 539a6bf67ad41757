//! Postgres store and transactional-engine throughput, and round trips per operation.
//!
//! ```text
//! cargo run --release --features postgres --example postgres_bench -- \
//!     [--url postgres://postgres@127.0.0.1:5432/test] [--messages 4000] [--concurrency 16]
//! ```
//!
//! Phases (each on fresh keys in a fresh scope):
//! - `store first-time`: `claim` + `complete` per key through the `Store` trait.
//! - `store replay`: `claim` of keys that are already completed (the duplicate path).
//! - `tx first-time`: `TransactionalEngine::process` with a handler inserting one row.
//! - `tx replay`: the same messages again (replayed without running the handler).
//!
//! Round trips are measured, not assumed: a pass of sequential operations goes through a local TCP
//! proxy that counts how often the client speaks again after the server answered (statements
//! pipelined before any answer count as one round trip).
//! Prints a table, then one JSON line.

#[path = "shared/pg_round_trips.rs"]
mod pg_round_trips;

use idemq::store::postgres::{PostgresOptions, PostgresStore};
use idemq::store::{Claim, ClaimRequest, RecordKey, Store};
use idemq::transactional::{from_fn_with, TransactionalEngine, TransactionalHandler};
use idemq::{
    CancellationToken, Disposition, EngineConfig, Fingerprint, IdempotencyKey, Message, Outcome,
    ResultExt, Source,
};
use pg_round_trips::counting_proxy;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(3600);
/// Sequential operations per phase in the round-trip pass.
const RT_SAMPLE: u64 = 200;

/// Round trips and throughput of the Postgres store and the transactional engine.
#[derive(clap::Parser)]
struct Args {
    /// Postgres URL (a private table is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    url: String,
    /// Messages per phase.
    #[arg(long, default_value_t = 4000)]
    messages: u64,
    /// Operations in flight in the throughput passes.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    let table = format!("idemq_bench_{}", std::process::id());
    let effects = format!("{table}_effects");
    let store = open(&args.url, &table, args.concurrency as usize + 4).await?;
    store.migrate().await?;
    store
        .pool()
        .get()
        .await?
        .batch_execute(&format!(
            "CREATE TABLE {effects} (idempotency_key text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;

    // Throughput.
    let scope = format!("bench-{}", std::process::id());
    let first = run(&args, |i| store_first_time(store.clone(), scope.clone(), i)).await?;
    let replay = run(&args, |i| store_replay(store.clone(), scope.clone(), i)).await?;
    let engine = Arc::new(tx_engine(store.clone(), &format!("{scope}-tx"), &effects)?);
    let tx_first = run(&args, |i| process(engine.clone(), i)).await?;
    let tx_replay = run(&args, |i| process(engine.clone(), i)).await?;

    // Round trips, through a counting proxy, with warmed-up (prepared) connections.
    let (proxy_url, bursts) = counting_proxy(&args.url).await?;
    let counted = open(&proxy_url, &table, 1).await?;
    let rt_scope = format!("{scope}-rt");
    let rt = |f: Box<dyn Fn(u64) -> BoxFuture>| {
        let bursts = bursts.clone();
        async move {
            f(u64::MAX).await?; // warm-up: prepares the statements on the connection
            let before = bursts.load(Ordering::SeqCst);
            for i in 0..RT_SAMPLE {
                f(i).await?;
            }
            Ok::<f64, BoxError>((bursts.load(Ordering::SeqCst) - before) as f64 / RT_SAMPLE as f64)
        }
    };
    let (c, s) = (counted.clone(), rt_scope.clone());
    let rt_first = rt(Box::new(move |i| {
        Box::pin(store_first_time(c.clone(), s.clone(), i))
    }))
    .await?;
    let (c, s) = (counted.clone(), rt_scope.clone());
    let rt_replay = rt(Box::new(move |i| {
        Box::pin(store_replay(c.clone(), s.clone(), i))
    }))
    .await?;
    let counted_engine = Arc::new(tx_engine(
        counted.clone(),
        &format!("{rt_scope}-tx"),
        &effects,
    )?);
    let e = counted_engine.clone();
    let rt_tx_first = rt(Box::new(move |i| Box::pin(process(e.clone(), i)))).await?;
    let e = counted_engine.clone();
    let rt_tx_replay = rt(Box::new(move |i| Box::pin(process(e.clone(), i)))).await?;

    store
        .pool()
        .get()
        .await?
        .batch_execute(&format!("DROP TABLE {table}; DROP TABLE {effects}"))
        .await?;

    println!(
        "postgres_bench: {} messages, concurrency {}\n",
        args.messages, args.concurrency
    );
    println!("| phase | msg/s | p50 ms | p99 ms | round trips/msg |");
    println!("|---|---:|---:|---:|---:|");
    let rows = [
        ("store first-time (claim+complete)", &first, rt_first),
        ("store replay (claim → Completed)", &replay, rt_replay),
        ("tx first-time (process, 1 insert)", &tx_first, rt_tx_first),
        ("tx replay (process → Replayed)", &tx_replay, rt_tx_replay),
    ];
    for (name, r, rts) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {rts:.2} |",
            r.rate, r.p50_ms, r.p99_ms
        );
    }
    let json = serde_json::json!({
        "bench": "postgres",
        "messages": args.messages,
        "concurrency": args.concurrency,
        "store_first_time": { "msg_per_s": first.rate, "p50_ms": first.p50_ms, "p99_ms": first.p99_ms, "round_trips": rt_first },
        "store_replay": { "msg_per_s": replay.rate, "p50_ms": replay.p50_ms, "p99_ms": replay.p99_ms, "round_trips": rt_replay },
        "tx_first_time": { "msg_per_s": tx_first.rate, "p50_ms": tx_first.p50_ms, "p99_ms": tx_first.p99_ms, "round_trips": rt_tx_first },
        "tx_replay": { "msg_per_s": tx_replay.rate, "p50_ms": tx_replay.p50_ms, "p99_ms": tx_replay.p99_ms, "round_trips": rt_tx_replay },
    });
    println!("\n{json}");
    Ok(())
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

async fn open(url: &str, table: &str, pool: usize) -> Result<PostgresStore, BoxError> {
    let options = PostgresOptions::default()
        .with_table(table)?
        .with_pool_size(pool);
    Ok(PostgresStore::connect_with(url, options).await?)
}

fn record(scope: &str, i: u64) -> Result<RecordKey, BoxError> {
    Ok(RecordKey::new(
        scope,
        IdempotencyKey::new(format!("key-{i}"))?,
    ))
}

async fn store_first_time(store: PostgresStore, scope: String, i: u64) -> Result<(), BoxError> {
    let k = record(&scope, i)?;
    let fp = Fingerprint::of_bytes(b"payload");
    match store
        .claim(&ClaimRequest::new(&k, &fp, LEASE, RETENTION))
        .await?
    {
        Claim::Acquired { token, .. } => {
            store
                .complete(&k, token, &Outcome::succeeded("{\"ok\":true}"), RETENTION)
                .await?;
            Ok(())
        }
        other => Err(format!("expected Acquired, got {other:?}").into()),
    }
}

async fn store_replay(store: PostgresStore, scope: String, i: u64) -> Result<(), BoxError> {
    let k = record(&scope, i)?;
    let fp = Fingerprint::of_bytes(b"payload");
    match store
        .claim(&ClaimRequest::new(&k, &fp, LEASE, RETENTION))
        .await?
    {
        Claim::Completed { .. } => Ok(()),
        other => Err(format!("expected Completed, got {other:?}").into()),
    }
}

fn tx_engine(
    store: PostgresStore,
    scope: &str,
    effects: &str,
) -> Result<TransactionalEngine<impl TransactionalHandler>, BoxError> {
    let insert = format!("INSERT INTO {effects} (idempotency_key) VALUES ($1)");
    let handler = from_fn_with(insert, async |insert, ctx, tx| {
        let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
        let stmt = tx.prepare_cached(insert).await.retriable()?;
        tx.execute(&stmt, &[&key]).await.retriable()?;
        Ok(true)
    });
    Ok(TransactionalEngine::new(
        store,
        EngineConfig::new(scope),
        handler,
    )?)
}

async fn process(
    engine: Arc<TransactionalEngine<impl TransactionalHandler>>,
    i: u64,
) -> Result<(), BoxError> {
    let msg = Arc::new(
        Message::new("payload", Source::Other("bench".into()))
            .with_header("Idempotency-Key", format!("key-{i}")),
    );
    match engine.process(msg, &CancellationToken::new()).await {
        Disposition::Processed { .. } | Disposition::Replayed { .. } => Ok(()),
        other => Err(format!("unexpected {other:?}").into()),
    }
}

struct Measured {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `op(0..messages)` with `concurrency` workers; throughput and latency percentiles.
async fn run<F, Fut>(args: &Args, op: F) -> Result<Measured, BoxError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    let op = Arc::new(op);
    for _ in 0..args.concurrency {
        let (next, total) = (next.clone(), args.messages);
        // Each worker builds its futures from the shared closure, so spawn only the futures.
        let mut futs = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break;
            }
            futs.push(op(i));
            if futs.len() as u64 >= total.div_ceil(args.concurrency) {
                break;
            }
        }
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(futs.len());
            for f in futs {
                let t = Instant::now();
                f.await?;
                lat.push(t.elapsed());
            }
            Ok::<_, BoxError>(lat)
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await??);
    }
    let elapsed = start.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    Ok(Measured {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
