//! Handler ergonomics through the engine (memory store): typed JSON input, error
//! classification with `ResultExt`, retry-after hints, and tower services as handlers.

use idemq::handler::{self, Json};
use idemq::prelude::*;
use idemq::store::{MemoryStore, RecordKey, RecordState, Store};
use idemq::{Backoff, IdempotencyKey, MissingKeyPolicy, OutcomeStatus, RetryCause};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SCOPE: &str = "handlers";

fn msg(key: &str, payload: &str) -> Arc<Message> {
    Arc::new(
        Message::new(payload.to_string(), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

fn config() -> EngineConfig {
    let mut c = EngineConfig::new(SCOPE);
    c.retry_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    c.max_attempts = 3;
    c
}

fn record(key: &str) -> RecordKey {
    RecordKey::new(SCOPE, IdempotencyKey::new(key).expect("key"))
}

#[derive(serde::Deserialize)]
struct Order {
    id: String,
    amount: u64,
}

#[tokio::test]
async fn json_handler_gets_the_typed_payload_and_bad_json_is_dead_lettered_as_invalid_payload() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        store.clone(),
        config(),
        handler::json(move |_ctx: HandlerContext, Json(order): Json<Order>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(format!("{}:{}", order.id, order.amount)) }
        }),
    )
    .expect("engine");
    let stop = CancellationToken::new();

    match engine
        .process(msg("good", "{\"id\":\"o-1\",\"amount\":5}"), &stop)
        .await
    {
        Disposition::Processed { outcome } => assert_eq!(&outcome.body[..], b"\"o-1:5\""),
        other => panic!("expected Processed, got {other:?}"),
    }

    match engine.process(msg("bad", "{\"id\":\"o-2\"}"), &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::InvalidPayload);
            assert_eq!(dl.reason.as_str(), "invalid-payload");
            // `x-idemq-error`: the target type and serde's own message, with its position.
            assert!(dl.error.contains("Order"), "{}", dl.error);
            assert!(
                dl.error
                    .contains("missing field `amount` at line 1 column 12"),
                "{}",
                dl.error
            );
        }
        other => panic!("expected an invalid-payload dead letter, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "bad JSON never reaches the handler"
    );
    // Permanent: released (the default), so a fixed handler could run a replayed copy.
    assert!(store
        .get(&record("bad"))
        .await
        .expect("get")
        .is_some_and(|r| r.state == RecordState::Released));
}

#[tokio::test]
async fn ctx_json_in_a_plain_handler_with_stored_permanent_failures() {
    let mut cfg = config();
    cfg.store_permanent_failures = true;
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        cfg,
        |ctx: HandlerContext| async move {
            let order: Order = ctx.json()?;
            Ok::<_, HandlerError>(order.amount)
        },
    )
    .expect("engine");
    let stop = CancellationToken::new();
    let bad = msg("not-json", "amount=5");
    match engine.process(bad.clone(), &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::InvalidPayload);
            assert!(
                dl.error.contains("expected value at line 1 column 1"),
                "{}",
                dl.error
            );
        }
        other => panic!("expected an invalid-payload dead letter, got {other:?}"),
    }
    // The stored failure replays without running the handler again.
    match engine.process(bad, &stop).await {
        Disposition::Replayed { outcome } => assert_eq!(outcome.status, OutcomeStatus::Failed),
        other => panic!("expected the stored failure replayed, got {other:?}"),
    }
}

#[tokio::test]
async fn result_ext_classifies_errors() {
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        config(),
        |ctx: HandlerContext| async move {
            let text = std::str::from_utf8(&ctx.message.payload).permanent()?;
            if text == "flaky" {
                Err(std::io::Error::other("connection reset")).retriable()?;
            }
            let n: u32 = text.parse().permanent()?;
            Ok::<_, HandlerError>(n)
        },
    )
    .expect("engine");
    let stop = CancellationToken::new();
    match engine.process(msg("nan", "twelve"), &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::HandlerFailed);
            assert_eq!(dl.error, "invalid digit found in string");
        }
        other => panic!("expected handler-failed, got {other:?}"),
    }
    match engine.process(msg("flaky", "flaky"), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert_eq!(error, "connection reset"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(matches!(
        engine.process(msg("twelve", "12"), &stop).await,
        Disposition::Processed { .. }
    ));
}

/// A handler that fails retriably, asking for `hint` before the next attempt.
fn hinting(hint: Duration, cfg: EngineConfig) -> Engine<impl Handler> {
    Engine::new(
        Arc::new(MemoryStore::new()),
        cfg,
        move |_ctx: HandlerContext| async move {
            Err::<(), _>(HandlerError::retriable("429 Too Many Requests").retry_after(hint))
        },
    )
    .expect("engine")
}

#[tokio::test]
async fn retry_after_replaces_the_backoff_and_is_clamped_to_its_max() {
    let stop = CancellationToken::new();
    // Configured backoff: 10 ms first; the hint wins, exactly (no jitter).
    let engine = hinting(Duration::from_millis(750), config());
    for attempt in 1..=2 {
        match engine.process(msg("hinted", "p"), &stop).await {
            Disposition::Retry {
                after,
                cause: RetryCause::HandlerFailed { attempt: a, .. },
            } => {
                assert_eq!(a, attempt);
                assert_eq!(after, Duration::from_millis(750));
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }
    // The attempt limit still applies.
    match engine.process(msg("hinted", "p"), &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted),
        other => panic!("expected retries-exhausted, got {other:?}"),
    }

    // A hint above `retry_backoff.max` (2 s here) is clamped to it.
    let engine = hinting(Duration::from_secs(3600), config());
    match engine.process(msg("huge-hint", "p"), &stop).await {
        Disposition::Retry { after, .. } => assert_eq!(after, Duration::from_secs(2)),
        other => panic!("expected a retry, got {other:?}"),
    }

    // Without a hint: the configured backoff (10 ms ± 20 % jitter).
    let plain = Engine::new(
        Arc::new(MemoryStore::new()),
        config(),
        |_ctx: HandlerContext| async { Err::<(), _>(HandlerError::retriable("down")) },
    )
    .expect("engine");
    match plain.process(msg("plain", "p"), &stop).await {
        Disposition::Retry { after, .. } => {
            assert!(after <= Duration::from_millis(12), "{after:?}")
        }
        other => panic!("expected a retry, got {other:?}"),
    }
}

/// Without deduplication the engine retries in place; it waits for the hint there too.
#[tokio::test(start_paused = true)]
async fn retry_after_paces_in_place_retries_without_dedup() {
    let mut cfg = config();
    cfg.key.missing = MissingKeyPolicy::ProcessWithoutDedup;
    let engine = hinting(Duration::from_secs(1), cfg);
    let started = tokio::time::Instant::now();
    let unkeyed = Arc::new(Message::new("p", Source::Other("test".into())));
    match engine.process(unkeyed, &CancellationToken::new()).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted),
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    // Three attempts, two waits of the hinted 1 s.
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[cfg(feature = "tower")]
mod tower_services {
    use super::*;
    use tower::ServiceBuilder;

    /// A tower timeout layer's `Elapsed` is a retriable failure (claim released, attempt
    /// counted); the next, fast attempt is stored and later copies replay it.
    #[tokio::test]
    async fn timeout_layer_error_is_retriable_and_the_outcome_is_stored_then_replayed() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let svc = ServiceBuilder::new()
            .concurrency_limit(2)
            .timeout(Duration::from_millis(50))
            .service_fn(move |ctx: HandlerContext| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if ctx.attempt == 1 {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Ok::<_, HandlerError>(serde_json::json!({ "attempt": ctx.attempt }))
                }
            });
        let store = Arc::new(MemoryStore::new());
        let engine = Engine::new(store.clone(), config(), handler::service(svc)).expect("engine");
        let stop = CancellationToken::new();

        match engine.process(msg("slow", "p"), &stop).await {
            Disposition::Retry {
                cause: RetryCause::HandlerFailed { attempt: 1, error },
                ..
            } => assert!(error.contains("timed out"), "{error}"),
            other => panic!("expected a retriable failure, got {other:?}"),
        }
        let rec = store
            .get(&record("slow"))
            .await
            .expect("get")
            .expect("record");
        assert_eq!((rec.state, rec.attempt), (RecordState::Released, 1));

        match engine.process(msg("slow", "p"), &stop).await {
            Disposition::Processed { outcome } => {
                assert_eq!(&outcome.body[..], b"{\"attempt\":2}")
            }
            other => panic!("expected Processed, got {other:?}"),
        }
        match engine.process(msg("slow", "p"), &stop).await {
            Disposition::Replayed { outcome } => {
                assert_eq!(&outcome.body[..], b"{\"attempt\":2}")
            }
            other => panic!("expected Replayed, got {other:?}"),
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the replay did not call the service"
        );
    }

    /// A `HandlerError` from the inner service keeps its kind through tower's boxed errors.
    #[tokio::test]
    async fn inner_handler_errors_keep_their_kind_through_layers() {
        let svc = ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service_fn(|ctx: HandlerContext| async move {
                let order: Order = ctx.json()?;
                Ok::<_, HandlerError>(order.amount)
            });
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            config(),
            handler::service(svc),
        )
        .expect("engine");
        match engine
            .process(msg("bad", "[]"), &CancellationToken::new())
            .await
        {
            Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::InvalidPayload),
            other => panic!("expected invalid-payload, got {other:?}"),
        }
    }

    /// `poll_ready` is honoured: with a concurrency limit of 1, a second message waits until the
    /// first one's call is done.
    #[tokio::test]
    async fn concurrency_limit_holds_messages_in_poll_ready() {
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let svc =
            ServiceBuilder::new()
                .concurrency_limit(1)
                .service_fn(move |_ctx: HandlerContext| {
                    let (r, p) = (r.clone(), p.clone());
                    async move {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        r.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, HandlerError>(())
                    }
                });
        let engine = Engine::new(
            Arc::new(MemoryStore::new()),
            config(),
            handler::service(svc),
        )
        .expect("engine");
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    engine
                        .process(msg(&format!("k{i}"), "p"), &CancellationToken::new())
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert!(matches!(
                t.await.expect("task"),
                Disposition::Processed { .. }
            ));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }
}
