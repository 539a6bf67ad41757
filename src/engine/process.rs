//! The processing flow of one message. The tables in `docs/semantics.md` are the specification;
//! each branch below names the row it implements.

use super::telemetry::record_decision;
use super::Identity;
use super::{Disposition, EngineConfig, HandlerSlot, HandlerSlots, Inner, RetryCause};
use crate::engine::DeadLetterReason;
use crate::fingerprint::Fingerprint;
use crate::handler::{Handler, HandlerContext, HandlerError};
use crate::message::Message;
use crate::outcome::Outcome;
use crate::store::{Claim, ClaimRequest, Fence, RecordKey, Release, StoreError, Token};
use futures::future::{BoxFuture, CatchUnwind, FutureExt};
use serde::Serialize;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument, Span};

/// Bounded tries for best-effort writes (release) whose failure only delays a retry until the lease
/// ends.
const RELEASE_TRIES: u32 = 3;

/// What running the handler produced (the engine's and the transactional engine's runs).
pub(crate) enum Run<T> {
    /// The handler returned, panicked or timed out (the last two as retriable errors).
    Finished(Result<T, HandlerError>),
    /// Shutdown grace ran out; the handler future was dropped.
    Interrupted,
}

impl<T> Run<T> {
    /// Records the run in `idemq_handler_duration_seconds` (its `result` label) and returns it.
    pub(crate) fn recorded(self, scope: &Arc<str>, started: Instant) -> Self {
        let result = match &self {
            Run::Finished(Ok(_)) => "ok",
            Run::Finished(Err(e)) if e.is_retriable() => "retriable",
            Run::Finished(Err(_)) => "permanent",
            Run::Interrupted => "interrupted",
        };
        crate::metrics::handler_ran(scope, result, started.elapsed());
        self
    }
}

/// A claimed message: where it is claimed and under which token.
struct Claimed {
    scope: Arc<str>,
    record: RecordKey,
    fingerprint: Fingerprint,
    token: Token,
    attempt: u32,
}

/// Why a message got no handler slot.
enum SlotWait {
    /// Shutdown, or the slots were closed.
    Interrupted,
    /// The lease could not be renewed while waiting.
    LeaseLost,
}

/// Which limit stopped a pending handler.
enum Limit {
    Timeout(Duration),
    Grace,
}

/// Why `complete` did not store the outcome.
enum NotStored {
    /// The store refused the outcome as too large.
    TooLarge(usize),
    /// Given up: the disposition to return (dead letter for an unreadable record, abandoned on
    /// shutdown).
    Settled(Disposition),
}

impl<H: Handler> Inner<H> {
    /// With `slots`, the handler runs only while it holds one (the claim and the complete do
    /// not); see [`HandlerSlots`].
    pub(super) async fn process(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
        slots: Option<&HandlerSlots>,
    ) -> Disposition {
        let span = crate::traces::process_span(&self.scope, &message);
        async {
            let _in_flight = crate::metrics::InFlight::enter(&self.scope);
            let d = self.decide(&message, shutdown, slots).await;
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

    async fn decide(
        &self,
        message: &Arc<Message>,
        shutdown: &CancellationToken,
        slots: Option<&HandlerSlots>,
    ) -> Disposition {
        let (scope, record, fingerprint) = match self.identify(message) {
            Ok(Identity {
                scope,
                claim: Some((record, fingerprint)),
            }) => (scope, record, fingerprint),
            Ok(Identity { scope, claim: None }) => {
                return self.run_unkeyed(message, scope, shutdown, slots).await
            }
            Err(settled) => return settled,
        };
        match self.acquire(&record, &fingerprint, shutdown).await {
            // A separate allocation: with it inline, the message's future would pass the size at
            // which allocators switch to their slow path for large blocks (about 1 KiB), and it is
            // allocated for every message.
            Ok((token, attempt)) => {
                let claimed = Claimed {
                    scope,
                    record,
                    fingerprint,
                    token,
                    attempt,
                };
                Box::pin(self.run_claimed(message, claimed, shutdown, slots)).await
            }
            Err(settled) => settled,
        }
    }

    /// Claims the key, waiting (bounded) while another consumer holds it.
    async fn acquire(
        &self,
        record: &RecordKey,
        fingerprint: &Fingerprint,
        shutdown: &CancellationToken,
    ) -> Result<(Token, u32), Disposition> {
        let cfg = &self.config;
        let req = ClaimRequest::new(record, fingerprint, cfg.lease, cfg.retention);
        let wait_until = deadline_after(cfg.in_flight_bound());
        let (mut polls, mut corrupt) = (0u32, 0u32);
        loop {
            match self.store_call("claim", self.store.claim(&req)).await {
                Ok(Claim::Acquired { token, attempt }) => {
                    if attempt > 1 {
                        crate::metrics::claim_reacquired(&self.scope);
                        info!(%token, attempt, "claimed (retry or takeover of an expired lease)");
                    }
                    return Ok((token, attempt));
                }
                Ok(Claim::Completed { outcome }) => return Err(Disposition::Replayed { outcome }),
                Ok(Claim::Conflict { stored }) => {
                    return Err(Disposition::dead_letter(
                        DeadLetterReason::Conflict,
                        format!(
                            "key {} is recorded with payload fingerprint {stored}; this message has {fingerprint}",
                            self.config.log_key.show(record.key.as_str())
                        ),
                    ))
                }
                Ok(Claim::InFlight { retry_after }) => {
                    self.wait_in_flight(retry_after, wait_until, &mut polls, shutdown)
                        .await?
                }
                Err(err @ StoreError::Corrupt { .. }) => {
                    self.back_off_corrupt(err, &mut corrupt, shutdown).await?
                }
                Err(err) => return Err(self.store_down(err)),
            }
        }
    }

    async fn run_claimed(
        &self,
        message: &Arc<Message>,
        claimed: Claimed,
        shutdown: &CancellationToken,
        slots: Option<&HandlerSlots>,
    ) -> Disposition {
        let Claimed {
            scope,
            record,
            fingerprint,
            token,
            attempt,
        } = claimed;
        let ctx = HandlerContext {
            message: message.clone(),
            key: Some(record.key.clone()),
            scope,
            attempt,
            token: Some(token),
        };
        let slot = match self
            .handler_slot(slots, Some((&record, token)), shutdown)
            .await
        {
            Ok(slot) => slot,
            Err(SlotWait::Interrupted) => {
                Box::pin(self.release(&record, token, Release::Retry)).await;
                return Disposition::Abandoned;
            }
            Err(SlotWait::LeaseLost) => {
                warn!("lease lost while waiting for a handler slot; the handler did not run");
                return Disposition::Retry {
                    after: self.config.retry_backoff.delay(1),
                    cause: RetryCause::LeaseLost,
                };
            }
        };
        let run = self
            .run_handler(ctx, Some((&record, token)), shutdown)
            .await;
        // The outcome is stored without the slot: another handler runs meanwhile.
        drop(slot);
        let result = match run {
            Run::Finished(r) => r,
            Run::Interrupted => {
                warn!("shutdown grace exceeded; handler dropped, claim released");
                // Boxed for the same reason as the failure paths below.
                Box::pin(self.release(&record, token, Release::Retry)).await;
                return Disposition::Abandoned;
            }
        };
        match result {
            Err(e) if e.is_retriable() => {
                let failure = Failure::of(&e);
                self.on_retriable(&record, token, attempt, failure).await
            }
            Err(e) => {
                let (reason, error) = permanent_failure(&e);
                self.on_permanent(&record, token, reason, error, shutdown)
                    .await
            }
            Ok(value) => {
                let body = match serialize(&value) {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => {
                        let error = format!("outcome could not be serialized: {e}");
                        let reason = DeadLetterReason::HandlerFailed;
                        return self
                            .on_permanent(&record, token, reason, error, shutdown)
                            .await;
                    }
                    Err(panicked) => {
                        let failure = Failure::text(panicked);
                        return self.on_retriable(&record, token, attempt, failure).await;
                    }
                };
                if body.len() > self.config.max_outcome_bytes {
                    return self.outcome_too_large(&record, token, body.len()).await;
                }
                match self
                    .complete(&record, token, Outcome::succeeded(body), shutdown)
                    .await
                {
                    Ok((Fence::Held, outcome)) => Disposition::Processed { outcome },
                    Ok((Fence::Lost, outcome)) => {
                        self.claim_lost(&record, &fingerprint, outcome, shutdown)
                            .await
                    }
                    Err(NotStored::TooLarge(size)) => {
                        self.outcome_too_large(&record, token, size).await
                    }
                    Err(NotStored::Settled(d)) => d,
                }
            }
        }
    }

    /// [`run_handler_untimed`](Self::run_handler_untimed), recording its duration by result.
    async fn run_handler(
        &self,
        ctx: HandlerContext,
        renew: Option<(&RecordKey, Token)>,
        shutdown: &CancellationToken,
    ) -> Run<H::Output> {
        let started = Instant::now();
        self.run_handler_untimed(ctx, renew, shutdown)
            .await
            .recorded(&self.scope, started)
    }

    /// Runs the handler while renewing the lease of `renew` (if any), honouring the handler
    /// timeout and the shutdown grace period. Panics, in the returned future or in `handle`
    /// itself before it returns one, and timeouts become retriable errors.
    async fn run_handler_untimed(
        &self,
        ctx: HandlerContext,
        renew: Option<(&RecordKey, Token)>,
        shutdown: &CancellationToken,
    ) -> Run<H::Output> {
        let started = Instant::now();
        let finished = |r: std::thread::Result<Result<H::Output, HandlerError>>| {
            Run::Finished(r.unwrap_or_else(|panic| Err(handler_panicked(panic))))
        };
        let handler = match call_handler(|| self.handler.handle(ctx)) {
            Ok(future) => future,
            Err(panicked) => return Run::Finished(Err(panicked)),
        };
        tokio::pin!(handler);
        // A handler that finishes on its first poll needs neither the renewal loop nor the
        // timers, so they are only built once it is pending.
        if let Poll::Ready(r) = futures::poll!(handler.as_mut()) {
            return finished(r);
        }
        let (timeout, grace) = (self.config.handler_timeout, self.config.shutdown_grace);
        // Boxed: two timers, kept out of every message's future.
        let mut limit: Pin<Box<dyn Future<Output = Limit> + Send + '_>> = Box::pin(async move {
            let timed_out = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(deadline_from(started, t)).await,
                    None => std::future::pending().await,
                }
            };
            let grace = async {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                _ = timed_out => Limit::Timeout(timeout.unwrap_or_default()),
                _ = grace => Limit::Grace,
            }
        });
        // Boxed: a store call and a timer, kept out of every message's future.
        let mut renewal: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match renew {
            Some((record, token)) => Box::pin(self.keep_renewing(record, token)),
            None => Box::pin(std::future::pending()),
        };
        let mut renewing = renew.is_some();
        loop {
            tokio::select! {
                biased;
                r = &mut handler => return finished(r),
                _ = &mut renewal, if renewing => {
                    renewing = false;
                    warn!("lease lost while the handler runs; its outcome will be discarded");
                }
                l = &mut limit => return match l {
                    Limit::Grace => Run::Interrupted,
                    Limit::Timeout(after) => Run::Finished(Err(handler_timed_out(&self.scope, after))),
                },
            }
        }
    }

    /// Waits for a handler slot (`None` without `slots`), renewing the lease of `renew` (if any)
    /// meanwhile: a message may wait behind long handlers for longer than its lease.
    async fn handler_slot(
        &self,
        slots: Option<&HandlerSlots>,
        renew: Option<(&RecordKey, Token)>,
        shutdown: &CancellationToken,
    ) -> Result<Option<HandlerSlot>, SlotWait> {
        let Some(slots) = slots else { return Ok(None) };
        if let Some(slot) = slots.try_acquire() {
            return Ok(Some(slot));
        }
        // Boxed: only messages that wait build it.
        let mut renewal: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match renew {
            Some((record, token)) => Box::pin(self.keep_renewing(record, token)),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(SlotWait::Interrupted),
            slot = slots.acquire() => slot.map(Some).ok_or(SlotWait::Interrupted),
            _ = &mut renewal => Err(SlotWait::LeaseLost),
        }
    }

    /// Renews the lease every `renew_interval` until the lease is lost (returns) or forever.
    async fn keep_renewing(&self, record: &RecordKey, token: Token) {
        let every = self.config.renew_interval();
        loop {
            tokio::time::sleep(every).await;
            match self
                .store_call("renew", self.store.renew(record, token, self.config.lease))
                .await
            {
                Ok(Fence::Held) => crate::metrics::lease_renewed(&self.scope, "ok"),
                Ok(Fence::Lost) => {
                    crate::metrics::lease_renewed(&self.scope, "lost");
                    return;
                }
                // The lease may still be valid; keep trying at the same pace.
                Err(err) => {
                    crate::metrics::lease_renewed(&self.scope, "error");
                    warn!(%err, "lease renewal failed")
                }
            }
        }
    }

    /// The failure paths return boxed futures: inline, they would enlarge every message's.
    fn on_retriable<'a>(
        &'a self,
        record: &'a RecordKey,
        token: Token,
        attempt: u32,
        failure: Failure,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            let Failure { error, hint } = failure;
            if attempt >= self.config.max_attempts {
                self.release(record, token, Release::Reset).await;
                return Disposition::retries_exhausted(attempt, &error);
            }
            self.release(record, token, Release::Retry).await;
            Disposition::Retry {
                after: retry_delay(&self.config, attempt, hint),
                cause: RetryCause::HandlerFailed { attempt, error },
            }
        }
        .boxed()
    }

    fn on_permanent<'a>(
        &'a self,
        record: &'a RecordKey,
        token: Token,
        reason: DeadLetterReason,
        error: String,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            if self.config.store_permanent_failures {
                let body = serde_json::json!({ "error": error }).to_string();
                if self
                    .complete(record, token, Outcome::failed(body), shutdown)
                    .await
                    .is_err()
                {
                    warn!("could not store the permanent failure; releasing instead");
                    self.release(record, token, Release::Reset).await;
                }
            } else {
                self.release(record, token, Release::Reset).await;
            }
            Disposition::dead_letter(reason, error)
        }
        .boxed()
    }

    fn outcome_too_large<'a>(
        &'a self,
        record: &'a RecordKey,
        token: Token,
        size: usize,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            self.release(record, token, Release::Reset).await;
            Disposition::dead_letter(
                DeadLetterReason::OutcomeTooLarge,
                format!(
                    "outcome is {size} bytes; the limit is {} bytes",
                    self.config.max_outcome_bytes
                ),
            )
        }
        .boxed()
    }

    /// Stores the outcome, retrying transient store failures: the handler already ran, so giving up
    /// early would turn a store blip into a second run. Token fencing makes the retries safe. After
    /// shutdown is requested, a few more tries are made before giving up (abandoned: not acked).
    /// An unreadable record is read again a bounded number of times, then dead-lettered with
    /// `corrupt-record`, as on the claim path.
    async fn complete(
        &self,
        record: &RecordKey,
        token: Token,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Result<(Fence, Outcome), NotStored> {
        let (mut failures, mut after_shutdown, mut corrupt) = (0u32, 0u32, 0u32);
        loop {
            let call = self
                .store
                .complete(record, token, &outcome, self.config.retention);
            match self.store_call("complete", call).await {
                Ok(fence) => return Ok((fence, outcome)),
                Err(StoreError::OutcomeTooLarge { size, .. }) => {
                    return Err(NotStored::TooLarge(size))
                }
                Err(err @ StoreError::Corrupt { .. }) => {
                    error!(%err, "handler ran but the record to complete is unreadable");
                    self.back_off_corrupt(err, &mut corrupt, shutdown)
                        .await
                        .map_err(NotStored::Settled)?;
                }
                Err(err) => {
                    failures += 1;
                    if shutdown.is_cancelled() {
                        after_shutdown += 1;
                        if after_shutdown > RELEASE_TRIES {
                            error!(%err, "handler ran but its outcome could not be stored; leaving the message unacknowledged");
                            return Err(NotStored::Settled(Disposition::Abandoned));
                        }
                    }
                    warn!(%err, failures, "outcome not durable yet; retrying");
                    tokio::time::sleep(self.config.store_backoff.delay(failures)).await;
                }
            }
        }
    }

    /// `complete` answered [`Fence::Lost`]: the claim is no longer ours, but the handler ran.
    ///
    /// Either another consumer took the key over after our lease expired (it records the outcome,
    /// and must not be overwritten), or nobody owns the key: the record expired, was evicted,
    /// forgotten (`idemq key forget --force`) or released, or its new owner gave it up. Acking in
    /// the second case would leave no outcome behind (breaking "ack only when the outcome is
    /// durable", and letting a later copy run the handler again), so one claim tells the cases
    /// apart: if it acquires the key, the record is re-created with this run's outcome and the
    /// message counts as processed (warning, `idemq_records_recreated_total`); if someone else
    /// holds or completed the key, or bound it to another payload, the message is acked as
    /// superseded (warning, decision `superseded` of `idemq_messages_total`).
    fn claim_lost<'a>(
        &'a self,
        record: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        outcome: Outcome,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            let cfg = &self.config;
            let req = ClaimRequest::new(record, fingerprint, cfg.lease, cfg.retention);
            let (mut failures, mut corrupt) = (0u32, 0u32);
            let token = loop {
                match self.store_call("claim", self.store.claim(&req)).await {
                    Ok(Claim::Acquired { token, .. }) => break token,
                    Ok(found) => return superseded(&found),
                    Err(err @ StoreError::Corrupt { .. }) => {
                        if let Err(d) = self.back_off_corrupt(err, &mut corrupt, shutdown).await {
                            return d;
                        }
                    }
                    // The handler ran: as for `complete`, wait for the store rather than run it
                    // again.
                    Err(err) => {
                        failures += 1;
                        warn!(%err, failures, "claim lost after the handler ran; store not answering, retrying");
                        if sleep_or_cancel(cfg.store_backoff.delay(failures), shutdown).await {
                            return Disposition::Abandoned;
                        }
                    }
                }
            };
            match self.complete(record, token, outcome, shutdown).await {
                Ok((Fence::Held, outcome)) => {
                    record_recreated(&self.scope, token);
                    Disposition::Processed { outcome }
                }
                Ok((Fence::Lost, _)) => superseded(&Claim::InFlight {
                    retry_after: Duration::ZERO,
                }),
                Err(NotStored::TooLarge(size)) => self.outcome_too_large(record, token, size).await,
                Err(NotStored::Settled(d)) => d,
            }
        }
        .boxed()
    }

    /// Best-effort release: if it fails the lease simply runs out.
    async fn release(&self, record: &RecordKey, token: Token, mode: Release) {
        for n in 1..=RELEASE_TRIES {
            match self
                .store_call("release", self.store.release(record, token, mode))
                .await
            {
                Ok(_) => return,
                Err(err) => {
                    warn!(%err, try_ = n, "release failed; the lease will expire instead");
                    tokio::time::sleep(self.config.store_backoff.delay(n)).await;
                }
            }
        }
    }

    /// `ProcessWithoutDedup`: run with in-process retries, nothing stored.
    async fn run_unkeyed(
        &self,
        message: &Arc<Message>,
        scope: Arc<str>,
        shutdown: &CancellationToken,
        slots: Option<&HandlerSlots>,
    ) -> Disposition {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ctx = HandlerContext {
                message: message.clone(),
                key: None,
                scope: scope.clone(),
                attempt,
                token: None,
            };
            let Ok(slot) = self.handler_slot(slots, None, shutdown).await else {
                return Disposition::Abandoned;
            };
            let run = self.run_handler(ctx, None, shutdown).await;
            drop(slot);
            let result = match run {
                Run::Finished(r) => r,
                Run::Interrupted => return Disposition::Abandoned,
            };
            let failure = match result {
                Ok(value) => match serialize(&value) {
                    Ok(Ok(body)) => {
                        return Disposition::Unkeyed {
                            outcome: Outcome::succeeded(body),
                        }
                    }
                    Ok(Err(e)) => return Disposition::unserializable(&e),
                    Err(panicked) => Failure::text(panicked),
                },
                Err(e) if e.is_retriable() => Failure::of(&e),
                Err(e) => {
                    let (reason, error) = permanent_failure(&e);
                    return Disposition::dead_letter(reason, error);
                }
            };
            if let Some(stop) = unkeyed_retry(&self.config, attempt, failure, shutdown).await {
                return stop;
            }
        }
    }
}

/// After a retriable failure of a run without deduplication (nothing in the store counts the
/// attempts, so the engine retries in place): `Some` to stop with that disposition, `None` to run
/// again after the backoff.
pub(crate) async fn unkeyed_retry(
    config: &EngineConfig,
    attempt: u32,
    failure: Failure,
    shutdown: &CancellationToken,
) -> Option<Disposition> {
    if attempt >= config.max_attempts {
        return Some(Disposition::retries_exhausted(attempt, &failure.error));
    }
    if sleep_or_cancel(retry_delay(config, attempt, failure.hint), shutdown).await {
        return Some(Disposition::Abandoned);
    }
    None
}

/// A retriable failure as the retry path reports it: the error text, and the handler's
/// [`HandlerError::retry_after`] hint, if any.
pub(crate) struct Failure {
    pub(crate) error: String,
    pub(crate) hint: Option<Duration>,
}

impl Failure {
    /// From a handler's retriable error.
    pub(crate) fn of(err: &HandlerError) -> Self {
        Self {
            error: err.error().to_string(),
            hint: err.retry_delay(),
        }
    }

    /// A failure of the engine's own making (a panic, an aborted transaction): no hint.
    pub(crate) fn text(error: String) -> Self {
        Self { error, hint: None }
    }
}

/// The delay before the next attempt after retriable failure number `attempt`: the handler's
/// hint clamped to `retry_backoff.max` (so a dependency cannot hold a Kafka partition, which
/// retries in place, longer than the configuration allows), else the configured backoff.
pub(crate) fn retry_delay(config: &EngineConfig, attempt: u32, hint: Option<Duration>) -> Duration {
    match hint {
        Some(d) => d.min(config.retry_backoff.max),
        None => config.retry_backoff.delay(attempt),
    }
}

/// The dead-letter reason and error text of a permanent handler failure.
pub(crate) fn permanent_failure(err: &HandlerError) -> (DeadLetterReason, String) {
    let reason = err
        .dead_letter_reason()
        .unwrap_or(DeadLetterReason::HandlerFailed);
    (reason, err.error().to_string())
}

/// Another consumer owns the key (`found` is what claiming it again returned): ack without
/// storing; that owner records the outcome.
fn superseded(found: &Claim) -> Disposition {
    let held = match found {
        Claim::Completed { .. } => "completed by another consumer",
        Claim::Conflict { .. } => "now recorded with another payload",
        _ => "held by another consumer",
    };
    warn!(
        held,
        "lease was taken over; acking without storing this run's outcome"
    );
    Disposition::Superseded
}

/// Calls a handler (`handle` runs its `handle`) and makes the run panic-safe. `handle` may do
/// synchronous work (a closure's body before its `async` block, a hand-written `handle`) and
/// panic before there is a future to catch the panic in: that is `Err` with the retriable failure.
/// Otherwise the future, whose panics [`handler_panicked`] turns into the same failure.
pub(crate) fn call_handler<F: Future>(
    handle: impl FnOnce() -> F,
) -> Result<CatchUnwind<AssertUnwindSafe<F>>, HandlerError> {
    match std::panic::catch_unwind(AssertUnwindSafe(handle)) {
        Ok(future) => Ok(AssertUnwindSafe(future).catch_unwind()),
        Err(panic) => Err(handler_panicked(panic)),
    }
}

/// The retriable failure a handler panic becomes.
pub(crate) fn handler_panicked(panic: Box<dyn Any + Send>) -> HandlerError {
    HandlerError::retriable(format!("handler panicked: {}", panic_text(&*panic)))
}

/// The retriable failure a handler running longer than `after` (the handler timeout) becomes;
/// logs it and counts it in `idemq_handler_timeouts_total`.
pub(crate) fn handler_timed_out(scope: &Arc<str>, after: Duration) -> HandlerError {
    warn!(
        ?after,
        "handler timed out; dropped, its effects may have happened"
    );
    metrics::counter!(crate::metrics::HANDLER_TIMEOUTS, "scope" => scope.clone()).increment(1);
    HandlerError::retriable(format!(
        "handler timed out after {after:?} (its effects may have happened)"
    ))
}

/// Logs and counts (`idemq_records_recreated_total`) a record that was gone when the outcome was
/// stored and was re-created with this run's outcome under `token`.
pub(crate) fn record_recreated(scope: &Arc<str>, token: Token) {
    warn!(%token, recreated = true, "the record was gone when the outcome was stored (expired, evicted, forgotten or released); re-created it with this run's outcome");
    metrics::counter!(crate::metrics::RECORDS_RECREATED, "scope" => scope.clone()).increment(1);
}

/// Serializes a handler's output as the outcome body; `Err` with the error text if its
/// `Serialize` implementation panicked (a retriable failure, like a handler panic).
pub(crate) fn serialize<T: Serialize>(value: &T) -> Result<serde_json::Result<Vec<u8>>, String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| serde_json::to_vec(value)))
        .map_err(|panic| format!("outcome serialization panicked: {}", panic_text(&*panic)))
}

/// `d` from now, saturating far in the future instead of overflowing.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    deadline_from(Instant::now(), d)
}

/// `d` after `start`, saturating far in the future instead of overflowing.
pub(crate) fn deadline_from(start: Instant, d: Duration) -> Instant {
    // About 30 years, as tokio's own "far future".
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    start
        .checked_add(d)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

/// Sleeps for `d`; returns `true` if shutdown was requested first.
pub(crate) async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}

pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
