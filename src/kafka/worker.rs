//! One task per assigned partition takes its records in order and processes them (up to the
//! partition's concurrency at once, inside that task), mapping each
//! engine [`Disposition`] to commit, dead-letter or retry.

use super::partitions::{Shared, Tp};
use super::summary::bump;
use crate::engine::{panic_text, Backoff, DeadLetter, Disposition, RetryCause};
use crate::message::Message;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// A received record, detached from librdkafka's buffer.
#[derive(Clone)]
pub(crate) struct Work {
    pub(crate) message: Arc<Message>,
    /// The Kafka record key, kept for the dead-letter copy (same partitioning downstream).
    pub(crate) kafka_key: Option<Bytes>,
    pub(crate) offset: i64,
}

/// Metric counting failed dead-letter publishes (label `scope`).
pub(crate) const DEAD_LETTER_FAILURES: &str = "idemq_kafka_dead_letter_failures_total";

/// Backoff between dead-letter publish attempts.
const DEAD_LETTER_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

pub(crate) async fn partition_worker(
    shared: Arc<Shared>,
    tp: Tp,
    epoch: u64,
    mut queue: mpsc::UnboundedReceiver<Work>,
    cancel: CancellationToken,
    in_flight: Arc<AtomicUsize>,
) {
    let limit = shared.settings.partition_concurrency;
    // The partition's records in flight run inside this task rather than as a task each: a
    // spawn per record (task allocation, scheduling, a wake-up on another thread, clones of the
    // shared state) cost more than processing a record with a fast store.
    let mut running = FuturesUnordered::new();
    // The next record, taken off the queue and waiting for a global slot. One at a time, so
    // records of the partition start in offset order.
    let mut next: Option<Work> = None;
    let mut acquiring: Option<Acquiring> = None;
    loop {
        if next.is_some() && acquiring.is_none() {
            match shared.global.clone().try_acquire_owned() {
                Ok(permit) => {
                    if let Some(work) = next.take() {
                        running.push(run_record(
                            &shared, &tp, epoch, work, &cancel, &in_flight, permit,
                        ));
                    }
                    continue;
                }
                Err(TryAcquireError::NoPermits) => {
                    acquiring = Some(Box::pin(shared.global.clone().acquire_owned()));
                }
                Err(TryAcquireError::Closed) => break,
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(()) = running.next(), if !running.is_empty() => {}
            permit = async {
                match acquiring.as_mut() {
                    Some(a) => a.await,
                    None => std::future::pending().await,
                }
            }, if acquiring.is_some() => {
                acquiring = None;
                let Ok(permit) = permit else { break };
                if let Some(work) = next.take() {
                    running.push(run_record(&shared, &tp, epoch, work, &cancel, &in_flight, permit));
                }
            }
            w = queue.recv(), if next.is_none() && running.len() < limit => match w {
                Some(w) => {
                    shared.dequeued(&tp, epoch);
                    next = Some(w);
                }
                None => break,
            },
        }
    }
    // Cancelled (revocation, shutdown) or the queue closed: records in flight see the
    // cancellation themselves; they are driven to their end here.
    while running.next().await.is_some() {}
}

/// A pending acquisition of a global in-flight slot.
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Processes one record holding its global slot, and counts it in and out.
fn run_record<'a>(
    shared: &'a Shared,
    tp: &'a Tp,
    epoch: u64,
    work: Work,
    cancel: &'a CancellationToken,
    in_flight: &'a AtomicUsize,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'a {
    in_flight.fetch_add(1, Ordering::AcqRel);
    shared.active.fetch_add(1, Ordering::AcqRel);
    async move {
        // Defence in depth (the engine already turns handler panics into retriable failures): a
        // panic must not end this record's future before it gives its slot and counts back (the
        // partition would never commit again and revocations would wait their full timeout),
        // nor mark the record finished unprocessed. The record is processed again after a
        // backoff, until it finishes or the partition is cancelled.
        let mut panics = 0u32;
        while let Err(panic) =
            AssertUnwindSafe(process_one(shared, tp, epoch, work.clone(), cancel))
                .catch_unwind()
                .await
        {
            panics += 1;
            error!(
                panic = %panic_text(&*panic),
                panics,
                source = %work.message.source,
                "processing a record panicked; processing it again"
            );
            if sleep_or_cancel(DEAD_LETTER_BACKOFF.delay(panics), cancel).await {
                bump(&shared.stats.abandoned);
                break;
            }
        }
        drop(permit);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        shared.task_done();
    }
}

/// Processes one record until it is finished (committable) or given up (shutdown, revocation).
async fn process_one(shared: &Shared, tp: &Tp, epoch: u64, work: Work, cancel: &CancellationToken) {
    // While set, this task counts as waiting for the store and keeps the partition paused.
    let mut store_wait = None;
    let finished = loop {
        if cancel.is_cancelled() {
            break false;
        }
        let d = shared.processor.process(work.message.clone(), cancel).await;
        shared.stats.record(&d);
        let store_down = matches!(
            &d,
            Disposition::Retry {
                cause: RetryCause::StoreUnavailable { .. },
                ..
            }
        );
        if !store_down {
            // The store answered again: this task no longer holds the partition paused.
            store_wait = None;
        }
        match d {
            d if d.is_ack() => break true,
            Disposition::DeadLetter(dl) => {
                if dead_letter(shared, &work, &dl, cancel).await {
                    break true;
                }
                if cancel.is_cancelled() {
                    break false;
                }
                // No dead-letter topic: keep the partition from committing past this record and
                // try it again later (a fixed handler or store may then accept it).
                if sleep_or_cancel(shared.settings.no_dead_letter_retry, cancel).await {
                    break false;
                }
            }
            Disposition::Retry { after, .. } => {
                if store_down && store_wait.is_none() {
                    // Fail closed: fetch nothing more from this partition until the store is back,
                    // while the poll loop keeps the consumer in its group.
                    store_wait = Some(shared.wait_for_store(tp, epoch));
                }
                if sleep_or_cancel(after, cancel).await {
                    break false;
                }
            }
            // Abandoned (shutdown or revocation): leave it uncommitted for redelivery.
            _ => break false,
        }
    };
    drop(store_wait);
    if finished {
        shared.finish(tp, epoch, work.offset);
    } else {
        bump(&shared.stats.abandoned);
    }
}

/// Publishes to the dead-letter topic until the broker confirms (`true`), or returns `false` when
/// no topic is configured or shutdown/revocation interrupts the retries.
async fn dead_letter(
    shared: &Shared,
    work: &Work,
    dl: &DeadLetter,
    cancel: &CancellationToken,
) -> bool {
    let Some(producer) = &shared.dead_letter else {
        error!(
            source = %work.message.source,
            reason = dl.reason.as_str(),
            error = %dl.error,
            "message must be dead-lettered but no dead-letter topic is configured; not committing past it"
        );
        return false;
    };
    let mut failures = 0;
    loop {
        match producer
            .publish(&work.message, work.kafka_key.as_ref(), dl)
            .await
        {
            Ok(()) => {
                bump(&shared.stats.dead_lettered);
                return true;
            }
            Err(err) => {
                failures += 1;
                bump(&shared.stats.dead_letter_failures);
                metrics::counter!(DEAD_LETTER_FAILURES, "scope" => shared.processor.scope().to_string())
                    .increment(1);
                if failures >= 3 {
                    // Not transient any more (e.g. the copy is larger than the topic accepts):
                    // loud, and the partition still does not commit past the record.
                    error!(%err, failures, source = %work.message.source, reason = dl.reason.as_str(), "dead-letter copy cannot be produced; its partition does not commit past it until it can");
                } else {
                    warn!(%err, failures, source = %work.message.source, "dead-letter publish failed; retrying");
                }
                if sleep_or_cancel(DEAD_LETTER_BACKOFF.delay(failures), cancel).await {
                    return false;
                }
            }
        }
    }
}

/// Sleeps for `d`; `true` if cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
    }
}
