//! The processing flow of one message inside one transaction. Mirrors `engine/process.rs`; the
//! difference is that every settlement (outcome, release) is written in the handler's transaction.

use super::{Inner, TransactionalHandler};
use crate::engine::{
    call_handler, deadline_after, deadline_from, handler_panicked, handler_timed_out,
    permanent_failure, record_decision, record_recreated, retry_delay, serialize, timed,
    unkeyed_retry, DeadLetterReason, Disposition, Failure, Identity, RetryCause, Run,
};
use crate::handler::HandlerContext;
use crate::message::Message;
use crate::outcome::Outcome;
use crate::store::postgres::{claim_params, interpret_claim, row, Transaction};
use crate::store::{Claim, ClaimRequest, RecordKey, Release, StoreError, Token};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument, Span};

/// Savepoint set right after the claim: rolling back to it undoes the handler's writes but keeps
/// the claim (and its row lock), so a failure can be recorded in the same transaction.
///
/// `lock_timeout` is set only for the claim (bounding the wait for a duplicate's transaction);
/// the handler's own statements run with the configured default again.
///
/// It also reads the session's process id, for `cancel_statement`: last in the pipeline, so the
/// claim's answer is not held up by it.
const SAVEPOINT: &str =
    "SET LOCAL lock_timeout TO DEFAULT; SAVEPOINT idemq_handler; SELECT pg_backend_pid()";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT idemq_handler";
/// Re-runs of a claim that raced with a concurrent commit before giving up for now.
const RACE_RETRIES: u32 = 8;
/// Immediate retries of `BEGIN` on another pooled connection.
const STALE_CONNECTION_RETRIES: u32 = 2;

/// How a failed run is recorded in its transaction.
enum Settle {
    Release(Release),
    StoreFailure(Outcome),
}

/// A key claimed in a transaction.
struct Claimed {
    token: Token,
    attempt: u32,
    /// The server process of the transaction's session (`pg_backend_pid()`), to cancel the
    /// handler's statement after a timeout; `None` if it could not be read.
    pid: Option<i32>,
}

/// What one claim attempt found, when it did not acquire the key.
enum Step {
    Settled(Disposition),
    InFlight(Duration),
    LockTimeout,
    Raced,
    Corrupt(StoreError),
}

impl<H: TransactionalHandler> Inner<H> {
    pub(super) async fn process(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let span = crate::traces::process_span(&self.scope, &message);
        span.record("transactional", true);
        async {
            let _in_flight = crate::metrics::InFlight::enter(&self.scope);
            let d = self.decide(&message, shutdown).await;
            Span::current().record("decision", d.decision());
            crate::traces::remember(&Span::current());
            record_decision(&self.scope, &d);
            match &d {
                Disposition::DeadLetter(dl) => {
                    warn!(reason = dl.reason.as_str(), error = %dl.error, "dead-lettering")
                }
                Disposition::Retry { after, cause } => info!(?after, ?cause, "retry later"),
                other => debug!(decision = other.decision(), "settled"),
            }
            d
        }
        .instrument(span)
        .await
    }

    async fn decide(&self, message: &Arc<Message>, shutdown: &CancellationToken) -> Disposition {
        let cfg = &self.config;
        // Scope, key and fingerprint exactly as `Engine` finds them.
        let (record, fingerprint) = match self.identify(message) {
            Ok(Identity {
                claim: Some(claim), ..
            }) => claim,
            Ok(Identity { scope, claim: None }) => {
                return self.run_unkeyed(message, scope, shutdown).await
            }
            Err(settled) => return settled,
        };
        let req = ClaimRequest::new(&record, &fingerprint, cfg.lease, cfg.retention);
        let wait_until = deadline_after(cfg.in_flight_bound());
        let (mut polls, mut corrupt, mut races, mut stale) = (0u32, 0u32, 0u32, 0u32);
        loop {
            let mut client = match self.connect().await {
                Ok(client) => client,
                Err(err) => return self.store_down(err),
            };
            let tx = match self.begin(&mut client).await {
                Ok(tx) => tx,
                Err(err) if stale < STALE_CONNECTION_RETRIES => {
                    // Most likely a pooled connection that died (server restart, terminated
                    // session) before the pool noticed. Nothing ran yet, so try another one; the
                    // pool discards the dead one when it comes back.
                    stale += 1;
                    debug!(%err, "BEGIN failed; retrying on another connection");
                    continue;
                }
                Err(err) => return self.store_down(err),
            };
            // The claim may wait on a duplicate's row lock; shutdown must not wait with it.
            let claimed = tokio::select! {
                r = self.claim_in(&tx, &req, wait_until) => r,
                _ = shutdown.cancelled() => return Disposition::Abandoned,
            };
            let step = match claimed {
                Ok(Ok(claimed)) => {
                    if claimed.attempt > 1 {
                        crate::metrics::claim_reacquired(&self.scope);
                        let (token, attempt) = (claimed.token, claimed.attempt);
                        info!(%token, attempt, "claimed (retry or takeover)");
                    }
                    return self.run_claimed(message, &req, tx, claimed, shutdown).await;
                }
                Ok(Err(step)) => step,
                Err(err) => return self.store_down(err),
            };
            // Not ours to run. Dropping the transaction queues its ROLLBACK on the connection
            // without waiting for the answer (the connection's next user is served after it), so
            // a replay costs two round trips, not three.
            drop(tx);
            match step {
                Step::Settled(d) => return d,
                Step::LockTimeout => {
                    return Disposition::Retry {
                        after: cfg.in_flight_poll.max,
                        cause: RetryCause::InFlightElsewhere,
                    }
                }
                Step::Raced => {
                    races += 1;
                    if races > RACE_RETRIES {
                        return self.store_down(StoreError::unavailable(
                            "claim",
                            format!("record {record} kept changing under concurrent claims"),
                        ));
                    }
                }
                Step::InFlight(retry_after) => {
                    // Held by a non-transactional consumer of the same table: wait as the engine
                    // does, bounded.
                    let waited = self
                        .wait_in_flight(retry_after, wait_until, &mut polls, shutdown)
                        .await;
                    if let Err(d) = waited {
                        return d;
                    }
                }
                Step::Corrupt(err) => {
                    if let Err(d) = self.back_off_corrupt(err, &mut corrupt, shutdown).await {
                        return d;
                    }
                }
            }
        }
    }

    /// Claims inside `tx`. `SET LOCAL lock_timeout`, the claim and the savepoint are pipelined
    /// (sent together, one round trip); the claim waits on the row lock of a transaction that holds
    /// the same key, at most until `wait_until`.
    async fn claim_in(
        &self,
        tx: &Transaction<'_>,
        req: &ClaimRequest<'_>,
        wait_until: Instant,
    ) -> Result<Result<Claimed, Step>, StoreError> {
        let stmt = self
            .store
            .prepare(tx, "claim", &self.store.sql().claim)
            .await?;
        let lock_ms = wait_until
            .saturating_duration_since(Instant::now())
            .as_millis()
            // 0 would mean "no timeout"; the server's maximum is i32::MAX ms.
            .clamp(1, i32::MAX as u128);
        // A consumer whose host vanished leaves its session idle in transaction, holding the row
        // lock, until TCP notices (hours): the server ends such a session once it has been idle
        // for a lease, so its key is taken over within lease + one retry, as with the other
        // engine. Only idle time between statements counts, not a long-running statement.
        let idle_ms = self.config.lease.as_millis().clamp(1, i32::MAX as u128);
        let set = format!(
            "SET LOCAL lock_timeout = {lock_ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {idle_ms}"
        );
        let params = claim_params(req);
        let params = params.as_params();
        let pipelined = async {
            tokio::join!(
                tx.batch_execute(&set),
                tx.query(&stmt, &params),
                tx.simple_query(SAVEPOINT)
            )
        };
        // The lock wait is bounded by lock_timeout; the deadline adds the usual store timeout.
        let bound =
            wait_until.saturating_duration_since(Instant::now()) + self.config.store_timeout;
        let (set, rows, savepoint) = match tokio::time::timeout(bound, pipelined).await {
            Ok(r) => r,
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "claim",
                    after: bound,
                })
            }
        };
        set.map_err(|e| self.store.db("claim", e))?;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e)
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                    || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                return Ok(Err(Step::LockTimeout))
            }
            Err(e) => return Err(self.store.db("claim", e)),
        };
        self.health.succeeded();
        let claim = match interpret_claim(rows, req) {
            Ok(Some(claim)) => claim,
            Ok(None) => return Ok(Err(Step::Raced)),
            Err(err @ StoreError::Corrupt { .. }) => {
                return Ok(Err(Step::Corrupt(self.shown(err))))
            }
            Err(err) => return Err(err),
        };
        Ok(Err(match claim {
            Claim::Acquired { token, attempt } => {
                let pid = savepoint
                    .map_err(|e| self.store.db("claim", e))?
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i32>().ok(),
                        _ => None,
                    });
                return Ok(Ok(Claimed {
                    token,
                    attempt,
                    pid,
                }));
            }
            Claim::Completed { outcome } => Step::Settled(Disposition::Replayed { outcome }),
            Claim::Conflict { stored } => Step::Settled(Disposition::dead_letter(
                DeadLetterReason::Conflict,
                format!(
                    "key {} is recorded with payload fingerprint {stored}; this message has {}",
                    self.config.log_key.show(req.key.key.as_str()),
                    req.fingerprint
                ),
            )),
            Claim::InFlight { retry_after } => Step::InFlight(retry_after),
        }))
    }

    async fn run_claimed(
        &self,
        message: &Arc<Message>,
        req: &ClaimRequest<'_>,
        tx: Transaction<'_>,
        claimed: Claimed,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let record = req.key;
        let Claimed {
            token,
            attempt,
            pid,
        } = claimed;
        let ctx = HandlerContext {
            message: message.clone(),
            key: Some(record.key.clone()),
            scope: Arc::from(record.scope.as_str()),
            attempt,
            token: Some(token),
        };
        let result = match self.run_handler(ctx, &tx, pid, shutdown).await {
            Run::Finished(r) => r,
            Run::Interrupted => {
                warn!("shutdown grace exceeded; handler dropped, transaction rolled back");
                self.roll_back(tx).await;
                return Disposition::Abandoned;
            }
        };
        let value = match result {
            Ok(value) => value,
            Err(e) if e.is_retriable() => {
                let failure = Failure::of(&e);
                return self.on_retriable(tx, record, token, attempt, failure).await;
            }
            Err(e) => {
                let (reason, error) = permanent_failure(&e);
                return self.on_permanent(tx, record, token, reason, error).await;
            }
        };
        let body = match serialize(&value) {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                let error = format!("outcome could not be serialized: {e}");
                let reason = DeadLetterReason::HandlerFailed;
                return self.on_permanent(tx, record, token, reason, error).await;
            }
            // Its `Serialize` panicked: a retriable failure, like a handler panic.
            Err(panicked) => {
                let failure = Failure::text(panicked);
                return self.on_retriable(tx, record, token, attempt, failure).await;
            }
        };
        let limit = self
            .config
            .max_outcome_bytes
            .min(self.store.max_outcome_bytes());
        if body.len() > limit {
            self.settle(tx, record, token, Settle::Release(Release::Reset))
                .await;
            return Disposition::dead_letter(
                DeadLetterReason::OutcomeTooLarge,
                format!(
                    "outcome is {} bytes; the limit is {limit} bytes",
                    body.len()
                ),
            );
        }
        let outcome = Outcome::succeeded(body);
        let mut recreated = None;
        match self.write_outcome(&tx, record, token, &outcome).await {
            Ok(true) => {}
            Ok(false) => match self.recreate(&tx, req, &outcome).await {
                Ok(Some(token)) => recreated = Some(token),
                Ok(None) => {
                    let _ = tx.rollback().await;
                    return self.store_down(StoreError::unavailable(
                        "complete",
                        format!("record {record} changed while its handler ran"),
                    ));
                }
                Err(err) => {
                    let _ = tx.rollback().await;
                    return self.store_down(err);
                }
            },
            Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                // The handler swallowed a failed statement: its writes are not all there.
                let error = "the handler returned Ok but left its transaction aborted \
                             (a statement failed)"
                    .to_string();
                let failure = Failure::text(error);
                return self.on_retriable(tx, record, token, attempt, failure).await;
            }
            Err(e) => return self.store_down(self.store.db("complete", e)),
        }
        let commit = async { tx.commit().await.map_err(|e| self.store.db("commit", e)) };
        match self.store_call("commit", commit).await {
            Ok(()) => {
                if let Some(token) = recreated {
                    record_recreated(&self.scope, token);
                }
                Disposition::Processed { outcome }
            }
            Err(err) => {
                // Committed or not, the redelivery finds either the outcome or a clean slate.
                error!(%err, "commit failed; leaving the message unacknowledged");
                self.store_down(err)
            }
        }
    }

    /// [`run_handler_untimed`](Self::run_handler_untimed), recording its duration by result.
    async fn run_handler(
        &self,
        ctx: HandlerContext,
        tx: &Transaction<'_>,
        pid: Option<i32>,
        shutdown: &CancellationToken,
    ) -> Run<H::Output> {
        let started = Instant::now();
        self.run_handler_untimed(ctx, tx, pid, shutdown)
            .await
            .recorded(&self.scope, started)
    }

    /// Runs the handler with the transaction, honouring the handler timeout and the shutdown
    /// grace period, as the engine does. Panics (in the returned future or in `handle` before it
    /// returns one) and timeouts become retriable errors; the caller rolls the handler's writes
    /// back.
    async fn run_handler_untimed(
        &self,
        ctx: HandlerContext,
        tx: &Transaction<'_>,
        pid: Option<i32>,
        shutdown: &CancellationToken,
    ) -> Run<H::Output> {
        let started = Instant::now();
        let handler = match call_handler(|| self.handler.handle(ctx, tx)) {
            Ok(future) => future,
            Err(panicked) => return Run::Finished(Err(panicked)),
        };
        let timeout = self.config.handler_timeout;
        let timed_out = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(deadline_from(started, t)).await,
                None => std::future::pending().await,
            }
        };
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.config.shutdown_grace).await;
        };
        let run = tokio::select! {
            biased;
            r = handler => return Run::Finished(r.unwrap_or_else(|panic| Err(handler_panicked(panic)))),
            _ = timed_out => Run::Finished(Err(handler_timed_out(&self.scope, timeout.unwrap_or_default()))),
            _ = grace => Run::Interrupted,
        };
        // The handler's future is dropped, but a statement it sent may still run on the server
        // (a long query, a lock wait), holding the transaction: the rollback that follows would
        // queue behind it.
        self.cancel_statement(pid).await;
        run
    }

    /// Cancels the statement the session `pid` (the dropped handler's) is running, if any, with
    /// `pg_cancel_backend` on another pooled connection. That function signals the session before
    /// it returns, so the cancel cannot hit a later statement (a cancel reaching a session that
    /// waits for its next statement is discarded); the protocol's asynchronous cancel request
    /// could arrive late and hit the rollback, or another message's statement on the pooled
    /// connection. Best effort, bounded by the store timeout: if it fails, the rollback waits
    /// behind the statement, at most the store timeout.
    async fn cancel_statement(&self, pid: Option<i32>) {
        let Some(pid) = pid else { return };
        let cancel = async {
            let client = self.store.client("cancel").await?;
            let row = client
                .query_one("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .map_err(|e| self.store.db("cancel", e))?;
            row.try_get::<_, bool>(0)
                .map_err(|e| self.store.db("cancel", e))
        };
        match timed("cancel", self.config.store_timeout, cancel).await {
            Ok(true) => debug!(pid, "cancelled the dropped handler's statement, if any"),
            Ok(false) => warn!(pid, "could not signal the dropped handler's session"),
            Err(err) => warn!(%err, pid, "could not cancel the dropped handler's statement"),
        }
    }

    /// Storing the outcome matched no row: we hold the row lock, so the record expired while the
    /// handler ran (it took longer than both lease and retention) or the handler itself changed
    /// it. As the engine does for a record gone at `complete`, re-create it: claim the key again
    /// in this transaction (an expired row is claimable, and locked by us) and store the outcome
    /// under the new token, so the handler's writes and the outcome still commit together.
    /// Rolling back instead would make a handler slower than the retention run again forever.
    /// `Ok(Some(token))` once stored; `Ok(None)` if the key was not claimable.
    async fn recreate(
        &self,
        tx: &Transaction<'_>,
        req: &ClaimRequest<'_>,
        outcome: &Outcome,
    ) -> Result<Option<Token>, StoreError> {
        let cfg = &self.config;
        let (req, record) = (*req, req.key);
        let recreate = async {
            let stmt = self
                .store
                .prepare(tx, "claim", &self.store.sql().claim)
                .await?;
            let params = claim_params(&req);
            let rows = tx
                .query(&stmt, &params.as_params())
                .await
                .map_err(|e| self.store.db("claim", e))?;
            let Some(Claim::Acquired { token, .. }) = interpret_claim(rows, &req)? else {
                return Ok(None);
            };
            let stored = self.write_outcome(tx, record, token, outcome).await;
            let stored = stored.map_err(|e| self.store.db("complete", e))?;
            Ok(stored.then_some(token))
        };
        timed("complete", cfg.store_timeout, recreate).await
    }

    /// Stores the outcome in the open transaction; `Ok(false)` if the fence did not match.
    async fn write_outcome(
        &self,
        tx: &Transaction<'_>,
        record: &RecordKey,
        token: Token,
        outcome: &Outcome,
    ) -> Result<bool, tokio_postgres::Error> {
        let stmt = tx.prepare_cached(&self.store.sql().complete).await?;
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let status = outcome.status.as_str();
        let body: &[u8] = &outcome.body;
        let retention = row::to_micros(self.config.retention);
        let n = tx
            .execute(
                &stmt,
                &[
                    &record.scope,
                    &record.key.as_str(),
                    &token,
                    &status,
                    &body,
                    &retention,
                ],
            )
            .await?;
        Ok(n > 0)
    }

    async fn on_retriable(
        &self,
        tx: Transaction<'_>,
        record: &RecordKey,
        token: Token,
        attempt: u32,
        failure: Failure,
    ) -> Disposition {
        let Failure { error, hint } = failure;
        if attempt >= self.config.max_attempts {
            self.settle(tx, record, token, Settle::Release(Release::Reset))
                .await;
            return Disposition::retries_exhausted(attempt, &error);
        }
        self.settle(tx, record, token, Settle::Release(Release::Retry))
            .await;
        Disposition::Retry {
            after: retry_delay(&self.config, attempt, hint),
            cause: RetryCause::HandlerFailed { attempt, error },
        }
    }

    async fn on_permanent(
        &self,
        tx: Transaction<'_>,
        record: &RecordKey,
        token: Token,
        reason: DeadLetterReason,
        error: String,
    ) -> Disposition {
        let how = if self.config.store_permanent_failures {
            let body = serde_json::json!({ "error": error }).to_string();
            Settle::StoreFailure(Outcome::failed(body))
        } else {
            Settle::Release(Release::Reset)
        };
        self.settle(tx, record, token, how).await;
        Disposition::dead_letter(reason, error)
    }

    /// Undoes the handler's writes, records the failure on the claimed row and commits. Best
    /// effort: if it fails, the whole transaction rolls back (claim included) and the key is
    /// simply claimable again, with this attempt not counted.
    ///
    /// If the fenced write matches no row (our token is stale: the record expired while the
    /// handler ran), nothing may commit, not even the claim: the whole transaction is rolled
    /// back. The caller's disposition (retry without ack, or dead-letter) still holds: under our
    /// row lock nobody else can own the key, so there is no new owner to leave the message to.
    async fn settle(&self, tx: Transaction<'_>, record: &RecordKey, token: Token, how: Settle) {
        let result = async {
            tx.batch_execute(ROLLBACK_TO_SAVEPOINT).await?;
            let token_sql = i64::try_from(token.0).unwrap_or(i64::MAX);
            let held = match &how {
                Settle::Release(mode) => {
                    let stmt = tx.prepare_cached(&self.store.sql().release).await?;
                    let reset = *mode == Release::Reset;
                    let n = tx
                        .execute(
                            &stmt,
                            &[&record.scope, &record.key.as_str(), &token_sql, &reset],
                        )
                        .await?;
                    n > 0
                }
                Settle::StoreFailure(outcome) => {
                    self.write_outcome(&tx, record, token, outcome).await?
                }
            };
            if held {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok::<_, tokio_postgres::Error>(held)
        };
        let result = timed("settle", self.config.store_timeout, async {
            result.await.map_err(|e| self.store.db("settle", e))
        })
        .await;
        match result {
            Ok(true) => {}
            Ok(false) => warn!(
                %token,
                "stale token: the record expired while the handler ran; \
                 the transaction was rolled back and nothing was recorded"
            ),
            Err(err) => {
                warn!(%err, "could not record the failure; the claim was rolled back instead")
            }
        }
    }

    /// `ProcessWithoutDedup`: run in a transaction without a claim, with in-process retries.
    async fn run_unkeyed(
        &self,
        message: &Arc<Message>,
        scope: Arc<str>,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = match self.connect().await {
                Ok(client) => client,
                Err(err) => return self.store_down(err),
            };
            let tx = match self.begin(&mut client).await {
                Ok(tx) => tx,
                Err(err) => return self.store_down(err),
            };
            // No claim statement to carry it here: one more round trip, on this rare path only.
            let pid = async {
                let row = tx.query_one("SELECT pg_backend_pid()", &[]).await;
                row.map_err(|e| self.store.db("begin", e))
            };
            let pid = match self.store_call("begin", pid).await {
                Ok(row) => row.try_get::<_, i32>(0).ok(),
                Err(err) => return self.store_down(err),
            };
            let ctx = HandlerContext {
                message: message.clone(),
                key: None,
                scope: scope.clone(),
                attempt,
                token: None,
            };
            let failure = match self.run_handler(ctx, &tx, pid, shutdown).await {
                Run::Interrupted => return Disposition::Abandoned,
                Run::Finished(Ok(value)) => match serialize(&value) {
                    Ok(Ok(body)) => {
                        let commit =
                            async { tx.commit().await.map_err(|e| self.store.db("commit", e)) };
                        return match self.store_call("commit", commit).await {
                            Ok(()) => Disposition::Unkeyed {
                                outcome: Outcome::succeeded(body),
                            },
                            Err(err) => self.store_down(err),
                        };
                    }
                    Ok(Err(e)) => return Disposition::unserializable(&e),
                    // Its `Serialize` panicked: retried in place, like a handler panic.
                    Err(panicked) => Failure::text(panicked),
                },
                Run::Finished(Err(e)) if e.is_retriable() => Failure::of(&e),
                Run::Finished(Err(e)) => {
                    let (reason, error) = permanent_failure(&e);
                    return Disposition::dead_letter(reason, error);
                }
            };
            self.roll_back(tx).await;
            if let Some(stop) = unkeyed_retry(&self.config, attempt, failure, shutdown).await {
                return stop;
            }
        }
    }

    /// `ROLLBACK` after a dropped handler, under the store timeout: if the server does not answer
    /// (still busy with the handler's statement), the transaction is dropped, which queues the
    /// rollback without waiting for it.
    async fn roll_back(&self, tx: Transaction<'_>) {
        let rollback = async {
            tx.rollback()
                .await
                .map_err(|e| self.store.db("rollback", e))
        };
        if let Err(err) = timed("rollback", self.config.store_timeout, rollback).await {
            warn!(%err, "rollback not confirmed; it stays queued on the connection");
        }
    }

    /// A pooled connection, under the store timeout.
    async fn connect(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.store_call("connect", self.store.client("connect"))
            .await
    }

    /// `BEGIN` on `client`, under the store timeout.
    async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
    ) -> Result<Transaction<'c>, StoreError> {
        // READ COMMITTED whatever the session default: the claim statement relies on it (a
        // concurrent claim's commit is a re-run, see `Step::Raced`); under REPEATABLE READ or
        // SERIALIZABLE the same race is a serialization failure, reported as "store unavailable".
        let begin = async {
            client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()
                .await
                .map_err(|e| self.store.db("begin", e))
        };
        self.store_call("begin", begin).await
    }
}
