//! One task per assigned partition takes its records in order and processes them, mapping each
//! engine [`Disposition`] to commit, dead-letter or retry.

use super::partitions::{Shared, Tp};
use super::summary::bump;
use crate::engine::{
    panic_text, records_in_process, Backoff, DeadLetter, Disposition, HandlerSlots, RetryCause,
};
use crate::message::Message;
use bytes::Bytes;
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
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
    let concurrency = shared.settings.partition_concurrency;
    // Handlers of this partition at once; records in process (claimed, or storing an outcome)
    // may be more, see `records_in_process`.
    let slots = HandlerSlots::new(concurrency).within(&shared.handler_slots);
    let local = Arc::new(Semaphore::new(records_in_process(concurrency)));
    loop {
        let work = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            w = queue.recv() => match w {
                Some(w) => w,
                None => break,
            },
        };
        shared.dequeued(&tp, epoch);
        // Taking the partition permit before the global one keeps start order within the partition
        // and never holds a global slot while waiting for our own partition.
        let permits = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            p = async {
                let a = local.clone().acquire_owned().await?;
                let b = shared.global.clone().acquire_owned().await?;
                Ok::<_, tokio::sync::AcquireError>((a, b))
            } => p,
        };
        let Ok(permits) = permits else { break };
        in_flight.fetch_add(1, Ordering::AcqRel);
        shared.active.fetch_add(1, Ordering::AcqRel);
        let (shared2, tp2, cancel2, in_flight2, slots2) = (
            shared.clone(),
            tp.clone(),
            cancel.clone(),
            in_flight.clone(),
            slots.clone(),
        );
        shared.runtime.spawn(async move {
            // Defence in depth (the engine already turns handler panics into retriable failures):
            // a panic must not end this task before it gives its permits and counts back (the
            // partition would never commit again and revocations would wait their full
            // timeout), nor mark the record finished unprocessed. The record is processed again
            // after a backoff, until it finishes or the partition is cancelled.
            let mut panics = 0u32;
            while let Err(panic) = AssertUnwindSafe(crate::traces::scope(process_one(
                &shared2,
                &tp2,
                epoch,
                work.clone(),
                &cancel2,
                &slots2,
            )))
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
                if sleep_or_cancel(DEAD_LETTER_BACKOFF.delay(panics), &cancel2).await {
                    bump(&shared2.stats.abandoned);
                    break;
                }
            }
            drop(permits);
            in_flight2.fetch_sub(1, Ordering::AcqRel);
            shared2.task_done();
        });
    }
}

/// Processes one record until it is finished (committable) or given up (shutdown, revocation).
async fn process_one(
    shared: &Shared,
    tp: &Tp,
    epoch: u64,
    work: Work,
    cancel: &CancellationToken,
    slots: &HandlerSlots,
) {
    // While set, this task counts as waiting for the store and keeps the partition paused.
    let mut store_wait = None;
    let finished = loop {
        if cancel.is_cancelled() {
            break false;
        }
        let d = shared
            .processor
            .process_with_slots(work.message.clone(), cancel, slots)
            .await;
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
            Disposition::Retry { after, cause } => {
                if store_down && store_wait.is_none() {
                    // Fail closed: fetch nothing more from this partition until the store is back,
                    // while the poll loop keeps the consumer in its group.
                    store_wait = Some(shared.wait_for_store(tp, epoch, &cause));
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
                crate::metrics::dead_letter_failed("kafka", shared.processor.scope());
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
