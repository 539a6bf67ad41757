//! Transactional handlers: the handler's writes, the claim and the outcome commit together.
//!
//! Every test writes "effects" (one row per handler execution that reached its insert) into its
//! own table and checks how many of them survive.
#![cfg(feature = "postgres")]

mod support;

use idemq::store::postgres::PostgresStore;
use idemq::store::{RecordKey, RecordState, Store};
use idemq::transactional::{
    from_fn, from_fn_with, Transaction, TransactionalEngine, TransactionalHandler,
};
use idemq::{
    Backoff, CancellationToken, DeadLetterReason, Disposition, EngineConfig, HandlerError,
    IdempotencyKey, Message, OutcomeStatus, Processor, RetryCause, Source,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::postgres::{exec, shared_store, unique_table, SHARED_TABLE};
use support::services::{postgres_url, unique};
use tokio::sync::Notify;

/// What the test handler does after inserting its effect row.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Then {
    Succeed,
    FailRetriable,
    FailPermanent,
    Panic,
    /// Wait for `Fixture::resume` before succeeding.
    WaitThenSucceed,
    /// Never finish (the future is dropped by the test or by the engine's handler timeout).
    Hang,
    /// Never finish, inside a statement (`pg_sleep`): the transaction is busy, not idle.
    HangInStatement,
    /// Run a failing statement, ignore the error, return Ok.
    SwallowSqlError,
    /// Return an outcome above the size limit.
    HugeOutcome,
    /// Keep the transaction busy (`pg_sleep`, not idle) for 1.5 s, then fail retriably.
    SlowThenFailRetriable,
    /// Keep the transaction busy for 1.5 s, then fail permanently.
    SlowThenFailPermanent,
    /// Keep the transaction busy for 1.5 s, then succeed.
    SlowThenSucceed,
}

struct Fixture {
    store: PostgresStore,
    effects: String,
    scope: String,
    runs: Arc<AtomicU32>,
    inserted: Arc<Notify>,
    resume: Arc<Notify>,
}

impl Fixture {
    async fn new() -> Option<Self> {
        let store = shared_store().await?;
        let effects = unique_table("order_effects");
        exec(
            &store,
            &format!(
                "CREATE TABLE {effects} (idempotency_key text NOT NULL, attempt int NOT NULL, \
                 at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ),
        )
        .await;
        Some(Self {
            store,
            effects,
            scope: unique("tx"),
            runs: Arc::new(AtomicU32::new(0)),
            inserted: Arc::new(Notify::new()),
            resume: Arc::new(Notify::new()),
        })
    }

    fn config(&self) -> EngineConfig {
        let mut c = EngineConfig::new(self.scope.clone());
        c.retry_backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        c.max_attempts = 3;
        c.shutdown_grace = Duration::from_millis(100);
        c
    }

    /// An engine whose handler inserts one effect row, then does what `plan(attempt)` says.
    fn engine(
        &self,
        config: EngineConfig,
        plan: fn(u32) -> Then,
    ) -> TransactionalEngine<impl TransactionalHandler<Output = serde_json::Value>> {
        self.engine_on(self.store.clone(), config, plan)
    }

    /// [`Fixture::engine`] on another store (another pool, like another consumer process).
    fn engine_on(
        &self,
        store: PostgresStore,
        config: EngineConfig,
        plan: fn(u32) -> Then,
    ) -> TransactionalEngine<impl TransactionalHandler<Output = serde_json::Value>> {
        let (runs, inserted, resume) = (
            self.runs.clone(),
            self.inserted.clone(),
            self.resume.clone(),
        );
        let insert = format!(
            "INSERT INTO {} (idempotency_key, attempt) VALUES ($1, $2)",
            self.effects
        );
        let state = (runs, inserted, resume, insert, plan);
        let handler = from_fn_with(state, async |state, ctx, tx| {
            let (runs, inserted, resume, insert, plan) = state;
            {
                runs.fetch_add(1, Ordering::SeqCst);
                let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
                let attempt = ctx.attempt as i32;
                tx.execute(insert, &[&key, &attempt])
                    .await
                    .map_err(HandlerError::retriable)?;
                inserted.notify_one();
                match plan(ctx.attempt) {
                    Then::Succeed => {}
                    Then::FailRetriable => return Err(HandlerError::retriable("flaky dependency")),
                    Then::FailPermanent => return Err(HandlerError::permanent("invalid order")),
                    Then::Panic => panic!("handler bug"),
                    Then::WaitThenSucceed => resume.notified().await,
                    Then::Hang => std::future::pending::<()>().await,
                    Then::HangInStatement => {
                        // 60 s, not forever: a broken fix must not leave the session behind.
                        tx.batch_execute("SELECT pg_sleep(60)")
                            .await
                            .map_err(HandlerError::retriable)?;
                    }
                    Then::SwallowSqlError => {
                        let _ = tx.batch_execute("SELECT 1/0").await;
                    }
                    Then::HugeOutcome => {
                        return Ok(serde_json::json!({ "blob": "x".repeat(2 * 1024 * 1024) }))
                    }
                    Then::SlowThenSucceed => {
                        tx.batch_execute("SELECT pg_sleep(1.5)")
                            .await
                            .map_err(HandlerError::retriable)?;
                    }
                    Then::SlowThenFailRetriable | Then::SlowThenFailPermanent => {
                        tx.batch_execute("SELECT pg_sleep(1.5)")
                            .await
                            .map_err(HandlerError::retriable)?;
                        return Err(if plan(ctx.attempt) == Then::SlowThenFailRetriable {
                            HandlerError::retriable("slow and flaky")
                        } else {
                            HandlerError::permanent("slow and invalid")
                        });
                    }
                }
                Ok(serde_json::json!({ "booked": key }))
            }
        });
        TransactionalEngine::new(store, config, handler).expect("engine")
    }

    fn message(&self, key: &str, payload: &str) -> Arc<Message> {
        Arc::new(
            Message::new(payload.to_string(), Source::Other("test".into()))
                .with_header("Idempotency-Key", key.to_string()),
        )
    }

    fn record_key(&self, key: &str) -> RecordKey {
        RecordKey::new(self.scope.clone(), IdempotencyKey::new(key).expect("key"))
    }

    /// Committed effect rows for `key`, read on another connection.
    async fn effects(&self, key: &str) -> i64 {
        let client = self.store.pool().get().await.expect("client");
        client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE idempotency_key = $1",
                    self.effects
                ),
                &[&key],
            )
            .await
            .expect("count")
            .get(0)
    }

    async fn drop_table(self) {
        exec(&self.store, &format!("DROP TABLE {}", self.effects)).await;
    }
}

fn always(then: Then) -> fn(u32) -> Then {
    match then {
        Then::Succeed => |_| Then::Succeed,
        Then::FailRetriable => |_| Then::FailRetriable,
        Then::FailPermanent => |_| Then::FailPermanent,
        Then::Panic => |_| Then::Panic,
        Then::WaitThenSucceed => |_| Then::WaitThenSucceed,
        Then::Hang => |_| Then::Hang,
        Then::HangInStatement => |_| Then::HangInStatement,
        Then::SwallowSqlError => |_| Then::SwallowSqlError,
        Then::HugeOutcome => |_| Then::HugeOutcome,
        Then::SlowThenFailRetriable => |_| Then::SlowThenFailRetriable,
        Then::SlowThenFailPermanent => |_| Then::SlowThenFailPermanent,
        Then::SlowThenSucceed => |_| Then::SlowThenSucceed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_produce_exactly_one_effect_row() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    // Two engines on separate pools, like two consumer processes.
    let other_store = shared_store().await.expect("second store");
    let a = Arc::new(fx.engine(fx.config(), always(Then::Succeed)));
    let b = Arc::new(fx.engine_on(other_store, fx.config(), always(Then::Succeed)));
    for round in 0..3 {
        let key = format!("order-{round}");
        let msg = fx.message(&key, "{\"amount\":5}");
        let stop = CancellationToken::new();
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let (a, b, msg, stop) = (a.clone(), b.clone(), msg.clone(), stop.clone());
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        a.process(msg, &stop).await
                    } else {
                        b.process(msg, &stop).await
                    }
                })
            })
            .collect();
        let (mut processed, mut replayed) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Disposition::Processed { .. } => processed += 1,
                Disposition::Replayed { outcome } => {
                    assert_eq!(outcome.status, OutcomeStatus::Succeeded);
                    replayed += 1
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((processed, replayed), (1, 11), "round {round}");
        assert_eq!(fx.effects(&key).await, 1, "round {round}");
    }
    assert_eq!(
        fx.runs.load(Ordering::SeqCst),
        3,
        "the handler ran once per key"
    );
    fx.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_waits_on_the_row_lock_then_replays_the_outcome() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = Arc::new(fx.engine(fx.config(), always(Then::WaitThenSucceed)));
    let msg = fx.message("k", "p");
    let stop = CancellationToken::new();
    let first = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    let second = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the duplicate must wait for the first transaction"
    );
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);
    fx.resume.notify_one();
    let first = first.await.expect("task");
    let Disposition::Processed { outcome } = first else {
        panic!("expected Processed, got {first:?}");
    };
    match second.await.expect("task") {
        Disposition::Replayed { outcome: replayed } => assert_eq!(replayed, outcome),
        other => panic!("expected Replayed, got {other:?}"),
    }
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);
    assert_eq!(fx.effects("k").await, 1);
    fx.drop_table().await;
}

#[tokio::test]
async fn outcome_commits_atomically_with_the_effects() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = Arc::new(fx.engine(fx.config(), always(Then::WaitThenSucceed)));
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (e, m, s) = (engine.clone(), fx.message("atomic", "p"), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    // Inside the open transaction: neither the effect nor the claim is visible to others.
    assert_eq!(fx.effects("atomic").await, 0);
    assert!(fx
        .store
        .get(&fx.record_key("atomic"))
        .await
        .expect("get")
        .is_none());
    fx.resume.notify_one();
    assert!(matches!(
        running.await.expect("task"),
        Disposition::Processed { .. }
    ));
    // After the commit: both.
    assert_eq!(fx.effects("atomic").await, 1);
    let rec = fx
        .store
        .get(&fx.record_key("atomic"))
        .await
        .expect("get")
        .expect("record");
    match rec.state {
        RecordState::Completed { outcome, .. } => {
            let v: serde_json::Value = outcome.decode().expect("json");
            assert_eq!(v["booked"], "atomic");
        }
        other => panic!("expected completed, got {other:?}"),
    }
    fx.drop_table().await;
}

#[tokio::test]
async fn dropped_future_mid_transaction_leaves_nothing_and_the_next_attempt_succeeds() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let crashing = Arc::new(fx.engine(fx.config(), always(Then::Hang)));
    let stop = CancellationToken::new();
    let msg = fx.message("crash", "p");
    let task = tokio::spawn({
        let (e, m, s) = (crashing.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    // Simulated crash: the processing future is dropped with its transaction open.
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    let healthy = fx.engine(fx.config(), always(Then::Succeed));
    match healthy.process(msg.clone(), &stop).await {
        Disposition::Processed { .. } => {}
        other => panic!("expected Processed after the crash, got {other:?}"),
    }
    assert_eq!(
        fx.effects("crash").await,
        1,
        "the crashed run left no effect"
    );
    assert!(matches!(
        healthy.process(msg, &stop).await,
        Disposition::Replayed { .. }
    ));
    assert_eq!(fx.effects("crash").await, 1);
    fx.drop_table().await;
}

#[tokio::test]
async fn lost_connection_before_commit_is_not_acked_and_leaves_a_clean_slate() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = Arc::new(fx.engine(fx.config(), always(Then::WaitThenSucceed)));
    let stop = CancellationToken::new();
    let msg = fx.message("severed", "p");
    let task = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    // The consumer's database session dies (crash of the connection, failover) mid-transaction.
    let client = fx.store.pool().get().await.expect("client");
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND query LIKE $1",
            &[&format!("%{}%", fx.effects)],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1, "the handler's session was found and terminated");
    drop(client);
    fx.resume.notify_one();
    match task.await.expect("task") {
        Disposition::Retry {
            cause: RetryCause::StoreUnavailable { .. },
            ..
        } => {}
        other => panic!("expected a store retry (no ack), got {other:?}"),
    }
    assert_eq!(fx.effects("severed").await, 0);
    let healthy = fx.engine(fx.config(), always(Then::Succeed));
    let again = healthy.process(msg, &stop).await;
    assert!(matches!(again, Disposition::Processed { .. }), "{again:?}");
    assert_eq!(fx.effects("severed").await, 1);
    fx.drop_table().await;
}

#[tokio::test]
async fn retriable_error_rolls_back_effects_releases_and_counts_attempts() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = fx.engine(fx.config(), |attempt| {
        if attempt < 2 {
            Then::FailRetriable
        } else {
            Then::Succeed
        }
    });
    let msg = fx.message("flaky", "p");
    let stop = CancellationToken::new();
    match engine.process(msg.clone(), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("flaky dependency"), "{error}"),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert_eq!(fx.effects("flaky").await, 0, "effects rolled back");
    let rec = fx
        .store
        .get(&fx.record_key("flaky"))
        .await
        .expect("get")
        .expect("tombstone");
    assert_eq!((rec.state, rec.attempt), (RecordState::Released, 1));
    assert!(matches!(
        engine.process(msg, &stop).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(fx.effects("flaky").await, 1);
    fx.drop_table().await;
}

#[tokio::test]
async fn retries_exhausted_and_panics_dead_letter_without_effects() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = fx.engine(fx.config(), always(Then::Panic));
    let msg = fx.message("panics", "p");
    let stop = CancellationToken::new();
    for attempt in 1..=2 {
        match engine.process(msg.clone(), &stop).await {
            Disposition::Retry {
                cause: RetryCause::HandlerFailed { attempt: a, error },
                ..
            } => {
                assert_eq!(a, attempt);
                assert!(error.contains("panicked"), "{error}");
            }
            other => panic!("expected Retry, got {other:?}"),
        }
    }
    match engine.process(msg.clone(), &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted),
        other => panic!("expected DeadLetter, got {other:?}"),
    }
    assert_eq!(fx.effects("panics").await, 0);
    let rec = fx
        .store
        .get(&fx.record_key("panics"))
        .await
        .expect("get")
        .expect("tombstone");
    assert_eq!(
        (rec.state, rec.attempt),
        (RecordState::Released, 0),
        "dead-lettering resets the attempt count for a later replay"
    );
    fx.drop_table().await;
}

#[tokio::test]
async fn permanent_error_rolls_back_and_dead_letters_or_stores_the_failure() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let stop = CancellationToken::new();
    let engine = fx.engine(fx.config(), always(Then::FailPermanent));
    match engine.process(fx.message("bad", "p"), &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::HandlerFailed);
            assert!(dl.error.contains("invalid order"));
        }
        other => panic!("expected DeadLetter, got {other:?}"),
    }
    assert_eq!(fx.effects("bad").await, 0);
    let rec = fx.store.get(&fx.record_key("bad")).await.expect("get");
    assert_eq!(rec.map(|r| r.state), Some(RecordState::Released));

    let mut config = fx.config();
    config.store_permanent_failures = true;
    let storing = fx.engine(config, always(Then::FailPermanent));
    let msg = fx.message("bad-stored", "p");
    assert!(matches!(
        storing.process(msg.clone(), &stop).await,
        Disposition::DeadLetter(_)
    ));
    match storing.process(msg, &stop).await {
        Disposition::Replayed { outcome } => assert_eq!(outcome.status, OutcomeStatus::Failed),
        other => panic!("expected the stored failure to replay, got {other:?}"),
    }
    assert_eq!(fx.effects("bad-stored").await, 0);
    assert_eq!(fx.runs.load(Ordering::SeqCst), 2);
    fx.drop_table().await;
}

#[tokio::test]
async fn swallowed_sql_error_is_not_committed_as_success() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = fx.engine(fx.config(), always(Then::SwallowSqlError));
    let stop = CancellationToken::new();
    match engine.process(fx.message("swallow", "p"), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { error, .. },
            ..
        } => assert!(error.contains("aborted"), "{error}"),
        other => panic!("expected Retry, got {other:?}"),
    }
    assert_eq!(fx.effects("swallow").await, 0);
    fx.drop_table().await;
}

#[tokio::test]
async fn outcome_too_large_dead_letters_without_effects() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = fx.engine(fx.config(), always(Then::HugeOutcome));
    let stop = CancellationToken::new();
    match engine.process(fx.message("huge", "p"), &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::OutcomeTooLarge),
        other => panic!("expected DeadLetter, got {other:?}"),
    }
    assert_eq!(fx.effects("huge").await, 0);
    fx.drop_table().await;
}

#[tokio::test]
async fn conflicts_and_missing_keys_never_run_the_handler() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = fx.engine(fx.config(), always(Then::Succeed));
    let stop = CancellationToken::new();
    assert!(matches!(
        engine.process(fx.message("k", "first"), &stop).await,
        Disposition::Processed { .. }
    ));
    match engine.process(fx.message("k", "different"), &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::Conflict),
        other => panic!("expected conflict, got {other:?}"),
    }
    let unkeyed = Arc::new(Message::new("p", Source::Other("test".into())));
    match engine.process(unkeyed, &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::MissingKey),
        other => panic!("expected missing key, got {other:?}"),
    }
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);
    assert_eq!(engine.scope(), fx.scope);
    fx.drop_table().await;
}

#[tokio::test]
async fn shutdown_past_the_grace_period_abandons_and_rolls_back() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = Arc::new(fx.engine(fx.config(), always(Then::Hang)));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (e, m, s) = (engine.clone(), fx.message("slow", "p"), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    stop.cancel();
    assert_eq!(task.await.expect("task"), Disposition::Abandoned);
    assert_eq!(fx.effects("slow").await, 0);
    assert!(fx
        .store
        .get(&fx.record_key("slow"))
        .await
        .expect("get")
        .is_none());
    fx.drop_table().await;
}

#[tokio::test]
async fn handler_statements_do_not_inherit_the_claim_lock_timeout() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let handler = from_fn(async |_ctx, tx| {
        let row = tx
            .query_one("SHOW lock_timeout", &[])
            .await
            .map_err(HandlerError::retriable)?;
        Ok(row.get::<_, String>(0))
    });
    let engine = TransactionalEngine::new(fx.store.clone(), fx.config(), handler).expect("engine");
    let default: String = fx
        .store
        .pool()
        .get()
        .await
        .expect("client")
        .query_one("SHOW lock_timeout", &[])
        .await
        .expect("show")
        .get(0);
    match engine
        .process(fx.message("timeout", "p"), &CancellationToken::new())
        .await
    {
        Disposition::Processed { outcome } => {
            assert_eq!(outcome.decode::<String>().expect("json"), default)
        }
        other => panic!("expected Processed, got {other:?}"),
    }
    fx.drop_table().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_behind_a_duplicates_row_lock() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let engine = Arc::new(fx.engine(fx.config(), always(Then::WaitThenSucceed)));
    let msg = fx.message("locked", "p");
    let first_stop = CancellationToken::new();
    let first = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), first_stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    // The duplicate blocks on the first transaction's row lock; its consumer shuts down.
    let stop = CancellationToken::new();
    let duplicate = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let d = tokio::time::timeout(Duration::from_secs(5), duplicate)
        .await
        .expect("shutdown is prompt")
        .expect("task");
    assert_eq!(d, Disposition::Abandoned);
    fx.resume.notify_one();
    assert!(matches!(
        first.await.expect("task"),
        Disposition::Processed { .. }
    ));
    assert_eq!(fx.effects("locked").await, 1);
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);
    fx.drop_table().await;
}

/// A store on the shared table whose connections carry `options` (URL-encoded server options).
async fn store_with_options(options: &str) -> PostgresStore {
    let sep = if postgres_url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}options={options}", postgres_url());
    let opts = idemq::store::postgres::PostgresOptions::default()
        .with_table(SHARED_TABLE)
        .expect("table");
    PostgresStore::connect_with(&url, opts)
        .await
        .expect("connect with options")
}

/// A consumer whose host vanished (transaction open, row lock held, socket never closed) must not
/// lock its key out for hours: another consumer processes the duplicate within lease + one retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_consumer_holding_an_uncommitted_claim_is_taken_over_within_lease_and_retry() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.lease = Duration::from_secs(2);
    let stalled = Arc::new(fx.engine(config.clone(), always(Then::Hang)));
    let healthy = fx.engine_on(
        shared_store().await.expect("second store"),
        config.clone(),
        always(Then::Succeed),
    );
    let msg = fx.message("vanished", "p");
    let stop = CancellationToken::new();
    // The stalled consumer: it inserted its effect, then blocks forever without closing anything.
    let hung = tokio::spawn({
        let (e, m, s) = (stalled.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    let start = tokio::time::Instant::now();
    // Lease + one retry interval, plus generous slack for a loaded machine.
    let bound = config.lease + config.in_flight_poll.max + Duration::from_secs(8);
    let disposition = loop {
        match healthy.process(msg.clone(), &stop).await {
            Disposition::Retry {
                cause: RetryCause::InFlightElsewhere,
                after,
            } => {
                assert!(
                    start.elapsed() < bound,
                    "the duplicate is still locked out after {:?}",
                    start.elapsed()
                );
                tokio::time::sleep(after).await;
            }
            other => break other,
        }
    };
    let took = start.elapsed();
    assert!(
        matches!(disposition, Disposition::Processed { .. }),
        "{disposition:?}"
    );
    assert!(took < bound, "took over after {took:?}");
    assert!(!hung.is_finished(), "the stalled handler never returns");
    hung.abort();
    assert_eq!(
        fx.effects("vanished").await,
        1,
        "only the new owner's effect is committed"
    );
    fx.drop_table().await;
}

/// The claim transaction runs at READ COMMITTED whatever the session default: with
/// `default_transaction_isolation = serializable`, a duplicate that waited on the row lock
/// replays the outcome instead of failing with a serialization error ("store unavailable").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_read_committed_under_a_serializable_session_default() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let store = store_with_options("-cdefault_transaction_isolation%3Dserializable").await;
    let level: String = store
        .pool()
        .get()
        .await
        .expect("client")
        .query_one("SHOW default_transaction_isolation", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(level, "serializable", "the test's sessions default to it");
    let engine = Arc::new(fx.engine_on(store, fx.config(), always(Then::WaitThenSucceed)));
    let msg = fx.message("serializable", "p");
    let stop = CancellationToken::new();
    let first = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    let second = tokio::spawn({
        let (e, m, s) = (engine.clone(), msg.clone(), stop.clone());
        async move { e.process(m, &s).await }
    });
    // Let the duplicate reach the row lock before the first commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.resume.notify_one();
    let first = first.await.expect("task");
    assert!(matches!(first, Disposition::Processed { .. }), "{first:?}");
    match second.await.expect("task") {
        Disposition::Replayed { .. } => {}
        other => panic!("expected Replayed, got {other:?}"),
    }
    assert_eq!(fx.effects("serializable").await, 1);
    fx.drop_table().await;
}

/// Rows of the shared record table for `key` in the fixture's scope, expired or not.
async fn raw_rows(fx: &Fixture, key: &str) -> Vec<String> {
    let client = fx.store.pool().get().await.expect("client");
    client
        .query(
            &format!("SELECT state FROM {SHARED_TABLE} WHERE scope = $1 AND idempotency_key = $2"),
            &[&fx.scope, &key],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A failure whose fenced release / failure outcome matches no row (the token went stale: the
/// record expired while the handler ran) commits nothing, neither the claim nor the handler's
/// writes; the message is still retried or dead-lettered, never silently acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_with_a_stale_token_rolls_back_instead_of_committing() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.lease = Duration::from_secs(1);
    config.retention = Duration::from_secs(1);
    let stop = CancellationToken::new();

    let retriable = fx.engine(config.clone(), always(Then::SlowThenFailRetriable));
    let d = retriable
        .process(fx.message("stale-retry", "p"), &stop)
        .await;
    assert!(
        matches!(
            d,
            Disposition::Retry {
                cause: RetryCause::HandlerFailed { .. },
                ..
            }
        ),
        "{d:?}"
    );
    assert_eq!(
        raw_rows(&fx, "stale-retry").await,
        Vec::<String>::new(),
        "the claim must not commit after a lost fence"
    );
    assert_eq!(fx.effects("stale-retry").await, 0);

    config.store_permanent_failures = true;
    let permanent = fx.engine(config, always(Then::SlowThenFailPermanent));
    let d = permanent
        .process(fx.message("stale-permanent", "p"), &stop)
        .await;
    match &d {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::HandlerFailed),
        other => panic!("expected DeadLetter, got {other:?}"),
    }
    assert_eq!(
        raw_rows(&fx, "stale-permanent").await,
        Vec::<String>::new(),
        "neither the claim nor a failure outcome commits after a lost fence"
    );
    assert_eq!(fx.effects("stale-permanent").await, 0);
    fx.drop_table().await;
}

/// The effect insert of [`Fixture::engine`], for tests with their own handler.
fn insert_effect(fx: &Fixture) -> String {
    format!(
        "INSERT INTO {} (idempotency_key, attempt) VALUES ($1, $2)",
        fx.effects
    )
}

/// The record of `key`: (state, attempt).
async fn state_of(fx: &Fixture, key: &str) -> Option<(RecordState, u32)> {
    fx.store
        .get(&fx.record_key(key))
        .await
        .expect("get")
        .map(|r| (r.state, r.attempt))
}

/// A handler whose closure panics before it returns its future (synchronous work), or whose
/// hand-written `handle` does: a retriable failure, claim released, nothing committed.
#[tokio::test]
async fn handler_panicking_before_its_future_is_a_retriable_failure() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.max_attempts = 2;
    let insert = insert_effect(&fx);
    // A function (not an async closure) can do synchronous work before it returns its future.
    fn sync_bomb<'a>(
        insert: &'a String,
        ctx: idemq::HandlerContext,
        tx: &'a Transaction<'a>,
    ) -> impl std::future::Future<Output = Result<&'static str, HandlerError>> + Send + 'a {
        if ctx.message.payload.as_ref() == b"sync" {
            panic!("synchronous bug");
        }
        async move {
            let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
            tx.execute(insert, &[&key, &(ctx.attempt as i32)])
                .await
                .map_err(HandlerError::retriable)?;
            Ok("fine")
        }
    }
    let engine = TransactionalEngine::new(
        fx.store.clone(),
        config.clone(),
        from_fn_with(insert, sync_bomb),
    )
    .expect("engine");
    let stop = CancellationToken::new();
    match engine.process(fx.message("sync-boom", "sync"), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("synchronous bug"), "{error}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert_eq!(
        state_of(&fx, "sync-boom").await,
        Some((RecordState::Released, 1)),
        "claim released, attempt counted"
    );
    match engine.process(fx.message("sync-boom", "sync"), &stop).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted),
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    // The same engine still runs other messages.
    assert!(matches!(
        engine.process(fx.message("sync-ok", "p"), &stop).await,
        Disposition::Processed { .. }
    ));
    assert_eq!(fx.effects("sync-ok").await, 1);

    // A hand-written handler whose `handle` panics.
    struct Broken;
    impl TransactionalHandler for Broken {
        type Output = ();
        #[allow(clippy::manual_async_fn)] // the panic must come before the future exists
        fn handle<'a>(
            &'a self,
            _ctx: idemq::HandlerContext,
            _tx: &'a Transaction<'a>,
        ) -> impl std::future::Future<Output = Result<(), HandlerError>> + Send + 'a {
            #[allow(unreachable_code)]
            {
                panic!("panicked in handle");
                async { Ok(()) }
            }
        }
    }
    let engine =
        TransactionalEngine::new(fx.store.clone(), config.clone(), Broken).expect("engine");
    match engine.process(fx.message("impl-boom", "p"), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { error, .. },
            ..
        } => assert!(error.contains("panicked in handle"), "{error}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert_eq!(
        state_of(&fx, "impl-boom").await,
        Some((RecordState::Released, 1))
    );

    // Without deduplication the panic is retried in place, then dead-lettered.
    config.key.missing = idemq::MissingKeyPolicy::ProcessWithoutDedup;
    let engine = TransactionalEngine::new(fx.store.clone(), config, Broken).expect("engine");
    let unkeyed = Arc::new(Message::new("p", Source::Other("test".into())));
    match engine.process(unkeyed, &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("panicked in handle"), "{}", dl.error);
        }
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    fx.drop_table().await;
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
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.max_attempts = 2;
    let insert = insert_effect(&fx);
    let handler = from_fn_with(insert, async |insert, ctx, tx| {
        let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
        tx.execute(insert, &[&key, &(ctx.attempt as i32)])
            .await
            .map_err(HandlerError::retriable)?;
        Ok(SerializeBomb)
    });
    let engine =
        TransactionalEngine::new(fx.store.clone(), config.clone(), handler).expect("engine");
    let stop = CancellationToken::new();
    match engine.process(fx.message("ser-boom", "p"), &stop).await {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("serialize bomb"), "{error}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert_eq!(
        fx.effects("ser-boom").await,
        0,
        "the handler's write rolled back"
    );
    assert_eq!(
        state_of(&fx, "ser-boom").await,
        Some((RecordState::Released, 1))
    );
    match engine.process(fx.message("ser-boom", "p"), &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("serialize bomb"), "{}", dl.error);
        }
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    assert_eq!(fx.effects("ser-boom").await, 0);

    // Without deduplication: retried in place, nothing committed, then dead-lettered.
    config.key.missing = idemq::MissingKeyPolicy::ProcessWithoutDedup;
    let insert = insert_effect(&fx);
    let handler = from_fn_with(insert, async |insert, _ctx, tx| {
        tx.execute(insert, &[&"unkeyed-ser", &0i32])
            .await
            .map_err(HandlerError::retriable)?;
        Ok(SerializeBomb)
    });
    let engine = TransactionalEngine::new(fx.store.clone(), config, handler).expect("engine");
    let unkeyed = Arc::new(Message::new("p", Source::Other("test".into())));
    match engine.process(unkeyed, &stop).await {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::RetriesExhausted);
            assert!(dl.error.contains("serialize bomb"), "{}", dl.error);
        }
        other => panic!("expected retries-exhausted, got {other:?}"),
    }
    assert_eq!(fx.effects("unkeyed-ser").await, 0);
    fx.drop_table().await;
}

/// Bound for runs that must end through the handler timeout (500 ms): generous for a loaded
/// machine, far below the hang.
const TIMEOUT_BOUND: Duration = Duration::from_secs(30);

/// A handler hung outside the database (awaiting something in the app) after writing: the
/// transaction is not idle-timed-out by the server while a statement is pending elsewhere, so the
/// engine's handler timeout must end it: rolled back, claim released, the duplicate runs again.
#[tokio::test]
async fn hung_handler_times_out_as_a_retriable_failure() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    hung_handler_is_timed_out_and_rolled_back(&fx, Then::Hang, "hung").await;
    fx.drop_table().await;
}

/// The same, with the handler stuck inside a statement: the statement is cancelled, so the
/// rollback and the release need not wait for it.
#[tokio::test]
async fn handler_hung_in_a_statement_times_out_and_its_statement_is_cancelled() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    hung_handler_is_timed_out_and_rolled_back(&fx, Then::HangInStatement, "hung-sql").await;
    fx.drop_table().await;
}

async fn hung_handler_is_timed_out_and_rolled_back(fx: &Fixture, hang: Then, key: &str) {
    let mut config = fx.config();
    config.handler_timeout = Some(Duration::from_millis(500));
    let plan: fn(u32) -> Then = match hang {
        Then::Hang => |attempt| {
            if attempt == 1 {
                Then::Hang
            } else {
                Then::Succeed
            }
        },
        _ => |attempt| {
            if attempt == 1 {
                Then::HangInStatement
            } else {
                Then::Succeed
            }
        },
    };
    let engine = fx.engine(config, plan);
    let stop = CancellationToken::new();
    let started = std::time::Instant::now();
    let first = tokio::time::timeout(TIMEOUT_BOUND, engine.process(fx.message(key, "p"), &stop))
        .await
        .expect("the handler timeout must end the hung run");
    match first {
        Disposition::Retry {
            cause: RetryCause::HandlerFailed { attempt: 1, error },
            ..
        } => assert!(error.contains("timed out"), "{error}"),
        other => panic!("expected a retriable failure, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the timeout"
    );
    assert_eq!(
        fx.effects(key).await,
        0,
        "the handler's write was rolled back"
    );
    assert_eq!(
        state_of(fx, key).await,
        Some((RecordState::Released, 1)),
        "failure recorded and committed: claim released, attempt counted"
    );
    // The duplicate runs the handler again (not blocked by a leftover row lock) and commits.
    let second = tokio::time::timeout(TIMEOUT_BOUND, engine.process(fx.message(key, "p"), &stop))
        .await
        .expect("second run");
    assert!(
        matches!(second, Disposition::Processed { .. }),
        "{second:?}"
    );
    assert_eq!(fx.runs.load(Ordering::SeqCst), 2);
    assert_eq!(fx.effects(key).await, 1);
    assert!(matches!(
        engine.process(fx.message(key, "p"), &stop).await,
        Disposition::Replayed { .. }
    ));
}

/// Shutdown past the grace period while the handler is inside a statement: the run is abandoned
/// promptly (the statement is cancelled), not after the statement ends.
#[tokio::test]
async fn shutdown_past_the_grace_period_cancels_a_running_statement() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    // Above the bound below: waiting for the rollback behind the statement would exceed it.
    config.store_timeout = Duration::from_secs(40);
    let engine = Arc::new(fx.engine(config, always(Then::HangInStatement)));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (e, m, s) = (engine.clone(), fx.message("stuck", "p"), stop.clone());
        async move { e.process(m, &s).await }
    });
    fx.inserted.notified().await;
    stop.cancel();
    let d = tokio::time::timeout(TIMEOUT_BOUND, task)
        .await
        .expect("abandoned without waiting for the statement")
        .expect("task");
    assert_eq!(d, Disposition::Abandoned);
    assert_eq!(fx.effects("stuck").await, 0);
    assert_eq!(state_of(&fx, "stuck").await, None, "nothing committed");
    fx.drop_table().await;
}

/// The transactional engine validates its configuration as the engine does.
#[tokio::test]
async fn transactional_engine_refuses_out_of_range_durations() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.handler_timeout = Some(Duration::ZERO);
    let handler = from_fn(async |_ctx, _tx| Ok(()));
    match TransactionalEngine::new(fx.store.clone(), config, handler) {
        Err(idemq::ConfigError::DurationOutOfRange { field, .. }) => {
            assert_eq!(field, "handler_timeout")
        }
        Err(other) => panic!("expected DurationOutOfRange, got {other:?}"),
        Ok(_) => panic!("expected DurationOutOfRange, got an engine"),
    }
    fx.drop_table().await;
}

/// An unreadable record met by the claim is read again a bounded number of times, then
/// dead-lettered as `corrupt-record`, without running the handler. (Storing the outcome and
/// recording a failure are fenced `UPDATE`s of the row this transaction holds locked: they read
/// no record, so they cannot meet an unreadable one.)
#[tokio::test]
async fn corrupt_record_is_dead_lettered_after_bounded_retries_without_running_the_handler() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.corrupt_record_retries = 2;
    config.store_backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
    let engine = fx.engine(config, always(Then::Succeed));
    let stop = CancellationToken::new();
    assert!(matches!(
        engine.process(fx.message("damaged", "p"), &stop).await,
        Disposition::Processed { .. }
    ));
    support::postgres::corrupt(&fx.store, &fx.record_key("damaged")).await;
    let d = tokio::time::timeout(
        TIMEOUT_BOUND,
        engine.process(fx.message("damaged", "p"), &stop),
    )
    .await
    .expect("bounded");
    match d {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::CorruptRecord),
        other => panic!("expected a corrupt-record dead letter, got {other:?}"),
    }
    assert_eq!(
        fx.runs.load(Ordering::SeqCst),
        1,
        "the handler did not run again"
    );
    assert_eq!(fx.effects("damaged").await, 1);
    fx.drop_table().await;
}

/// The record expires while the handler runs (it is slower than lease and retention): as the
/// engine does when the record is gone at `complete`, it is re-created with this run's outcome,
/// committed with the handler's writes, instead of rolling everything back (which would run such
/// a handler again and again without ever completing).
#[tokio::test]
async fn record_expired_during_the_handler_is_recreated_with_the_outcome() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.lease = Duration::from_secs(1);
    config.retention = Duration::from_secs(1);
    let engine = fx.engine(config, always(Then::SlowThenSucceed));
    let stop = CancellationToken::new();
    let d = engine.process(fx.message("expired", "p"), &stop).await;
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    assert_eq!(
        fx.effects("expired").await,
        1,
        "the handler's write committed"
    );
    // Read raw: with a 1 s retention the record may already read as expired through the store.
    assert_eq!(
        raw_rows(&fx, "expired").await,
        vec!["completed".to_string()],
        "the outcome committed with it"
    );
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);
    fx.drop_table().await;
}

/// Handlers written as `async fn`s and as struct impls with `async fn handle` (no `Box::pin`);
/// a retry-after hint sets the retry delay (clamped to `retry_backoff.max`) and rolls the
/// handler's write back; bad JSON is dead-lettered as `invalid-payload`.
#[tokio::test]
async fn async_fn_handlers_retry_after_hints_and_invalid_payloads() {
    use idemq::prelude::{HandlerContext, ResultExt};

    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut config = fx.config();
    config.retry_backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(800));

    #[derive(serde::Deserialize)]
    struct Order {
        amount: i32,
    }

    struct Ledger {
        insert: String,
    }

    impl TransactionalHandler for Ledger {
        type Output = i32;

        async fn handle(
            &self,
            ctx: HandlerContext,
            tx: &Transaction<'_>,
        ) -> Result<i32, HandlerError> {
            let order: Order = ctx.json()?;
            let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
            tx.execute(&self.insert, &[&key, &order.amount])
                .await
                .retriable()?;
            if ctx.attempt == 1 {
                return Err(
                    HandlerError::retriable("rate limited").retry_after(Duration::from_secs(60))
                );
            }
            Ok(order.amount)
        }
    }

    let insert = insert_effect(&fx);
    let engine = TransactionalEngine::new(fx.store.clone(), config.clone(), Ledger { insert })
        .expect("engine");
    let stop = CancellationToken::new();
    match engine
        .process(fx.message("hinted", "{\"amount\":7}"), &stop)
        .await
    {
        Disposition::Retry {
            after,
            cause: RetryCause::HandlerFailed { attempt: 1, error },
        } => {
            assert_eq!(after, Duration::from_millis(800), "the 60 s hint, clamped");
            assert_eq!(error, "rate limited");
        }
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(
        fx.effects("hinted").await,
        0,
        "the failed attempt's write rolled back"
    );
    match engine
        .process(fx.message("hinted", "{\"amount\":7}"), &stop)
        .await
    {
        Disposition::Processed { outcome } => assert_eq!(&outcome.body[..], b"7"),
        other => panic!("expected Processed, got {other:?}"),
    }
    assert_eq!(fx.effects("hinted").await, 1);
    match engine
        .process(fx.message("garbled", "{\"amount\":"), &stop)
        .await
    {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason, DeadLetterReason::InvalidPayload);
            assert!(dl.error.contains("EOF while parsing"), "{}", dl.error);
        }
        other => panic!("expected invalid-payload, got {other:?}"),
    }

    async fn count(_ctx: HandlerContext, tx: &Transaction<'_>) -> Result<i64, HandlerError> {
        let row = tx.query_one("SELECT 41::int8", &[]).await.retriable()?;
        Ok(row.get::<_, i64>(0) + 1)
    }
    let engine =
        TransactionalEngine::new(fx.store.clone(), config, from_fn(count)).expect("engine");
    match engine.process(fx.message("fn-item", "p"), &stop).await {
        Disposition::Processed { outcome } => assert_eq!(&outcome.body[..], b"42"),
        other => panic!("expected Processed, got {other:?}"),
    }
    fx.drop_table().await;
}
