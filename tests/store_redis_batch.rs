//! Group commit in the Redis store: concurrent `claim` / `complete` calls share `EVALSHA`s, yet
//! every caller gets exactly the result, error and timeout it would get alone. Each test uses a
//! private `redis-server`, so `INFO commandstats` counts only this store's commands.
#![cfg(feature = "redis")]

mod support;

use futures::future::join_all;
use idemq::store::redis::RedisStore;
use idemq::store::{Claim, ClaimRequest, Fence, RecordKey, Store, StoreError, Token};
use idemq::{Fingerprint, IdempotencyKey, Outcome};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};
use support::redis_server::{admin, commandstats, PrivateRedis};

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(60);

fn key(k: &str) -> RecordKey {
    RecordKey::new("batch", IdempotencyKey::new(k).expect("key"))
}

fn fp(s: &str) -> Fingerprint {
    Fingerprint::of_bytes(s.as_bytes())
}

async fn store(url: &str, max_batch: usize) -> RedisStore {
    RedisStore::builder(url)
        .max_batch(max_batch)
        .timeout(Duration::from_millis(1500))
        .build()
        .await
        .expect("connect")
}

async fn claim(s: &RedisStore, k: &RecordKey, f: &Fingerprint) -> Result<Claim, StoreError> {
    s.claim(&ClaimRequest::new(k, f, LEASE, RETENTION)).await
}

async fn evalsha(admin: &mut MultiplexedConnection) -> u64 {
    calls(admin, "evalsha").await
}

async fn calls(admin: &mut MultiplexedConnection, command: &str) -> u64 {
    commandstats(admin).await.get(command).copied().unwrap_or(0)
}

/// Stalls the server for `ms` so that calls made meanwhile queue behind one batch on the wire.
async fn pause(admin: &mut MultiplexedConnection, ms: u64) {
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query_async(admin)
        .await
        .expect("CLIENT PAUSE");
}

/// Batches of one kind the store keeps on the wire at once.
const PIPELINE: u64 = 2;

/// Claims of throwaway keys that block the claim path: the first, made with no other claim in
/// flight, is sent by its caller directly; each later one is one batch of the batcher's pipeline.
const BLOCKERS: u64 = PIPELINE + 1;

/// Starts [`BLOCKERS`] claims of throwaway keys, one call each, that occupy the claim path until
/// the pause ends; the claims made after this returns form the next batch.
async fn occupy_claim_batcher(s: &RedisStore) -> Vec<tokio::task::JoinHandle<()>> {
    let mut blockers = Vec::new();
    for i in 0..BLOCKERS {
        let s = s.clone();
        blockers.push(tokio::spawn(async move {
            let _ = claim(&s, &key(&format!("blocker{i}")), &fp("x")).await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    blockers
}

async fn release_batcher(blockers: Vec<tokio::task::JoinHandle<()>>) {
    for b in blockers {
        b.await.expect("blocker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_and_completes_share_round_trips() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url(), 64).await;
    let mut admin = admin(&server.url()).await;
    let keys: Vec<RecordKey> = (0..200).map(|i| key(&format!("k{i}"))).collect();
    let f = fp("payload");
    let before = evalsha(&mut admin).await;
    let trips_before = s.round_trips();

    let claims = join_all(keys.iter().map(|k| claim(&s, k, &f))).await;
    let tokens: Vec<Token> = claims
        .into_iter()
        .enumerate()
        .map(|(i, c)| match c.expect("claim") {
            Claim::Acquired { token, attempt: 1 } => token,
            other => panic!("k{i}: expected Acquired on attempt 1, got {other:?}"),
        })
        .collect();
    let outcomes: Vec<Outcome> = (0..200)
        .map(|i| Outcome::succeeded(format!("out-{i}")))
        .collect();
    let fences = join_all(
        keys.iter()
            .zip(&outcomes)
            .zip(&tokens)
            .map(|((k, o), t)| s.complete(k, *t, o, RETENTION)),
    )
    .await;
    for (i, r) in fences.into_iter().enumerate() {
        assert_eq!(r.expect("complete"), Fence::Held, "k{i}");
    }

    let used = evalsha(&mut admin).await - before;
    assert!(used < 200, "400 operations took {used} EVALSHA calls");
    // Besides the EVALSHA calls, `round_trips()` counts the claims that found no other claim
    // in flight and went out alone as one plain `SET … NX GET` each (commandstats cannot tell
    // those from the scripts' own `SET`s; the exact count is checked sequentially in
    // store_redis_ops.rs and store_redis_fast_paths.rs). `join_all` starts the calls in rounds,
    // so a few go out alone.
    let trips = s.round_trips() - trips_before;
    assert!(
        (used..used + 20).contains(&trips),
        "round_trips() {trips}, EVALSHA calls {used}"
    );

    // Each key kept its own outcome: replays (batched too) return it.
    let replays = join_all(keys.iter().map(|k| claim(&s, k, &f))).await;
    for (i, (r, o)) in replays.into_iter().zip(&outcomes).enumerate() {
        assert_eq!(
            r.expect("replay"),
            Claim::Completed { outcome: o.clone() },
            "k{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_one_sends_one_command_per_operation() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    // The URL parameter reaches the builder: `batch=1` is the unbatched path.
    let s = idemq::store::connect(&format!("{}/?batch=1", server.url()))
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let keys: Vec<RecordKey> = (0..50).map(|i| key(&format!("one{i}"))).collect();
    let f = fp("p");
    let before = (evalsha(&mut admin).await, calls(&mut admin, "set").await);
    let claims = join_all(keys.iter().map(|k| {
        let s = s.clone();
        async move { s.claim(&ClaimRequest::new(k, &f, LEASE, RETENTION)).await }
    }))
    .await;
    assert!(claims
        .iter()
        .all(|c| matches!(c, Ok(Claim::Acquired { .. }))));
    // Unbatched, each claim of a new key after one that acquired is one plain `SET … NX GET`
    // (no script). A reply that came too late for its token (a starved test process) adds an
    // `EVALSHA` that writes once more; a claim sent to the script alone would add an `EVALSHA`
    // and the script's `SET` but no plain `SET`.
    let (evals, sets) = (
        evalsha(&mut admin).await - before.0,
        calls(&mut admin, "set").await - before.1,
    );
    assert_eq!(sets - evals, 50, "{sets} SETs, {evals} EVALSHA calls");
    assert!(evals <= 50, "{evals}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_twice_in_one_batch_is_acquired_once() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url(), 64).await;
    let mut admin = admin(&server.url()).await;
    let k = key("twice");
    let f = fp("p");
    let before = evalsha(&mut admin).await;
    pause(&mut admin, 300).await;
    let blocker = occupy_claim_batcher(&s).await;
    let (a, b) = tokio::join!(claim(&s, &k, &f), claim(&s, &k, &f));
    release_batcher(blocker).await;
    // The blockers' calls, then one batch with both claims.
    assert_eq!(
        evalsha(&mut admin).await - before,
        BLOCKERS + 1,
        "both claims in one batch"
    );
    let mut results = [a.expect("claim"), b.expect("claim")];
    results.sort_by_key(|c| !matches!(c, Claim::Acquired { .. }));
    assert!(
        matches!(results[0], Claim::Acquired { attempt: 1, .. }),
        "{:?}",
        results[0]
    );
    match &results[1] {
        Claim::InFlight { retry_after } => assert!(*retry_after <= LEASE, "{retry_after:?}"),
        other => panic!("expected InFlight, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_fails_only_its_own_call_in_a_batch() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let s = store(&server.url(), 64).await;
    let mut admin = admin(&server.url()).await;
    let f = fp("p");
    let bad = key("bad");
    let bad_rkey = s.redis_key(&bad);
    assert!(matches!(
        claim(&s, &bad, &f).await.expect("claim"),
        Claim::Acquired { .. }
    ));
    // An in-progress record (format 2) whose fingerprint is not 64 hex digits.
    let () = redis::cmd("SET")
        .arg(&bad_rkey)
        .arg("2|p|1|1|1|||zz|")
        .query_async(&mut admin)
        .await
        .expect("corrupt");
    let good: Vec<RecordKey> = (0..10).map(|i| key(&format!("good{i}"))).collect();
    let is_bad = |e: &StoreError| matches!(e, StoreError::Corrupt { key, .. } if *key == bad_rkey);

    // Claims: the corrupt key sits in the middle of one batch of eleven.
    let before = evalsha(&mut admin).await;
    pause(&mut admin, 300).await;
    let blocker = occupy_claim_batcher(&s).await;
    let mut batch: Vec<&RecordKey> = good.iter().collect();
    batch.insert(5, &bad);
    let results = join_all(batch.iter().map(|k| claim(&s, k, &f))).await;
    release_batcher(blocker).await;
    assert_eq!(
        evalsha(&mut admin).await - before,
        BLOCKERS + 1,
        "one batch of eleven"
    );
    let mut tokens = Vec::new();
    for (k, r) in batch.iter().zip(&results) {
        match r {
            // The corrupt record's token (any will do: it is refused as unreadable).
            Err(e) if *k == &bad => {
                assert!(is_bad(e), "{e}");
                tokens.push(Token(1));
            }
            Ok(Claim::Acquired { token, .. }) if *k != &bad => tokens.push(*token),
            other => panic!("{k:?}: {other:?}"),
        }
    }

    // Completes: the same, through the complete batcher.
    let ok = Outcome::succeeded("ok");
    let results = join_all(
        batch
            .iter()
            .zip(&tokens)
            .map(|(k, t)| s.complete(k, *t, &ok, RETENTION)),
    )
    .await;
    for (k, r) in batch.iter().zip(&results) {
        match r {
            Err(e) if *k == &bad => assert!(is_bad(e), "{e}"),
            Ok(Fence::Held) if *k != &bad => {}
            other => panic!("{k:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_loss_fails_every_queued_call_then_recovers() {
    let Some(mut server) = PrivateRedis::start(&[]) else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let s = RedisStore::builder(server.url())
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let f = fp("p");
    let keys: Vec<RecordKey> = (0..20).map(|i| key(&format!("lost{i}"))).collect();

    // Batches on the wire (stalled), the rest queued behind them, when the server dies.
    pause(&mut admin, 5000).await;
    let calls: Vec<_> = keys
        .iter()
        .map(|k| {
            let (s, k, f) = (s.clone(), k.clone(), f);
            tokio::spawn(async move {
                let start = Instant::now();
                (claim(&s, &k, &f).await, start.elapsed())
            })
        })
        .collect();
    // Callers that give up early (dropped futures) must not upset the batching task.
    for k in &keys[..5] {
        let _ = tokio::time::timeout(Duration::from_millis(1), claim(&s, k, &f)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill();
    for call in calls {
        let (result, took) = call.await.expect("task");
        let err = result.expect_err("server is gone");
        assert!(err.is_transient(), "{err}");
        assert!(took < timeout + Duration::from_millis(300), "took {took:?}");
    }

    // Restarted empty (no scripts loaded): once the store is back, a concurrent batch succeeds
    // (the multi-key script is reloaded on NOSCRIPT).
    server.restart();
    let start = Instant::now();
    loop {
        match claim(&s, &key("probe"), &f).await {
            Ok(_) => break,
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let results = join_all(keys.iter().map(|k| claim(&s, k, &f))).await;
    let tokens: Vec<Token> = results
        .iter()
        .map(|r| match r {
            Ok(Claim::Acquired { token, .. }) => *token,
            other => panic!("expected Acquired, got {other:?}"),
        })
        .collect();
    let ok = Outcome::succeeded("ok");
    let fences = join_all(
        keys.iter()
            .zip(&tokens)
            .map(|(k, t)| s.complete(k, *t, &ok, RETENTION)),
    )
    .await;
    assert!(
        fences.iter().all(|r| matches!(r, Ok(Fence::Held))),
        "{fences:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_every_caller_by_its_own_deadline() {
    let Some(server) = PrivateRedis::start(&[]) else {
        return;
    };
    let timeout = Duration::from_millis(400);
    let s = RedisStore::builder(server.url())
        .timeout(timeout)
        .build()
        .await
        .expect("connect");
    let mut admin = admin(&server.url()).await;
    let f = fp("p");
    claim(&s, &key("warm-up"), &f).await.expect("warm-up claim");

    // Two batches stall on the wire; the calls made while they do wait in the queue. Callers
    // keep no timers of their own: the batching task must answer each of them by its deadline,
    // whether its request was sent (and stalled) or never left the queue.
    pause(&mut admin, 3000).await;
    let mut calls = Vec::new();
    for wave in 0..3 {
        for i in 0..10 {
            let (s, k) = (s.clone(), key(&format!("stalled{wave}-{i}")));
            calls.push(tokio::spawn(async move {
                let start = Instant::now();
                (claim(&s, &k, &f).await, start.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for call in calls {
        let (result, took) = call.await.expect("task");
        assert!(
            matches!(result, Err(StoreError::Timeout { op: "claim", .. })),
            "{result:?}"
        );
        assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
        assert!(
            took + Duration::from_millis(50) >= timeout,
            "early: {took:?}"
        );
    }

    // After the pause the same store serves calls again.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let start = Instant::now();
    loop {
        match claim(&s, &key("after"), &f).await {
            Ok(c) => {
                assert!(matches!(c, Claim::Acquired { .. }), "{c:?}");
                break;
            }
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
