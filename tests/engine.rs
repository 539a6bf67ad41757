//! The engine against the processing contract (docs/semantics.md), on the memory store.
//!
//! Cases where time matters run on tokio's paused clock (the memory store keeps time with
//! `tokio::time::Instant`), so leases of seconds cost no wall time and timings are exact.

mod support;

use idemq::store::{Claim, ClaimRequest, MemoryStore, RecordKey, RecordState, Store};
use idemq::{
    CancellationToken, ConfigError, DeadLetter, DeadLetterReason, Disposition, Engine,
    EngineConfig, Fingerprint, HandlerContext, HandlerError, IdempotencyKey, Message,
    MissingKeyPolicy, OutcomeStatus, RetryCause, Source,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::faulty::FaultyStore;
use tokio::time::Instant;

const SCOPE: &str = "orders";

fn msg(key: &str, payload: &str) -> Arc<Message> {
    Arc::new(
        Message::new(payload.to_string(), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

fn record_key(key: &str) -> RecordKey {
    RecordKey::new(SCOPE, IdempotencyKey::new(key).expect("key"))
}

fn config() -> EngineConfig {
    let mut c = EngineConfig::new(SCOPE);
    c.lease = Duration::from_secs(3);
    c.retry_backoff = idemq::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    c
}

/// An engine whose handler counts its runs and returns the payload length.
fn counting(
    store: Arc<dyn Store>,
    cfg: EngineConfig,
) -> (Engine<impl idemq::Handler>, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let engine = Engine::new(store, cfg, move |ctx: HandlerContext| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(ctx.message.payload.len())
        }
    })
    .expect("engine");
    (engine, runs)
}

fn stop() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test]
async fn first_copy_runs_and_replays_return_the_stored_outcome() {
    let (engine, runs) = counting(Arc::new(MemoryStore::new()), config());
    let m = msg("k1", "hello");
    match engine.process(m.clone(), &stop()).await {
        Disposition::Processed { outcome } => assert_eq!(outcome.decode::<usize>().ok(), Some(5)),
        other => panic!("expected Processed, got {other:?}"),
    }
    for _ in 0..3 {
        match engine.process(m.clone(), &stop()).await {
            Disposition::Replayed { outcome } => {
                assert_eq!(outcome.decode::<usize>().ok(), Some(5));
                assert_eq!(outcome.status, OutcomeStatus::Succeeded);
            }
            other => panic!("expected Replayed, got {other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_from_many_consumers_run_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    // 4 "consumers" (engines on one store), each receiving 8 copies of 10 keys at once.
    for _ in 0..4 {
        let r = runs.clone();
        let engine = Engine::new(store.clone(), config(), move |_ctx: HandlerContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, HandlerError>("done")
            }
        })
        .expect("engine");
        for key in 0..10 {
            for _ in 0..8 {
                let e = engine.clone();
                let m = msg(&format!("key-{key}"), "same payload");
                tasks.push(tokio::spawn(async move { e.process(m, &stop()).await }));
            }
        }
    }
    let (mut processed, mut replayed) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Disposition::Processed { .. } => processed += 1,
            Disposition::Replayed { .. } => replayed += 1,
            other => panic!("every copy must end acked after the owner completes, got {other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 10, "one run per key");
    assert_eq!((processed, replayed), (10, 310));
}

#[tokio::test]
async fn same_key_other_payload_is_a_conflict_and_does_not_run() {
    let (engine, runs) = counting(Arc::new(MemoryStore::new()), config());
    assert!(matches!(
        engine.process(msg("k", "a"), &stop()).await,
        Disposition::Processed { .. }
    ));
    match engine.process(msg("k", "b"), &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::Conflict);
            assert_eq!(dl.reason.as_str(), "idempotency-key-conflict");
            assert!(dl.error.contains("fingerprint"), "{}", dl.error);
        }
        other => panic!("expected a conflict dead-letter, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn missing_and_invalid_keys_follow_the_reject_policy() {
    let (engine, runs) = counting(Arc::new(MemoryStore::new()), config());
    let no_key = Arc::new(Message::new("p", Source::Other("t".into())));
    match engine.process(no_key, &stop()).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason.as_str(), "missing-idempotency-key"),
        other => panic!("{other:?}"),
    }
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![b'k'; 256],
        vec![0xc3, 0x28],
        b"tab\there".to_vec(),
    ];
    for raw in bad {
        let m = Arc::new(
            Message::new("p", Source::Other("t".into()))
                .with_header("Idempotency-Key", raw.clone()),
        );
        match engine.process(m, &stop()).await {
            Disposition::DeadLetter(dl) => {
                assert_eq!(dl.reason.as_str(), "invalid-idempotency-key", "{raw:?}")
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn process_without_dedup_runs_every_copy() {
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::ProcessWithoutDedup;
    let (engine, runs) = counting(Arc::new(MemoryStore::new()), cfg);
    let m = Arc::new(Message::new("p", Source::Other("t".into())));
    for _ in 0..2 {
        assert!(matches!(
            engine.process(m.clone(), &stop()).await,
            Disposition::Unkeyed { .. }
        ));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn derive_from_payload_deduplicates_identical_payloads() {
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::DeriveFromPayload;
    let (engine, runs) = counting(Arc::new(MemoryStore::new()), cfg);
    let a = Arc::new(Message::new("same", Source::Other("t".into())));
    let b = Arc::new(Message::new("other", Source::Other("t".into())));
    assert!(matches!(
        engine.process(a.clone(), &stop()).await,
        Disposition::Processed { .. }
    ));
    assert!(matches!(
        engine.process(a, &stop()).await,
        Disposition::Replayed { .. }
    ));
    assert!(matches!(
        engine.process(b, &stop()).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn crashed_owner_is_taken_over_within_lease_plus_one_poll() {
    let store = Arc::new(MemoryStore::new());
    let cfg = config();
    // A consumer claims and "crashes": it never completes, releases or renews.
    let key = record_key("crash");
    let f = Fingerprint::of(&msg("crash", "p"), &[]);
    let req = ClaimRequest::new(&key, &f, cfg.lease, cfg.retention);
    assert!(matches!(
        store.claim(&req).await,
        Ok(Claim::Acquired { .. })
    ));

    let (engine, runs) = counting(store.clone(), cfg.clone());
    let start = Instant::now();
    assert!(matches!(
        engine.process(msg("crash", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
    let waited = start.elapsed();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        waited >= cfg.lease,
        "took over before the lease ended: {waited:?}"
    );
    assert!(
        waited <= cfg.lease + cfg.in_flight_poll.max,
        "took over late: {waited:?}"
    );
    let rec = store.get(&key).await.expect("get").expect("record");
    assert_eq!(rec.attempt, 2);
}

#[tokio::test(start_paused = true)]
async fn live_owner_makes_duplicates_wait_then_retry_without_acking() {
    let store = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.in_flight_wait = Some(Duration::from_secs(1));
    let key = record_key("busy");
    let f = Fingerprint::of(&msg("busy", "p"), &[]);
    let req = ClaimRequest::new(&key, &f, Duration::from_secs(60), cfg.retention);
    assert!(matches!(
        store.claim(&req).await,
        Ok(Claim::Acquired { .. })
    ));

    let (engine, runs) = counting(store.clone(), cfg);
    let start = Instant::now();
    match engine.process(msg("busy", "p"), &stop()).await {
        Disposition::Retry { cause, .. } => assert_eq!(cause, RetryCause::InFlightElsewhere),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn long_handler_renews_its_lease_so_nobody_takes_over() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    // Runs for 4 leases; renewal every lease/3 keeps the claim alive.
    let engine = Engine::new(store.clone(), config(), move |_ctx: HandlerContext| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(12)).await;
            Ok::<_, HandlerError>(())
        }
    })
    .expect("engine");
    let slow = tokio::spawn({
        let e = engine.clone();
        async move { e.process(msg("long", "p"), &stop()).await }
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    // 7 s in, past two original leases: the duplicate must not take over; it waits its bound
    // (lease + 1 s) and hands back a retry without acking.
    let dup = engine.process(msg("long", "p"), &stop()).await;
    assert!(
        matches!(
            dup,
            Disposition::Retry {
                cause: RetryCause::InFlightElsewhere,
                ..
            }
        ),
        "{dup:?}"
    );
    assert!(matches!(
        slow.await.expect("task"),
        Disposition::Processed { .. }
    ));
    let retried = engine.process(msg("long", "p"), &stop()).await;
    assert!(
        matches!(retried, Disposition::Replayed { .. }),
        "{retried:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stalled_owner_cannot_overwrite_the_new_owners_outcome() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let store: Arc<dyn Store> = faulty.clone();
    // The stalled consumer cannot renew (its store link is flaky) and runs past its lease.
    faulty.renew_down.store(true, Ordering::SeqCst);
    let stalled = Engine::new(store.clone(), config(), |_ctx: HandlerContext| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, HandlerError>("stalled")
    })
    .expect("engine");
    let fast = Engine::new(store.clone(), config(), |_ctx: HandlerContext| async {
        Ok::<_, HandlerError>("new owner")
    })
    .expect("engine");
    let first = tokio::spawn(async move { stalled.process(msg("fence", "p"), &stop()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The new owner waits for the lease to expire, takes over and completes.
    assert!(matches!(
        fast.process(msg("fence", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(first.await.expect("task"), Disposition::Superseded);
    match store
        .get(&record_key("fence"))
        .await
        .expect("get")
        .expect("record")
        .state
    {
        RecordState::Completed { outcome, .. } => {
            assert_eq!(
                outcome.decode::<String>().ok().as_deref(),
                Some("new owner")
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn retriable_failures_release_retry_then_dead_letter_and_reset() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.max_attempts = 3;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let engine = Engine::new(store.clone(), cfg, move |ctx: HandlerContext| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(HandlerError::retriable(format!(
                "db timeout on attempt {}",
                ctx.attempt
            )))
        }
    })
    .expect("engine");
    for attempt in 1..=2 {
        match engine.process(msg("flaky", "p"), &stop()).await {
            Disposition::Retry {
                cause: RetryCause::HandlerFailed { attempt: a, error },
                ..
            } => {
                assert_eq!(a, attempt);
                assert!(error.contains("db timeout"));
            }
            other => panic!("{other:?}"),
        }
        let rec = store
            .get(&record_key("flaky"))
            .await
            .expect("get")
            .expect("record");
        assert_eq!(
            rec.state,
            RecordState::Released,
            "a retriable failure releases the claim"
        );
    }
    match engine.process(msg("flaky", "p"), &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("3 attempts"), "{}", dl.error);
        }
        other => panic!("{other:?}"),
    }
    // A later replay (e.g. from the dead-letter queue) starts counting again.
    match engine.process(msg("flaky", "p"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt, .. },
            ..
        } => assert_eq!(attempt, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn permanent_failure_dead_letters_and_a_fixed_replay_runs_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = Engine::new(store.clone(), config(), |_ctx: HandlerContext| async {
        Err::<(), _>(HandlerError::permanent("card declined"))
    })
    .expect("engine");
    match engine.process(msg("perm", "p"), &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason.as_str(), "handler-failed");
            assert!(dl.error.contains("card declined"));
        }
        other => panic!("{other:?}"),
    }
    let (fixed, runs) = counting(store, config());
    assert!(matches!(
        fixed.process(msg("perm", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stored_permanent_failures_are_skipped_on_replay() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.store_permanent_failures = true;
    let engine = Engine::new(store.clone(), cfg.clone(), |_ctx: HandlerContext| async {
        Err::<(), _>(HandlerError::permanent("card declined"))
    })
    .expect("engine");
    assert!(matches!(
        engine.process(msg("perm", "p"), &stop()).await,
        Disposition::DeadLetter(_)
    ));
    let (other, runs) = counting(store, cfg);
    match other.process(msg("perm", "p"), &stop()).await {
        Disposition::Replayed { outcome } => {
            assert_eq!(outcome.status, OutcomeStatus::Failed);
            assert!(String::from_utf8_lossy(&outcome.body).contains("card declined"));
        }
        d => panic!("{d:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_panicking_handler_is_a_retriable_failure() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = Engine::new(store.clone(), config(), |ctx: HandlerContext| async move {
        if ctx.attempt == 1 {
            panic!("bug in handler");
        }
        Ok::<_, HandlerError>("fine")
    })
    .expect("engine");
    match engine.process(msg("boom", "p"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { error, .. },
            ..
        } => assert!(error.contains("bug in handler"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        engine.process(msg("boom", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
}

#[tokio::test]
async fn oversized_outcome_is_dead_lettered_and_released() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.max_outcome_bytes = 100;
    let engine = Engine::new(store.clone(), cfg, |_ctx: HandlerContext| async {
        Ok::<_, HandlerError>("x".repeat(200))
    })
    .expect("engine");
    match engine.process(msg("big", "p"), &stop()).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason.as_str(), "outcome-too-large"),
        other => panic!("{other:?}"),
    }
    let rec = store
        .get(&record_key("big"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(rec.state, RecordState::Released);
}

#[tokio::test]
async fn store_outage_runs_nothing_and_asks_for_a_retry() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    let (engine, runs) = counting(faulty.clone(), config());
    faulty.set_down(true);
    for _ in 0..3 {
        match engine.process(msg("k", "p"), &stop()).await {
            Disposition::Retry {
                cause: RetryCause::StoreUnavailable { error },
                after,
            } => {
                assert!(error.contains("injected outage"));
                assert!(after > Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    faulty.set_down(false);
    assert!(matches!(
        engine.process(msg("k", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn outcome_write_is_retried_until_durable_without_rerunning() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    faulty.complete_failures.store(4, Ordering::SeqCst);
    let (engine, runs) = counting(faulty.clone(), config());
    assert!(matches!(
        engine.process(msg("k", "p"), &stop()).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(matches!(
        engine.process(msg("k", "p"), &stop()).await,
        Disposition::Replayed { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn unreadable_record_is_dead_lettered_after_bounded_retries() {
    let faulty = FaultyStore::new(Arc::new(MemoryStore::new()));
    faulty.corrupt.store(true, Ordering::SeqCst);
    let (engine, runs) = counting(faulty.clone(), config());
    match engine.process(msg("rotten", "p"), &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason.as_str(), "corrupt-record");
            assert!(
                dl.error.contains("rotten"),
                "the error names the key: {}",
                dl.error
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_waiting_for_another_owner_abandons_without_ack() {
    let store = Arc::new(MemoryStore::new());
    let key = record_key("wait");
    let f = Fingerprint::of(&msg("wait", "p"), &[]);
    let req = ClaimRequest::new(&key, &f, Duration::from_secs(60), Duration::from_secs(600));
    assert!(matches!(
        store.claim(&req).await,
        Ok(Claim::Acquired { .. })
    ));
    let (engine, _runs) = counting(store, config());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.cancel();
    });
    assert_eq!(
        engine.process(msg("wait", "p"), &shutdown).await,
        Disposition::Abandoned
    );
}

#[tokio::test(start_paused = true)]
async fn handler_past_the_shutdown_grace_is_dropped_and_its_claim_released() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.shutdown_grace = Duration::from_secs(2);
    let engine = Engine::new(store.clone(), cfg, |_ctx: HandlerContext| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, HandlerError>(())
    })
    .expect("engine");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.cancel();
    });
    assert_eq!(
        engine.process(msg("slow", "p"), &shutdown).await,
        Disposition::Abandoned
    );
    let rec = store
        .get(&record_key("slow"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(
        rec.state,
        RecordState::Released,
        "the next delivery can claim at once"
    );
}

#[tokio::test]
async fn scopes_separate_consumers_of_the_same_message() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (billing, billing_runs) = counting(store.clone(), EngineConfig::new("billing"));
    let (shipping, shipping_runs) = counting(store, EngineConfig::new("shipping"));
    for e in [&billing, &billing] {
        e.process(msg("order-1", "p"), &stop()).await;
    }
    shipping.process(msg("order-1", "p"), &stop()).await;
    assert_eq!(billing_runs.load(Ordering::SeqCst), 1);
    assert_eq!(shipping_runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn process_without_dedup_retries_in_place_then_dead_letters() {
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::ProcessWithoutDedup;
    cfg.max_attempts = 3;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        cfg,
        move |ctx: HandlerContext| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                assert!(ctx.key.is_none() && ctx.token.is_none());
                Err::<(), _>(HandlerError::retriable("downstream busy"))
            }
        },
    )
    .expect("engine");
    let m = Arc::new(Message::new("p", Source::Other("t".into())));
    match engine.process(m, &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("downstream busy"), "{}", dl.error);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

// ---- Issue 12: contract holes ----

/// A record deleted (expiry, eviction, `idemq key forget --force`) or released by someone else
/// while the handler ran: nobody owns the key, so acking without storing would leave no outcome
/// and a later copy would run the handler again. The record is re-created with the outcome.
#[tokio::test]
async fn record_gone_on_complete_is_recreated_not_acked_as_superseded() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let (s, r) = (store.clone(), runs.clone());
    let engine = Engine::new(store.clone(), config(), move |ctx: HandlerContext| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let key = RecordKey::new(SCOPE, ctx.key.clone().expect("key"));
            // What an operator's forget or release does behind the consumer's back.
            if ctx.message.payload.as_ref() == b"forget" {
                assert!(s.forget(&key).await.expect("forget"));
            } else {
                let token = ctx.token.expect("token");
                s.release(&key, token, idemq::store::Release::Retry)
                    .await
                    .expect("release");
            }
            Ok::<_, HandlerError>("done")
        }
    })
    .expect("engine");
    for (key, payload) in [("gone", "forget"), ("released", "release")] {
        match engine.process(msg(key, payload), &stop()).await {
            Disposition::Processed { outcome } => {
                assert_eq!(outcome.decode::<String>().ok().as_deref(), Some("done"))
            }
            other => panic!("{key}: expected Processed (record re-created), got {other:?}"),
        }
        match store
            .get(&record_key(key))
            .await
            .expect("get")
            .map(|r| r.state)
        {
            Some(RecordState::Completed { outcome, .. }) => {
                assert_eq!(outcome.decode::<String>().ok().as_deref(), Some("done"))
            }
            other => panic!("{key}: the outcome must be durable, found {other:?}"),
        }
        assert!(matches!(
            engine.process(msg(key, payload), &stop()).await,
            Disposition::Replayed { .. }
        ));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
}

#[tokio::test(start_paused = true)]
async fn hung_handler_times_out_as_a_retriable_failure() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.handler_timeout = Some(Duration::from_secs(20));
    cfg.max_attempts = 2;
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let engine = Engine::new(store.clone(), cfg, move |_ctx: HandlerContext| {
        r.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<(), HandlerError>>()
    })
    .expect("engine");
    let started = Instant::now();
    match engine.process(msg("hung", "p"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("timed out"), "{error}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "{waited:?}"
    );
    let rec = store.get(&record_key("hung")).await.expect("get");
    assert_eq!(
        rec.map(|r| r.state),
        Some(RecordState::Released),
        "claim released for the next attempt"
    );
    match engine.process(msg("hung", "p"), &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("timed out"), "{}", dl.error);
        }
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn handler_timeout_is_bounded_by_validation() {
    let mut cfg = config();
    cfg.handler_timeout = Some(Duration::ZERO);
    assert!(matches!(
        Engine::new(
            Arc::new(MemoryStore::new()),
            cfg,
            |_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) }
        ),
        Err(ConfigError::DurationOutOfRange {
            field: "handler_timeout",
            ..
        })
    ));
    assert_eq!(
        EngineConfig::new("s").handler_timeout,
        Some(Duration::from_secs(600))
    );
}

/// A handler whose closure panics before it returns its future.
#[tokio::test]
async fn handler_panicking_before_its_future_is_a_retriable_failure() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.max_attempts = 2;
    let engine = Engine::new(store.clone(), cfg, |ctx: HandlerContext| {
        if ctx.message.payload.as_ref() == b"sync" {
            panic!("synchronous bug");
        }
        async { Ok::<_, HandlerError>("fine") }
    })
    .expect("engine");
    match engine.process(msg("sync-boom", "sync"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { error, .. },
            ..
        } => assert!(error.contains("synchronous bug"), "{error}"),
        other => panic!("{other:?}"),
    }
    let rec = store.get(&record_key("sync-boom")).await.expect("get");
    assert_eq!(rec.map(|r| r.state), Some(RecordState::Released));
    assert!(matches!(
        engine.process(msg("sync-boom", "sync"), &stop()).await,
        Disposition::DeadLetter(DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            ..
        })
    ));
    // Without deduplication the panic is retried in place, then dead-lettered.
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::ProcessWithoutDedup;
    cfg.max_attempts = 2;
    let engine = Engine::new(store, cfg, |_ctx: HandlerContext| {
        panic!("synchronous bug");
        #[allow(unreachable_code)]
        async {
            Ok::<_, HandlerError>(())
        }
    })
    .expect("engine");
    let m = Arc::new(Message::new("sync", Source::Other("t".into())));
    assert!(matches!(
        engine.process(m, &stop()).await,
        Disposition::DeadLetter(DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            ..
        })
    ));
}

/// A hand-written `Handler` whose `handle` panics before returning its future.
#[tokio::test]
async fn handler_impl_panicking_in_handle_is_a_retriable_failure() {
    struct Broken;
    impl idemq::Handler for Broken {
        type Output = ();
        #[allow(unreachable_code)]
        fn handle(
            &self,
            _ctx: HandlerContext,
        ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send {
            panic!("panicked in handle");
            async { Ok(()) }
        }
    }
    let engine = Engine::new(Arc::new(MemoryStore::new()), config(), Broken).expect("engine");
    match engine.process(msg("impl-boom", "p"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { error, .. },
            ..
        } => assert!(error.contains("panicked in handle"), "{error}"),
        other => panic!("{other:?}"),
    }
}

/// An outcome whose `Serialize` implementation panics.
struct SerializeBomb;

impl serde::Serialize for SerializeBomb {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        panic!("serialize bomb")
    }
}

#[tokio::test]
async fn outcome_serialize_panic_is_a_retriable_failure() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut cfg = config();
    cfg.max_attempts = 2;
    let engine = Engine::new(store.clone(), cfg, |_ctx: HandlerContext| async {
        Ok::<_, HandlerError>(SerializeBomb)
    })
    .expect("engine");
    match engine.process(msg("ser-boom", "p"), &stop()).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("serialize bomb"), "{error}"),
        other => panic!("{other:?}"),
    }
    let rec = store.get(&record_key("ser-boom")).await.expect("get");
    assert_eq!(rec.map(|r| r.state), Some(RecordState::Released));
    assert!(matches!(
        engine.process(msg("ser-boom", "p"), &stop()).await,
        Disposition::DeadLetter(DeadLetter {
            reason: DeadLetterReason::RetriesExhausted,
            ..
        })
    ));
    // Without deduplication too.
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::ProcessWithoutDedup;
    cfg.max_attempts = 2;
    let engine = Engine::new(store, cfg, |_ctx: HandlerContext| async {
        Ok::<_, HandlerError>(SerializeBomb)
    })
    .expect("engine");
    let m = Arc::new(Message::new("p", Source::Other("t".into())));
    match engine.process(m, &stop()).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("serialize bomb"), "{}", dl.error);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn huge_durations_are_refused_with_a_typed_error() {
    let huge = Duration::MAX;
    let mut cfg = config();
    cfg.lease = huge;
    cfg.retention = huge;
    match Engine::new(
        Arc::new(MemoryStore::new()),
        cfg,
        |_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) },
    ) {
        Err(ConfigError::DurationOutOfRange {
            field, value, max, ..
        }) => {
            assert_eq!(
                (field, value, max),
                ("lease", huge, idemq::engine::MAX_LEASE)
            );
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a lease of Duration::MAX must be refused"),
    }
    let mut cfg = config();
    cfg.retention = Duration::from_secs(366 * 24 * 3600);
    let err = EngineConfig::validate(&cfg).expect_err("retention above 365 days");
    assert!(err.to_string().contains("retention"), "{err}");
    let mut cfg = config();
    cfg.in_flight_wait = Some(huge);
    assert!(cfg.validate().is_err());
}

/// The memory store is usable without the engine: huge durations saturate instead of panicking.
#[tokio::test]
async fn memory_store_does_not_panic_on_huge_durations() {
    let store = MemoryStore::new();
    let key = record_key("forever");
    let f = Fingerprint::of(&msg("forever", "p"), &[]);
    let req = ClaimRequest::new(&key, &f, Duration::MAX, Duration::MAX);
    let Ok(Claim::Acquired { token, .. }) = store.claim(&req).await else {
        panic!("claim");
    };
    assert!(matches!(
        store.claim(&req).await,
        Ok(Claim::InFlight { .. })
    ));
    store
        .renew(&key, token, Duration::MAX)
        .await
        .expect("renew");
    store
        .complete(&key, token, &idemq::Outcome::succeeded("x"), Duration::MAX)
        .await
        .expect("complete");
    assert!(matches!(
        store.claim(&req).await,
        Ok(Claim::Completed { .. })
    ));
}

/// A store whose `complete` finds the record unreadable.
#[derive(Debug)]
struct CorruptOnComplete {
    inner: MemoryStore,
    completes: AtomicU32,
}

#[async_trait::async_trait]
impl Store for CorruptOnComplete {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, idemq::StoreError> {
        self.inner.claim(req).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        _token: idemq::store::Token,
        _outcome: &idemq::Outcome,
        _retention: Duration,
    ) -> Result<idemq::store::Fence, idemq::StoreError> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        Err(idemq::StoreError::Corrupt {
            key: key.to_string(),
            detail: "injected corruption".into(),
        })
    }
    async fn release(
        &self,
        key: &RecordKey,
        token: idemq::store::Token,
        mode: idemq::store::Release,
    ) -> Result<idemq::store::Fence, idemq::StoreError> {
        self.inner.release(key, token, mode).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: idemq::store::Token,
        lease: Duration,
    ) -> Result<idemq::store::Fence, idemq::StoreError> {
        self.inner.renew(key, token, lease).await
    }
    async fn get(
        &self,
        key: &RecordKey,
    ) -> Result<Option<idemq::store::Record>, idemq::StoreError> {
        self.inner.get(key).await
    }
    async fn forget(&self, key: &RecordKey) -> Result<bool, idemq::StoreError> {
        self.inner.forget(key).await
    }
    async fn scan(
        &self,
        scope: &str,
        filter: idemq::store::StateFilter,
        cursor: Option<String>,
        count: usize,
    ) -> Result<idemq::store::ScanPage, idemq::StoreError> {
        self.inner.scan(scope, filter, cursor, count).await
    }
}

#[tokio::test(start_paused = true)]
async fn corrupt_record_met_by_complete_is_dead_lettered_after_bounded_retries() {
    let store = Arc::new(CorruptOnComplete {
        inner: MemoryStore::new(),
        completes: AtomicU32::new(0),
    });
    let cfg = config();
    let retries = cfg.corrupt_record_retries;
    let (engine, runs) = counting(store.clone(), cfg);
    // Bounded: a virtual hour is far beyond the backoff of a few retries.
    let d = tokio::time::timeout(
        Duration::from_secs(3600),
        engine.process(msg("rotten-complete", "p"), &stop()),
    )
    .await
    .expect("the corrupt record must not be retried forever");
    match d {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::CorruptRecord);
            assert!(
                dl.error.contains("rotten-complete"),
                "names the key: {}",
                dl.error
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.completes.load(Ordering::SeqCst), retries + 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
