//! The processing flow of one message. The table in `shared/SEMANTICS.md` is the specification;
//! each branch below names the row it implements.

use super::telemetry::record_decision;
use super::{Disposition, EngineConfig, Inner, RetryCause};
use crate::engine::DeadLetterReason;
use crate::fingerprint::Fingerprint;
use crate::handler::{Handler, HandlerContext, HandlerError};
use crate::key::{derive_from_payload, MissingKeyPolicy};
use crate::message::Message;
use crate::outcome::Outcome;
use crate::store::{Claim, ClaimRequest, Fence, RecordKey, Release, StoreError, Token};
use futures::future::{BoxFuture, FutureExt};
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, field, info, warn, Instrument, Span};

/// Bounded tries for best-effort writes (release) whose failure only delays a retry until the lease
/// ends.
const RELEASE_TRIES: u32 = 3;

/// What running the handler produced.
enum Run<T> {
    Finished(Result<T, HandlerError>),
    /// Shutdown grace ran out; the handler future was dropped.
    Interrupted,
}

impl<H: Handler> Inner<H> {
    pub(super) async fn process(
        &self,
        message: Arc<Message>,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let span = tracing::info_span!(
            "idemq.process",
            scope = %self.scope,
            source = %message.source,
            key = field::Empty,
            decision = field::Empty,
        );
        async {
            let d = self.decide(&message, shutdown).await;
            Span::current().record("decision", d.decision());
            record_decision(&self.scope, &d);
            match &d {
                Disposition::DeadLetter(dl) => {
                    warn!(reason = dl.reason.as_str(), error = %dl.error, "dead-lettering")
                }
                Disposition::Retry { after, cause } => info!(?after, ?cause, "retry later"),
                Disposition::Superseded => {
                    warn!("lease was taken over by another consumer; acking without storing")
                }
                other => debug!(decision = other.decision(), "settled"),
            }
            d
        }
        .instrument(span)
        .await
    }

    async fn decide(&self, message: &Arc<Message>, shutdown: &CancellationToken) -> Disposition {
        let key = match self.config.key.extract(message) {
            Ok(key) => key,
            Err(err) => match self.config.key.missing {
                MissingKeyPolicy::Reject => {
                    return Disposition::dead_letter(err.reason(), err.to_string())
                }
                MissingKeyPolicy::ProcessWithoutDedup => {
                    warn!(%err, "processing without deduplication (ProcessWithoutDedup policy)");
                    return self.run_unkeyed(message, shutdown).await;
                }
                MissingKeyPolicy::DeriveFromPayload => {
                    debug!(%err, "deriving the key from the payload");
                    derive_from_payload(message)
                }
            },
        };
        Span::current().record("key", key.as_str());
        let record = RecordKey::new(&*self.scope, key);
        let fingerprint = Fingerprint::of(message, &self.config.fingerprint_headers);
        match self.acquire(&record, &fingerprint, shutdown).await {
            // A separate allocation: with it inline, the message's future would pass the size at
            // which allocators switch to their slow path for large blocks (about 1 KiB), and it is
            // allocated for every message.
            Ok((token, attempt)) => {
                Box::pin(self.run_claimed(message, record, token, attempt, shutdown)).await
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
        let wait_until = Instant::now() + cfg.in_flight_bound();
        let (mut polls, mut corrupt) = (0u32, 0u32);
        loop {
            match self.store_call("claim", self.store.claim(&req)).await {
                Ok(Claim::Acquired { token, attempt }) => {
                    if attempt > 1 {
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
                            record.key
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
        record: RecordKey,
        token: Token,
        attempt: u32,
        shutdown: &CancellationToken,
    ) -> Disposition {
        let ctx = HandlerContext {
            message: message.clone(),
            key: Some(record.key.clone()),
            scope: self.scope.clone(),
            attempt,
            token: Some(token),
        };
        let result = match self
            .run_handler(ctx, Some((&record, token)), shutdown)
            .await
        {
            Run::Finished(r) => r,
            Run::Interrupted => {
                warn!("shutdown grace exceeded; handler dropped, claim released");
                // Boxed for the same reason as the failure paths below.
                Box::pin(self.release(&record, token, Release::Retry)).await;
                return Disposition::Abandoned;
            }
        };
        match result {
            Err(HandlerError::Retriable(e)) => {
                self.on_retriable(&record, token, attempt, e.to_string())
                    .await
            }
            Err(HandlerError::Permanent(e)) => {
                self.on_permanent(&record, token, e.to_string(), shutdown)
                    .await
            }
            Ok(value) => {
                let body = match serde_json::to_vec(&value) {
                    Ok(body) => body,
                    Err(e) => {
                        let error = format!("outcome could not be serialized: {e}");
                        return self.on_permanent(&record, token, error, shutdown).await;
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
                    Ok((Fence::Lost, _)) => {
                        metrics::counter!("idemq_superseded_total").increment(1);
                        Disposition::Superseded
                    }
                    Err(StoreError::OutcomeTooLarge { size, .. }) => {
                        self.outcome_too_large(&record, token, size).await
                    }
                    Err(err) => {
                        error!(%err, "handler ran but its outcome could not be stored; leaving the message unacknowledged");
                        Disposition::Abandoned
                    }
                }
            }
        }
    }

    /// Runs the handler (panics become retriable errors) while renewing the lease of `renew` (if
    /// any), honouring the shutdown grace period.
    async fn run_handler(
        &self,
        ctx: HandlerContext,
        renew: Option<(&RecordKey, Token)>,
        shutdown: &CancellationToken,
    ) -> Run<H::Output> {
        let handler = AssertUnwindSafe(self.handler.handle(ctx)).catch_unwind();
        tokio::pin!(handler);
        let finished = |r: std::thread::Result<Result<H::Output, HandlerError>>| {
            Run::Finished(r.unwrap_or_else(|panic| {
                Err(HandlerError::retriable(format!(
                    "handler panicked: {}",
                    panic_text(&*panic)
                )))
            }))
        };
        // A handler that finishes on its first poll needs neither the renewal loop nor the grace
        // timer, so they are only built once it is pending.
        if let Poll::Ready(r) = futures::poll!(handler.as_mut()) {
            return finished(r);
        }
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.config.shutdown_grace).await;
        };
        tokio::pin!(grace);
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
                _ = &mut grace => return Run::Interrupted,
            }
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
                Ok(Fence::Held) => {}
                Ok(Fence::Lost) => return,
                // The lease may still be valid; keep trying at the same pace.
                Err(err) => warn!(%err, "lease renewal failed"),
            }
        }
    }

    /// The failure paths return boxed futures: inline, they would enlarge every message's.
    fn on_retriable<'a>(
        &'a self,
        record: &'a RecordKey,
        token: Token,
        attempt: u32,
        error: String,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            if attempt >= self.config.max_attempts {
                self.release(record, token, Release::Reset).await;
                return Disposition::retries_exhausted(attempt, &error);
            }
            self.release(record, token, Release::Retry).await;
            Disposition::Retry {
                after: self.config.retry_backoff.delay(attempt),
                cause: RetryCause::HandlerFailed { attempt, error },
            }
        }
        .boxed()
    }

    fn on_permanent<'a>(
        &'a self,
        record: &'a RecordKey,
        token: Token,
        error: String,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Disposition> {
        async move {
            if self.config.store_permanent_failures {
                let body = serde_json::json!({ "error": error }).to_string();
                if let Err(err) = self
                    .complete(record, token, Outcome::failed(body), shutdown)
                    .await
                {
                    warn!(%err, "could not store the permanent failure; releasing instead");
                    self.release(record, token, Release::Reset).await;
                }
            } else {
                self.release(record, token, Release::Reset).await;
            }
            Disposition::dead_letter(DeadLetterReason::HandlerFailed, error)
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
    /// shutdown is requested, a few more tries are made before giving up.
    async fn complete(
        &self,
        record: &RecordKey,
        token: Token,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Result<(Fence, Outcome), StoreError> {
        let mut failures = 0u32;
        let mut after_shutdown = 0u32;
        loop {
            let call = self
                .store
                .complete(record, token, &outcome, self.config.retention);
            match self.store_call("complete", call).await {
                Ok(fence) => return Ok((fence, outcome)),
                Err(err @ StoreError::OutcomeTooLarge { .. }) => return Err(err),
                Err(err) => {
                    failures += 1;
                    if shutdown.is_cancelled() {
                        after_shutdown += 1;
                        if after_shutdown > RELEASE_TRIES {
                            return Err(err);
                        }
                    }
                    warn!(%err, failures, "outcome not durable yet; retrying");
                    tokio::time::sleep(self.config.store_backoff.delay(failures)).await;
                }
            }
        }
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
        shutdown: &CancellationToken,
    ) -> Disposition {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ctx = HandlerContext {
                message: message.clone(),
                key: None,
                scope: self.scope.clone(),
                attempt,
                token: None,
            };
            let result = match self.run_handler(ctx, None, shutdown).await {
                Run::Finished(r) => r,
                Run::Interrupted => return Disposition::Abandoned,
            };
            let error = match result {
                Ok(value) => {
                    return match serde_json::to_vec(&value) {
                        Ok(body) => Disposition::Unkeyed {
                            outcome: Outcome::succeeded(body),
                        },
                        Err(e) => Disposition::unserializable(&e),
                    }
                }
                Err(HandlerError::Permanent(e)) => {
                    return Disposition::dead_letter(DeadLetterReason::HandlerFailed, e.to_string())
                }
                Err(HandlerError::Retriable(e)) => e.to_string(),
            };
            if let Some(stop) = unkeyed_retry(&self.config, attempt, &error, shutdown).await {
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
    error: &str,
    shutdown: &CancellationToken,
) -> Option<Disposition> {
    if attempt >= config.max_attempts {
        return Some(Disposition::retries_exhausted(attempt, error));
    }
    if sleep_or_cancel(config.retry_backoff.delay(attempt), shutdown).await {
        return Some(Disposition::Abandoned);
    }
    None
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
