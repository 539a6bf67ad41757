//! What happens to one delivery: process it, then ack, publish-and-ack, requeue or reject as the
//! disposition says. Nothing is acknowledged before the outcome is durable or the dead letter is
//! confirmed.

use super::acks::{handed_over, Acks};
use super::config::AmqpConfig;
use super::convert::{to_message, x_death_count};
use super::dead_letter::dead_letter_publish;
use super::error::AmqpError;
use super::gate::Gate;
use super::health::Probe;
use super::publish::Publisher;
use super::reply::reply_properties;
use super::stats::{Counters, Live};
use crate::engine::{panic_text, Disposition, HandlerSlots, Processor, RetryCause};
use crate::message::Message;
use crate::outcome::Outcome;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use lapin::message::Delivery;
use lapin::options::{BasicNackOptions, BasicRejectOptions};
use lapin::{Acker, BasicProperties};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// State shared by all delivery tasks of one consumer (across reconnects).
pub(crate) struct Shared {
    pub(crate) config: AmqpConfig,
    pub(crate) processor: Arc<dyn Processor>,
    /// Handlers running at once (`concurrency`); deliveries in process are bounded apart.
    pub(crate) handler_slots: HandlerSlots,
    pub(crate) stats: Live,
    pub(crate) gate: Gate,
    pub(crate) shutdown: CancellationToken,
    /// Run state, heartbeat, channel and store reachability (`AmqpConsumer::health`).
    pub(crate) health: Arc<Probe>,
}

/// The broker facts about a delivery that every log line carries.
struct Facts {
    tag: u64,
    redelivered: bool,
    /// Set once an ack, nack or reject of the delivery is under way: after that a panic must not
    /// settle it again (a second settle of one tag is a channel error). Kept here, next to the
    /// other flag, where it costs no space in the task's future.
    settling: AtomicBool,
    x_death: u64,
    exchange: String,
    routing_key: String,
    /// Boxed: kept for replies and dead letters, and large.
    properties: Box<BasicProperties>,
    payload: Bytes,
}

/// Processes and settles one delivery. `permit` bounds concurrency; it is given back before any
/// requeue delay so a backing-off message does not block the others.
///
/// The delivery is taken apart before the task's future is built, so the future (allocated and
/// moved once per delivery, and past about 1 KiB much slower to allocate) holds only what it uses.
pub(crate) fn handle(
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    acks: Arc<Acks>,
    delivery: Delivery,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let Delivery {
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        acker,
    } = delivery;
    let facts = Facts {
        tag: delivery_tag,
        redelivered,
        settling: AtomicBool::new(false),
        x_death: x_death_count(&properties),
        exchange: exchange.as_str().to_string(),
        routing_key: routing_key.as_str().to_string(),
        payload: Bytes::from(data),
        properties: Box::new(properties),
    };
    let message = Arc::new(to_message(
        &shared.config.queue,
        &facts.exchange,
        &facts.routing_key,
        facts.tag,
        facts.redelivered,
        &facts.properties,
        facts.payload.clone(),
    ));
    // Defence in depth (the engine already turns handler panics into retriable failures): a
    // delivery whose task panicked would stay unacked on a healthy channel, and after `prefetch`
    // of them the broker would send nothing more, so a panic requeues the delivery. Each step is
    // wrapped on its own rather than the whole task, which would nest a second future (and its
    // borrows) in every delivery's. In a trace scope: dead letters and replies published while
    // settling carry the process span's trace context (feature `otel`).
    crate::traces::scope(async move {
        let Some(disposition) = process_holding(&shared, &acker, &message, &facts).await else {
            return;
        };
        let settle = Settle {
            shared: &shared,
            publisher: &publisher,
            acks: &acks,
            acker: &acker,
            facts: &facts,
            permit: Mutex::new(Some(permit)),
        };
        // Defence in depth, as in `process_guarded`: requeue the delivery if settling it panics
        // before its ack, nack or reject is under way. `settle` is dropped before the requeue so
        // that it is not kept in the task's future across two awaits.
        let panicked = AssertUnwindSafe(settle.apply(disposition))
            .catch_unwind()
            .await
            .is_err();
        let settling = facts.settling.load(Ordering::Acquire);
        drop(settle);
        if panicked {
            error!(
                tag = facts.tag,
                settling, "settling a delivery panicked; requeueing it unless it was being settled"
            );
            if !settling {
                requeue_after_panic(&shared, &acks, &acker, facts.tag).await;
            }
        }
    })
}

/// Requeues a delivery whose settling panicked before its ack, nack or reject was under way.
fn requeue_after_panic<'a>(
    shared: &'a Shared,
    acks: &'a Acks,
    acker: &'a Acker,
    tag: u64,
) -> BoxFuture<'a, ()> {
    async move {
        let opts = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let timeout = shared.config.settle_timeout;
        if handed_over("nack", tag, 1, timeout, acker.nack(opts)).await {
            acks.settled(tag);
            shared.stats.bump(|c| &c.requeued);
        } else {
            shared.stats.bump(|c| &c.left_unacked);
        }
    }
    .boxed()
}

/// Runs the processor; while the store is unavailable, holds the delivery (intake paused) and
/// tries again after the suggested delay. `None`: the delivery was left for redelivery.
async fn process_holding(
    shared: &Shared,
    acker: &Acker,
    message: &Arc<Message>,
    facts: &Facts,
) -> Option<Disposition> {
    let mut hold = None;
    loop {
        let d = process_guarded(shared, message, facts.tag).await;
        log_decision(&shared.config.queue, facts, &d);
        let Disposition::Retry {
            after,
            cause: RetryCause::StoreUnavailable { error },
        } = &d
        else {
            if hold.is_some() {
                info!(tag = facts.tag, "store answered again; resuming intake");
            }
            return Some(d);
        };
        shared.stats.bump(|c| &c.store_retries);
        if hold.is_none() {
            let (guard, was_open) = shared.gate.hold();
            if was_open {
                warn!(queue = %shared.config.queue, "store unavailable: pausing intake, acking nothing");
            }
            // The store counts as unreachable (readiness) while any delivery is held for it.
            hold = Some((guard, shared.health.state.store_unavailable(error)));
        }
        if sleep_or_cancel(*after, &shared.shutdown).await {
            return Some(Disposition::Abandoned);
        }
        if !acker.usable() {
            // The channel is gone; the broker redelivers the message to the next session.
            shared.stats.bump(|c| &c.left_unacked);
            return None;
        }
    }
}

/// Delay before a delivery whose processing panicked is requeued, so a panic that repeats does
/// not spin.
const PANIC_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs the processor, turning a panic into a retry: nack with requeue after
/// [`PANIC_RETRY_DELAY`].
///
/// Defence in depth: the engine already turns handler panics into retriable failures, but a
/// delivery whose task died of a panic would stay unacked on a healthy channel, and after
/// `prefetch` of them the broker would send nothing more. Caught here, around the boxed processor
/// future, rather than around the whole task, so every delivery's future stays as small.
async fn process_guarded(shared: &Shared, message: &Arc<Message>, tag: u64) -> Disposition {
    let processing = std::panic::catch_unwind(AssertUnwindSafe(|| {
        shared.processor.process_with_slots(
            message.clone(),
            &shared.shutdown,
            &shared.handler_slots,
        )
    }));
    let panic = match processing {
        Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
            Ok(d) => return d,
            Err(panic) => panic,
        },
        Err(panic) => panic,
    };
    let error = format!("processing panicked: {}", panic_text(&*panic));
    error!(tag, %error, "requeueing the delivery");
    Disposition::Retry {
        after: PANIC_RETRY_DELAY,
        cause: RetryCause::HandlerFailed { attempt: 0, error },
    }
}

fn log_decision(queue: &str, f: &Facts, d: &Disposition) {
    let decision = d.decision();
    match d {
        Disposition::DeadLetter(dl) => warn!(
            queue, tag = f.tag, redelivered = f.redelivered, x_death = f.x_death, decision,
            reason = dl.reason.as_str(), error = %dl.error, "amqp decision"
        ),
        Disposition::Retry { after, cause } => info!(
            queue,
            tag = f.tag,
            redelivered = f.redelivered,
            x_death = f.x_death,
            decision,
            ?after,
            ?cause,
            "amqp decision"
        ),
        Disposition::Processed { .. } if !f.redelivered && f.x_death == 0 => debug!(
            queue,
            tag = f.tag,
            redelivered = f.redelivered,
            x_death = f.x_death,
            decision,
            "amqp decision"
        ),
        _ => info!(
            queue,
            tag = f.tag,
            redelivered = f.redelivered,
            x_death = f.x_death,
            decision,
            "amqp decision"
        ),
    }
}

struct Settle<'a> {
    shared: &'a Shared,
    publisher: &'a Publisher,
    acks: &'a Acks,
    acker: &'a Acker,
    facts: &'a Facts,
    /// Given back once the work is done: before a requeue delay, and before an ack that may
    /// linger while it waits to be coalesced.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Settle<'_> {
    fn release_permit(&self) {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    async fn apply(&self, disposition: Disposition) {
        match disposition {
            Disposition::Processed { outcome } => {
                self.reply_then_ack(&outcome, false, |c| &c.acked_processed)
                    .await
            }
            Disposition::Replayed { outcome } => {
                self.reply_then_ack(&outcome, true, |c| &c.acked_replayed)
                    .await
            }
            Disposition::Unkeyed { outcome } => {
                self.reply_then_ack(&outcome, false, |c| &c.acked_unkeyed)
                    .await
            }
            Disposition::Superseded => self.ack(|c| &c.acked_superseded).await,
            // The rarer paths return boxed futures: theirs (publishing, confirms, delays) would
            // otherwise make every delivery task as large as the largest of them.
            Disposition::DeadLetter(dl) => self.dead_letter(&dl).await,
            Disposition::Retry { after, .. } => {
                self.shared.stats.bump(|c| &c.retries);
                self.requeue_after(after).await
            }
            Disposition::Abandoned => {
                self.shared.stats.bump(|c| &c.abandoned);
                self.requeue().await
            }
        }
    }

    /// Retriable handler failure (claim released, attempt counted in the store) or the key still
    /// held elsewhere: give the message back to the queue after the delay, so any consumer can
    /// take the next attempt.
    fn requeue_after(&self, after: Duration) -> BoxFuture<'_, ()> {
        async move {
            self.release_permit();
            if sleep_or_cancel(after, &self.shared.shutdown).await {
                debug!(tag = self.facts.tag, "shutdown: requeueing at once");
            }
            self.requeue().await;
        }
        .boxed()
    }

    /// Request/reply: publish the outcome (confirmed) before acknowledging the request.
    async fn reply_then_ack(
        &self,
        outcome: &Outcome,
        replayed: bool,
        counter: fn(&Counters) -> &AtomicU64,
    ) {
        let reply_to = self
            .facts
            .properties
            .reply_to()
            .as_ref()
            .filter(|r| !r.as_str().is_empty());
        if let (true, Some(reply_to)) = (self.shared.config.replies, reply_to) {
            let props = reply_properties(&self.facts.properties, outcome, replayed);
            // Not mandatory: a requester that went away must not block the queue.
            let published = self
                .publish_retrying("reply", "", reply_to.as_str(), &outcome.body, props, false)
                .await;
            if published.is_err() {
                // The outcome is durable: the redelivery replays it as the reply.
                return self.requeue().await;
            }
            self.shared.stats.bump(|c| &c.replies);
        }
        self.ack(counter).await;
    }

    /// Boxed, like every rare settle path (see [`Settle::apply`]).
    fn dead_letter<'b>(&'b self, dl: &'b crate::engine::DeadLetter) -> BoxFuture<'b, ()> {
        async move {
            let Some(target) = &self.shared.config.dead_letter else {
                // No exchange of our own: reject without requeue so the queue's x-dead-letter-exchange
                // (if any) applies.
                return self.reject().await;
            };
            let (routing_key, props) = dead_letter_publish(
                target,
                dl,
                &self.facts.properties,
                &self.shared.config.queue,
                &self.facts.exchange,
                &self.facts.routing_key,
            );
            // Mandatory: an unroutable dead letter would be lost, so it counts as not confirmed.
            match self
                .publish_retrying(
                    "dead letter",
                    &target.exchange,
                    &routing_key,
                    &self.facts.payload,
                    props,
                    true,
                )
                .await
            {
                Ok(()) => self.ack(|c| &c.dead_lettered).await,
                Err(_) => {
                    crate::metrics::dead_letter_failed("amqp", self.shared.processor.scope());
                    self.requeue().await
                }
            }
        }
        .boxed()
    }

    /// Publishes with bounded retries; stops early when the delivery's channel is gone (the
    /// delivery will be redelivered, so publishing now would duplicate the dead letter).
    ///
    /// Boxed: a publish, its confirm and a backoff timer would otherwise enlarge every delivery
    /// task, and most deliveries publish nothing.
    fn publish_retrying<'b>(
        &'b self,
        what: &'b str,
        exchange: &'b str,
        routing_key: &'b str,
        body: &'b [u8],
        props: BasicProperties,
        mandatory: bool,
    ) -> BoxFuture<'b, Result<(), AmqpError>> {
        async move {
            let cfg = &self.shared.config;
            let mut n = 0;
            loop {
                if !self.acker.usable() {
                    return Err(AmqpError::Disconnected);
                }
                n += 1;
                let publish =
                    self.publisher
                        .publish(exchange, routing_key, body, props.clone(), mandatory);
                let err = match tokio::time::timeout(cfg.publish_timeout, publish).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) => err,
                    Err(_) => AmqpError::NotConfirmed {
                        exchange: exchange.to_string(),
                        routing_key: routing_key.to_string(),
                        detail: format!("no confirmation within {:?}", cfg.publish_timeout),
                    },
                };
                warn!(tag = self.facts.tag, %err, try_ = n, "{what} publish not confirmed");
                if n >= cfg.publish_tries || matches!(err, AmqpError::Disconnected) {
                    return Err(err);
                }
                if sleep_or_cancel(cfg.publish_backoff.delay(n), &self.shared.shutdown).await {
                    return Err(err);
                }
            }
        }
        .boxed()
    }

    /// Acks through the session's coalescer (one `basic.ack` for a run of deliveries).
    async fn ack(&self, counter: fn(&Counters) -> &AtomicU64) {
        self.facts.settling.store(true, Ordering::Release);
        self.release_permit();
        self.acks
            .ack(self.facts.tag, self.acker.clone(), counter)
            .await
    }

    /// Boxed, like every rare settle path (see [`Settle::apply`]).
    fn requeue(&self) -> BoxFuture<'_, ()> {
        async move {
            let opts = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            let nack = self.acker.nack(opts);
            self.settle("nack", nack, |c| &c.requeued).await
        }
        .boxed()
    }

    async fn reject(&self) {
        let reject = self.acker.reject(BasicRejectOptions { requeue: false });
        self.settle("reject", reject, |c| &c.rejected).await
    }

    /// Waits (bounded by `settle_timeout`) for a nack or reject to be handed to the connection and
    /// counts it; the delivery then no longer holds back coalesced acks. Otherwise it counts as
    /// left unacked: the broker redelivers it and the copy is deduplicated.
    async fn settle(
        &self,
        op: &str,
        settle: impl std::future::Future<Output = Result<bool, lapin::Error>>,
        counter: fn(&Counters) -> &AtomicU64,
    ) {
        let (tag, timeout) = (self.facts.tag, self.shared.config.settle_timeout);
        self.facts.settling.store(true, Ordering::Release);
        if handed_over(op, tag, 1, timeout, settle).await {
            self.acks.settled(tag);
            self.shared.stats.bump(counter)
        } else {
            self.shared.stats.bump(|c| &c.left_unacked)
        }
    }
}

/// Sleeps for `d`; `true` if shutdown was requested first.
pub(crate) async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.cancelled() => true,
    }
}
