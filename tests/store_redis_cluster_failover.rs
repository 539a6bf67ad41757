//! Failover: a Redis Cluster primary is killed with SIGKILL while consumers stream messages; the
//! cluster promotes its replica (`cluster-node-timeout` 1000 ms) and the consumers keep going.
//! No handler runs without a claim, no message is lost, and every key that ran twice is counted:
//! without `replicas` a `complete` the dead primary answered but had not replicated is lost and
//! its key runs again; with `replicas=1` (WAIT) none may. On loopback a replica trails its
//! primary by well under a millisecond, so the replica is made to lag for the last 300 ms before
//! its primary dies (stopped, with a 32 MiB write queued ahead of the stream), as one on a slow
//! link would.
#![cfg(feature = "redis")]

mod support;

use futures::stream::{self, StreamExt};
use idemq::store::redis::RedisStore;
use idemq::store::Store;
use idemq::{
    CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError, Message,
    Source,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis_cluster::RedisCluster;
use support::services::unique;

/// Keys per run; each is delivered once while the primary dies, and once more afterwards.
const KEYS: usize = 3000;
/// Consumers (engines, each with its own store connection).
const CONSUMERS: usize = 4;
/// Messages each consumer has in flight.
const CONCURRENCY: usize = 16;

fn msg(key: &str) -> Arc<Message> {
    Arc::new(
        Message::new("{}".to_string(), Source::Other("failover".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

fn config(scope: &str) -> EngineConfig {
    let mut c = EngineConfig::new(scope);
    // Short lease: a claim left in progress by the failover is taken over quickly.
    c.lease = Duration::from_secs(2);
    c.retention = Duration::from_secs(600);
    c.retry_backoff = idemq::Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    c.store_backoff = idemq::Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    c
}

/// Handler runs per key, and runs that had no claim token.
#[derive(Default)]
struct Runs {
    per_key: Mutex<HashMap<String, u32>>,
    without_claim: AtomicU64,
}

/// What one run measured.
#[derive(Debug)]
#[allow(dead_code)] // Printed with Debug.
struct Figures {
    replicas: u32,
    double_runs: usize,
    superseded: u64,
    retries: u64,
    killed: u16,
}

async fn run_with(replicas: u32) -> Option<Figures> {
    let mut cluster = RedisCluster::start()?;
    let url = cluster.url();
    let (prefix, scope) = (unique("idemq-fo"), unique("fo"));
    let runs = Arc::new(Runs::default());
    let mut engines = Vec::new();
    for _ in 0..CONSUMERS {
        let store: Arc<dyn Store> = Arc::new(
            RedisStore::builder(url.clone())
                .prefix(prefix.clone())
                .timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_millis(500))
                .replicas(replicas)
                .replica_timeout(Duration::from_millis(500))
                .build()
                .await
                .expect("connect"),
        );
        let runs = runs.clone();
        engines.push(Arc::new(
            Engine::new(store, config(&scope), move |ctx: HandlerContext| {
                let runs = runs.clone();
                async move {
                    if ctx.token.is_none() {
                        runs.without_claim.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
                    *runs.per_key.lock().expect("runs").entry(key).or_default() += 1;
                    // Paces the stream (about 1,300 messages/s) so the failover happens mid-stream.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, HandlerError>("ok")
                }
            })
            .expect("engine"),
        ));
    }
    let retries = Arc::new(AtomicU64::new(0));
    // One delivery, redelivered (as a broker would) until it is settled; returns whether the
    // handler ran for it.
    let superseded = Arc::new(AtomicU64::new(0));
    let (counter, lost_claims) = (retries.clone(), superseded.clone());
    let deliver = move |engine: Arc<Engine<_>>, key: String| {
        let retries = counter.clone();
        let superseded = lost_claims.clone();
        async move {
            let m = msg(&key);
            let stop = CancellationToken::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match engine.process(m.clone(), &stop).await {
                    Disposition::Retry { after, .. } => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        assert!(Instant::now() < deadline, "{key} never settled");
                        tokio::time::sleep(after).await;
                    }
                    Disposition::Processed { .. } => return true,
                    Disposition::Replayed { .. } => return false,
                    // The complete found no claim of ours: after a failover that lost the claim,
                    // the record is gone (the engine acks, expecting a new owner to store it).
                    Disposition::Superseded => {
                        superseded.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    other => panic!("{key}: unexpected {other:?}"),
                }
            }
        }
    };

    // Phase 1: every key once, spread over the consumers; a primary dies a third of the way in.
    let victim = cluster.primaries()[0];
    let replica = cluster.replica_of(victim).expect("victim has a replica");
    let mut phase1 = Vec::new();
    for (c, engine) in engines.iter().enumerate() {
        let keys: Vec<String> = (c..KEYS)
            .step_by(CONSUMERS)
            .map(|k| format!("k{k}"))
            .collect();
        let engine = engine.clone();
        let deliver = deliver.clone();
        phase1.push(tokio::spawn(async move {
            stream::iter(keys)
                .map(|k| deliver(engine.clone(), k))
                .buffer_unordered(CONCURRENCY)
                .count()
                .await
        }));
    }
    let start = Instant::now();
    while runs.per_key.lock().expect("runs").len() < KEYS / 3 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The replica lags when its primary dies, as one on a slow link would: whatever the primary
    // acknowledges from now on exists nowhere else.
    cluster
        .lag_replica(victim, replica)
        .expect("lag the replica");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_kill = runs.per_key.lock().expect("runs").len();
    cluster.kill(victim);
    cluster.resume(replica).expect("SIGCONT");
    eprintln!(
        "killed primary {victim} after {:?} with {at_kill} keys run",
        start.elapsed()
    );
    // The cluster promotes the replica; the old primary comes back as its replica (so `WAIT 1`
    // can succeed again for those slots).
    let promoted = Instant::now();
    while !cluster.primaries().contains(&replica) {
        assert!(
            promoted.elapsed() < Duration::from_secs(30),
            "replica {replica} not promoted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart(victim).expect("restart old primary");
    let mut settled = 0;
    for t in phase1 {
        settled += t.await.expect("consumer");
    }
    assert_eq!(settled, KEYS, "every delivery settled (none lost)");
    eprintln!(
        "phase 1 done after {:?}; records per primary {:?}",
        start.elapsed(),
        cluster.keys_per_primary(&format!("{prefix}:*"))
    );

    // Phase 2: every key again; a lost complete shows up as a second run.
    let engine = engines[0].clone();
    let again = stream::iter((0..KEYS).map(|k| format!("k{k}")))
        .map(|k| deliver(engine.clone(), k))
        .buffer_unordered(CONCURRENCY)
        .count()
        .await;
    assert_eq!(again, KEYS);

    let per_key = runs.per_key.lock().expect("runs");
    assert_eq!(per_key.len(), KEYS, "every key ran");
    assert_eq!(runs.without_claim.load(Ordering::Relaxed), 0);
    let double_runs = per_key
        .values()
        .map(|&n| (n as usize).saturating_sub(1))
        .sum();
    Some(Figures {
        replicas,
        double_runs,
        superseded: superseded.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
        killed: victim,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_killed_mid_stream_consumers_keep_going() {
    let Some(without) = run_with(0).await else {
        return;
    };
    let Some(with) = run_with(1).await else {
        return;
    };
    // The figures the docs quote (run with --nocapture to see them).
    println!("failover figures ({KEYS} keys): {without:?} / {with:?}");
    assert!(
        without.double_runs > 0,
        "the lagging replica should have lost acknowledged writes without WAIT: {without:?}"
    );
    assert_eq!(
        with.double_runs, 0,
        "with replicas=1 no acknowledged write may be lost: {with:?}"
    );
}
