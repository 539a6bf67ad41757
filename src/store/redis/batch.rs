//! Group commit: concurrent `claim` (or `complete`) calls of one store share one `EVALSHA`.
//!
//! Redis spends most of a script call's server time on the call itself, not on the record, so
//! under concurrency one multi-key script call serves many operations for little more than the
//! price of one. Each operation kind has one background task: it waits for a request, takes
//! whatever other requests are *already* queued (no timer, so a lone request is sent at once and
//! light load sees no added latency), runs one `*_MANY` script over them and hands each caller its
//! own per-key reply. A caller that finds no other call of its kind queued or on the wire
//! ([`Batcher::start`]) sends its call itself: the task would send it alone anyway, and the hop to
//! the task and back is a visible share of a sequential caller's latency. At most [`PIPELINE`] batches of a kind are on the wire at once; while they
//! are, new requests queue up and form the next batch, so batches grow with the load.
//!
//! A failed call (connection, protocol, timeout) fails every request of the batch, each with its
//! own error value; a corrupt record fails only its own key, because the script answers per key.
//! Callers keep no timer of their own (one per operation showed in the consumer profile); the task
//! answers by each caller's deadline instead: a request still queued at its deadline is answered
//! [`StoreError::Timeout`] and not sent, a batch on the wire answers each of its callers
//! `Timeout` as that caller's deadline passes, and once all are answered it stops waiting, so
//! nothing is sent on behalf of a caller that was already told it timed out (as with a dropped
//! single call). A request whose caller has gone (dropped future) is skipped. The task ends when
//! the store's last clone is dropped.
//!
//! On a Redis Cluster a script call may only touch keys of one slot, so a batch is split by slot
//! (one call per slot, all sent at once), and with `WAIT` durability each call carries its `WAIT`.

use super::conn::{self, Conn, Durability};
use super::reply::bad;
use crate::store::StoreError;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use redis::cluster_routing::Route;
use redis::{Cmd, Script, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    reply: Answer,
    deadline: Instant,
}

/// Where one caller's answer goes.
type Answer = oneshot::Sender<Result<Value, StoreError>>;

impl Job {
    fn bytes(&self) -> usize {
        self.rkey.len() + self.args.iter().map(Bytes::len).sum::<usize>()
    }

    /// The caller has gone (future dropped) or its deadline passed by `now`: sending its request
    /// is pointless.
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || now >= self.deadline
    }
}

/// The sending side of one operation kind's batching task.
#[derive(Debug)]
pub(crate) struct Batcher {
    op: &'static str,
    timeout: Duration,
    tx: mpsc::Sender<Job>,
    /// Calls of this kind started and not yet answered, queued, on the wire or sent directly.
    busy: AtomicUsize,
}

/// One call of a kind, from [`Batcher::start`] until it is dropped.
pub(crate) struct Turn<'a> {
    busy: &'a AtomicUsize,
    alone: bool,
}

impl Turn<'_> {
    /// No other call of this kind was queued, on the wire or being sent when this one started:
    /// the batching task would send it alone and at once, so the caller may send it itself and
    /// save the hop to the task and back (a sequential caller's every call).
    pub(crate) fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the background task needs to run batches.
pub(crate) struct Worker {
    pub(crate) op: &'static str,
    /// The `*_MANY` script: `KEYS` in order, `args_per_key` arguments per key in `ARGV`.
    pub(crate) script: Script,
    pub(crate) args_per_key: usize,
    /// Reply items per key: the script answers one flat array, `reply_width` items per key.
    pub(crate) reply_width: usize,
    pub(crate) conn: Conn,
    pub(crate) max_batch: usize,
    pub(crate) timeout: Duration,
    /// Script calls sent, shared with the store (see `RedisStore::round_trips`).
    pub(crate) round_trips: Arc<AtomicU64>,
    /// `WAIT` for replicas after each script call, when configured.
    pub(crate) durability: Option<Durability>,
}

impl Batcher {
    /// Spawns `worker`'s task on the current Tokio runtime.
    pub(crate) fn spawn(worker: Worker) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (op, timeout) = (worker.op, worker.timeout);
        tokio::spawn(worker.run(rx));
        Self {
            op,
            timeout,
            tx,
            busy: AtomicUsize::new(0),
        }
    }

    /// Counts one call of this kind as started until the returned turn is dropped.
    pub(crate) fn start(&self) -> Turn<'_> {
        let before = self.busy.fetch_add(1, Ordering::AcqRel);
        Turn {
            busy: &self.busy,
            alone: before == 0,
        }
    }

    /// Queues one operation and waits for its own reply, which comes by `deadline`: the task
    /// answers [`StoreError::Timeout`] at the deadline, whether the request is still queued or
    /// already sent, so the common path needs no timer of its own.
    pub(crate) async fn call(
        &self,
        rkey: String,
        args: Vec<Bytes>,
        deadline: Instant,
    ) -> Result<Value, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::unavailable(self.op, "the batching task has stopped");
        let job = Job {
            rkey,
            args,
            reply,
            deadline,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(stopped()),
            // A full queue is the one wait the task cannot bound for us. Boxed: rare, and its
            // future would otherwise enlarge every caller's.
            Err(mpsc::error::TrySendError::Full(job)) => {
                match Box::pin(tokio::time::timeout_at(deadline, self.tx.send(job))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(stopped()),
                    Err(_) => return Err(timed_out(self.op, self.timeout)),
                }
            }
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// What a caller is told when its deadline passes before its answer arrives.
fn timed_out(op: &'static str, after: Duration) -> StoreError {
    StoreError::Timeout { op, after }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut carried: Option<Job> = None;
        let mut running = FuturesUnordered::new();
        loop {
            // At the limit, calls queue up (and form a bigger batch) until a batch is answered.
            while running.len() >= self.pipeline() {
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
            // One clock reading per batch: the jobs are checked against it as they are taken.
            let now = Instant::now();
            if first.abandoned(now) {
                self.expire(first.reply);
                continue;
            }
            let mut size = first.bytes();
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                let Ok(job) = rx.try_recv() else { break };
                if job.abandoned(now) {
                    self.expire(job.reply);
                    continue;
                }
                if size + job.bytes() > MAX_BATCH_BYTES {
                    carried = Some(job);
                    break;
                }
                size += job.bytes();
                batch.push(job);
            }
            for group in self.by_slot(batch) {
                running.push(self.execute(group));
            }
        }
    }

    /// Answers a caller whose deadline has passed (or who has gone, and reads no answer): its
    /// request is not sent, or its answer is no longer awaited.
    fn expire(&self, reply: Answer) {
        let _ = reply.send(Err(timed_out(self.op, self.timeout)));
    }

    /// Script calls of this kind on the wire at once before requests queue up: [`PIPELINE`], or
    /// on a Cluster, where a batch becomes one call per slot, that many batches' worth of calls,
    /// so one slow node does not hold up the calls to the others.
    fn pipeline(&self) -> usize {
        if self.conn.is_cluster() {
            PIPELINE * self.max_batch
        } else {
            PIPELINE
        }
    }

    /// `batch` as one script call, or on a Cluster as one call per hash slot (a script may only
    /// touch keys of one slot); the cluster client pipelines the calls bound for one node.
    fn by_slot(&self, batch: Vec<Job>) -> Vec<Vec<Job>> {
        if !self.conn.is_cluster() || batch.len() == 1 {
            return vec![batch];
        }
        let mut groups: HashMap<Route, Vec<Job>> = HashMap::new();
        for job in batch {
            groups.entry(conn::route(&job.rkey)).or_default().push(job);
        }
        groups.into_values().collect()
    }

    /// Runs one script call for `batch` and answers every job in it, each by its own deadline.
    async fn execute(&self, batch: Vec<Job>) {
        // The command is written straight into one buffer: `ScriptInvocation` would copy every key
        // and argument into its own vector first, then again into the command.
        let args = 3 + batch.len() * (1 + self.args_per_key);
        let bytes: usize = batch.iter().map(Job::bytes).sum();
        let mut cmd = Cmd::with_capacity(args, bytes + 64);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(batch.len());
        for job in &batch {
            cmd.arg(job.rkey.as_bytes());
        }
        for job in &batch {
            debug_assert_eq!(job.args.len(), self.args_per_key);
            for arg in &job.args {
                cmd.arg(&arg[..]);
            }
        }
        // Per caller: its deadline and, until it is answered, where its answer goes.
        let mut waiting: Vec<(Instant, Option<Answer>)> = batch
            .into_iter()
            .map(|job| (job.deadline, Some(job.reply)))
            .collect();
        let mut conn = self.conn.clone();
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        // Reloads the script on NOSCRIPT (restart, failover, new node, `SCRIPT FLUSH`) and, when
        // configured, waits for replicas.
        let call = conn::eval(
            &mut conn,
            self.op,
            &self.script,
            &cmd,
            self.durability,
            self.timeout,
        );
        tokio::pin!(call);
        // Callers have no timers of their own: each one whose deadline passes is answered
        // `Timeout` while the call is still out. Once all are, the call is dropped, so a call
        // waiting for a reconnect is not sent later on behalf of callers told it timed out.
        let result = loop {
            let next = waiting
                .iter()
                .filter(|(_, reply)| reply.is_some())
                .map(|(deadline, _)| *deadline)
                .min();
            let Some(next) = next else { return };
            tokio::select! {
                result = &mut call => break result,
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    let due = waiting.iter_mut().filter(|(deadline, _)| *deadline <= now);
                    due.filter_map(|(_, reply)| reply.take()).for_each(|r| self.expire(r));
                }
            }
        };
        let n = waiting.len();
        let replies = waiting.into_iter().map(|(_, reply)| reply);
        // Errors are not `Clone`: each caller gets its own value describing the same failure.
        // A caller that has gone simply does not need its answer.
        match result {
            Ok(Value::Array(items)) if items.len() == n * self.reply_width => {
                // Each caller gets its own items as the array the single-key script answers.
                let mut items = items.into_iter();
                for reply in replies {
                    let own: Vec<Value> = items.by_ref().take(self.reply_width).collect();
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(Value::Array(own)));
                    }
                }
            }
            Ok(other) => {
                let what = format!(
                    "expected an array of {} items ({n} replies), got {other:?}",
                    n * self.reply_width
                );
                for reply in replies.flatten() {
                    let _ = reply.send(Err(bad(self.op, what.clone())));
                }
            }
            Err(e) => {
                // `StoreError` is not `Clone`: each caller gets an error of the same kind with the
                // same text.
                let text = match &e {
                    StoreError::Unavailable { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                for reply in replies.flatten() {
                    let err = match &e {
                        StoreError::Timeout { op, after } => {
                            StoreError::Timeout { op, after: *after }
                        }
                        StoreError::Corrupt { key, detail } => StoreError::Corrupt {
                            key: key.clone(),
                            detail: detail.clone(),
                        },
                        _ => StoreError::unavailable(self.op, text.clone()),
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}
