//! Group commit: concurrent `claim` (or `complete`) calls of one store share one `EVALSHA`.
//!
//! Redis spends most of a script call's server time on the call itself, not on the record, so
//! under concurrency one multi-key script call serves many operations for little more than the
//! price of one. Each operation kind has one background task: it waits for a request, takes
//! whatever other requests are *already* queued (no timer, so a lone request is sent at once and
//! light load sees no added latency), runs one `*_MANY` script over them and hands each caller its
//! own per-key reply. At most [`PIPELINE`] batches of a kind are on the wire at once; while they
//! are, new requests queue up and form the next batch, so batches grow with the load.
//!
//! A failed call (connection, protocol, timeout) fails every request of the batch, each with its
//! own error value; a corrupt record fails only its own key, because the script answers per key.
//! A caller that gave up (timeout, dropped future) is skipped if its request is still queued, and
//! a batch stops waiting at the latest deadline of its callers, so nothing is sent on behalf of a
//! caller that was already told it timed out (as with a dropped single call). The task ends when
//! the store's last clone is dropped.

use super::map_error;
use super::reply::bad;
use crate::store::StoreError;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::ConnectionManager;
use redis::{Script, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Queued requests per operation kind before callers wait to enqueue (they stay bounded by the
/// operation timeout).
const QUEUE: usize = 4096;
/// Batches of one kind on the wire at once. With one, the server idles while the client handles
/// an answer and sends the next batch; with a few, it stays busy and batches still grow.
const PIPELINE: usize = 2;
/// Argument bytes past which a batch stops taking queued requests, so large outcomes do not make
/// one huge command (a single request is always sent, whatever its size).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One queued operation: its Redis key, its script arguments, where to send its reply and when
/// its caller stops waiting.
struct Job {
    rkey: String,
    args: Vec<Bytes>,
    reply: oneshot::Sender<Result<Value, StoreError>>,
    deadline: Instant,
}

impl Job {
    fn bytes(&self) -> usize {
        self.rkey.len() + self.args.iter().map(Bytes::len).sum::<usize>()
    }

    /// The caller has gone (timed out, future dropped): sending its request is pointless.
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.deadline
    }
}

/// The sending side of one operation kind's batching task.
#[derive(Debug)]
pub(crate) struct Batcher {
    op: &'static str,
    tx: mpsc::Sender<Job>,
}

/// What the background task needs to run batches.
pub(crate) struct Worker {
    pub(crate) op: &'static str,
    /// The `*_MANY` script: `KEYS` in order, `args_per_key` arguments per key in `ARGV`.
    pub(crate) script: Script,
    pub(crate) args_per_key: usize,
    pub(crate) conn: ConnectionManager,
    pub(crate) max_batch: usize,
    pub(crate) timeout: Duration,
    /// Script calls sent, shared with the store (see `RedisStore::round_trips`).
    pub(crate) round_trips: Arc<AtomicU64>,
}

impl Batcher {
    /// Spawns `worker`'s task on the current Tokio runtime.
    pub(crate) fn spawn(worker: Worker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let op = worker.op;
        tokio::spawn(worker.run(rx));
        Self { op, tx }
    }

    /// Queues one operation and waits for its own reply. The caller bounds the wait by
    /// `deadline`; the task does not send the request after it.
    pub(crate) async fn call(
        &self,
        rkey: String,
        args: Vec<Bytes>,
        deadline: Instant,
    ) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable(self.op, "the batching task has stopped");
        self.tx
            .send(Job {
                rkey,
                args,
                reply,
                deadline,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut carried: Option<Job> = None;
        let mut running = FuturesUnordered::new();
        loop {
            // At the limit, calls queue up (and form a bigger batch) until a batch is answered.
            while running.len() >= PIPELINE {
                running.next().await;
            }
            let first = match carried.take() {
                Some(job) => job,
                None => tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => job,
                        // Every sender is gone: the store was dropped. Answer what is running.
                        None => {
                            while running.next().await.is_some() {}
                            return;
                        }
                    },
                    Some(()) = running.next(), if !running.is_empty() => continue,
                },
            };
            let mut size = first.bytes();
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                let Ok(job) = rx.try_recv() else { break };
                if job.abandoned() {
                    continue;
                }
                if size + job.bytes() > MAX_BATCH_BYTES {
                    carried = Some(job);
                    break;
                }
                size += job.bytes();
                batch.push(job);
            }
            batch.retain(|job| !job.abandoned());
            if !batch.is_empty() {
                running.push(self.execute(batch));
            }
        }
    }

    /// Runs one script call for `batch` and answers every job in it.
    async fn execute(&self, batch: Vec<Job>) {
        let mut inv = self.script.prepare_invoke();
        for job in &batch {
            inv.key(&job.rkey);
            debug_assert_eq!(job.args.len(), self.args_per_key);
            for arg in &job.args {
                inv.arg(&arg[..]);
            }
        }
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        // Past the last caller's deadline nobody waits for the answer. Stopping then (as a
        // dropped single call would) also means a call waiting for a reconnect is not sent later,
        // after its caller was told it timed out.
        let deadline = batch.iter().map(|job| job.deadline).max();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
        let result = tokio::time::timeout_at(deadline, inv.invoke_async::<Value>(&mut conn)).await;
        // Errors are not `Clone`: each caller gets its own value describing the same failure.
        let n = batch.len();
        match result {
            Ok(Ok(Value::Array(items))) if items.len() == n => {
                for (job, item) in batch.into_iter().zip(items) {
                    // The caller may have gone; its answer is simply not needed.
                    let _ = job.reply.send(Ok(item));
                }
            }
            Ok(Ok(other)) => {
                let what = format!("expected an array of {n} replies, got {other:?}");
                for job in batch {
                    let _ = job.reply.send(Err(bad(self.op, what.clone())));
                }
            }
            Ok(Err(e)) => {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(map_error(self.op, e.clone(), self.timeout)));
                }
            }
            Err(_) => {
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Timeout {
                        op: self.op,
                        after: self.timeout,
                    }));
                }
            }
        }
    }
}
