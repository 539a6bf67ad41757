//! [`KafkaConsumer`]: the poll loop, commits and graceful shutdown.

use super::config::LoopSettings;
use super::convert::to_message;
use super::dead_letter::DeadLetterProducer;
use super::error::KafkaConsumerError;
use super::hooks::KafkaHooks;
use super::partitions::Shared;
use super::worker::Work;
use super::IdemqContext;
use crate::engine::Processor;
use crate::health::HealthHandle;
use crate::stats::{ConsumerStats, StatsHandle};
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::FutureProducer;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// What [`KafkaConsumerBuilder::build`](super::KafkaConsumerBuilder::build) resolved.
pub(crate) struct ClientSettings {
    pub(crate) bootstrap: String,
    pub(crate) group: String,
    pub(crate) consumer_settings: Vec<(String, String)>,
    pub(crate) producer_settings: Vec<(String, String)>,
    pub(crate) processor: Arc<dyn Processor>,
    pub(crate) settings: LoopSettings,
    pub(crate) hooks: Option<Arc<dyn KafkaHooks>>,
}

/// A Kafka consumer that runs each idempotency key's handler at most once.
///
/// Build one with [`KafkaConsumer::builder`], then [`run`](Self::run) it until a cancellation
/// token fires, or [`run_until_signal`](Self::run_until_signal).
pub struct KafkaConsumer {
    consumer: StreamConsumer<IdemqContext>,
    shared: Arc<Shared>,
    group: String,
}

/// The Kafka consumer's former name, kept for one release.
#[deprecated(note = "renamed to KafkaConsumer")]
pub type IdempotentConsumer = KafkaConsumer;

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("topics", &self.shared.settings.topics)
            .field("scope", &self.shared.processor.scope())
            .finish_non_exhaustive()
    }
}

/// Settings idemq owns: offsets are stored and committed only by idemq.
const FIXED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

impl KafkaConsumer {
    /// Starts a builder; see [`KafkaConsumerBuilder`](super::KafkaConsumerBuilder) for the
    /// settings and an example.
    pub fn builder() -> super::KafkaConsumerBuilder {
        super::KafkaConsumerBuilder::new()
    }

    pub(crate) fn create(c: ClientSettings) -> Result<Self, KafkaConsumerError> {
        let runtime = Handle::try_current().map_err(|_| KafkaConsumerError::NoRuntime)?;
        let dead_letter = match &c.settings.dead_letter_topic {
            Some(topic) => {
                let mut pc = ClientConfig::new();
                pc.set("bootstrap.servers", &c.bootstrap)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("message.max.bytes", super::dead_letter::PRODUCER_MAX_BYTES)
                    .set(
                        "message.timeout.ms",
                        c.settings.dead_letter_timeout.as_millis().to_string(),
                    );
                for (k, v) in &c.producer_settings {
                    pc.set(k, v);
                }
                let producer: FutureProducer = pc.create()?;
                Some(DeadLetterProducer::new(
                    producer,
                    topic.clone(),
                    c.settings.dead_letter_timeout,
                ))
            }
            None => None,
        };
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &c.bootstrap)
            .set("group.id", &c.group)
            .set("auto.offset.reset", "earliest");
        // `build` refused any override of a fixed setting, so these are the user's own.
        for (k, v) in &c.consumer_settings {
            cc.set(k, v);
        }
        for (k, v) in FIXED {
            cc.set(k, v);
        }
        let shared = Arc::new(Shared::new(c.settings, c.processor, dead_letter, runtime));
        let consumer: StreamConsumer<IdemqContext> = cc.create_with_context(IdemqContext {
            shared: shared.clone(),
            hooks: c.hooks,
        })?;
        let topics: Vec<&str> = shared.settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer,
            shared,
            group: c.group,
        })
    }

    /// Live counters, readable while [`run`](Self::run) is going.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle::new(self.shared.stats.clone())
    }

    /// Health for liveness and readiness probes: running, store reachable, partitions assigned,
    /// intake paused and why; see [`crate::health`] for the rules. Take it before
    /// [`run`](Self::run); it stays valid (reporting `stopped`) after the consumer is gone.
    pub fn health(&self) -> HealthHandle {
        HealthHandle::new(Arc::new(super::health::Probe::new(&self.shared)))
    }

    /// The scope keys are claimed in.
    pub fn scope(&self) -> &str {
        self.shared.processor.scope()
    }

    /// [`run`](Self::run) until the process receives SIGINT (Ctrl-C) or SIGTERM (Kubernetes,
    /// systemd, `docker stop`); see [`crate::signal::shutdown_signal`]. The shutdown is the same
    /// graceful one as after a cancelled token. To stop on a token as well, call
    /// [`crate::signal::cancel_on_signal`] with it and [`run`](Self::run).
    pub async fn run_until_signal(self) -> Result<ConsumerStats, KafkaConsumerError> {
        let stop = CancellationToken::new();
        let watcher = crate::signal::cancel_on_signal(stop.clone());
        let stats = self.run(stop).await;
        watcher.abort();
        stats
    }

    /// [`run`](Self::run) until SIGINT, SIGTERM or `stop`, whichever comes first.
    #[deprecated(
        note = "use run_until_signal(), or signal::cancel_on_signal(token) with run(token)"
    )]
    pub async fn run_until_ctrl_c(
        self,
        stop: CancellationToken,
    ) -> Result<ConsumerStats, KafkaConsumerError> {
        let watcher = crate::signal::cancel_on_signal(stop.clone());
        let stats = self.run(stop).await;
        watcher.abort();
        stats
    }

    /// Consumes until `stop` is cancelled, then shuts down gracefully: stops fetching, lets
    /// in-flight messages finish (bounded by the shutdown timeout; handlers get the engine's
    /// shutdown grace), commits what finished, and leaves the group. Returns what it did.
    ///
    /// Returns an error, after the same graceful shutdown, when the client cannot go on: a
    /// librdkafka fatal error (at once), or an authentication, authorization or unknown-topic
    /// error (e.g. a topic that does not exist with `allow.auto.create.topics=false`) after which
    /// the consumer went [`FATAL_AFTER`] without a record and without a partition (for a missing
    /// topic: and the topic is still missing then).
    pub async fn run(self, stop: CancellationToken) -> Result<ConsumerStats, KafkaConsumerError> {
        let KafkaConsumer {
            consumer, shared, ..
        } = self;
        let _running = shared.health.running();
        crate::metrics::describe();
        let mut tick = tokio::time::interval(shared.settings.commit_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        info!(topics = ?shared.settings.topics, scope = shared.processor.scope(), "idempotent consumer started");
        let mut errors = ClientErrors::default();
        let mut unassigned = UnassignedWatch::default();
        let fatal = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break None,
                _ = shared.pauses_changed.notified() => shared.apply_pauses(&consumer),
                _ = shared.commit_wanted.notified() => flush(&shared, &consumer),
                _ = tick.tick() => {
                    // Liveness: the loop turns at least once per commit interval, records or not.
                    shared.health.beat();
                    flush(&shared, &consumer);
                    unassigned.check(&shared);
                    if let Some(err) = errors.fatal(&shared, &consumer) {
                        break Some(err);
                    }
                }
                received = consumer.recv() => match received {
                    Ok(record) => {
                        errors.clear();
                        dispatch(&shared, &record);
                    }
                    Err(err) => {
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            error!(%err, ?code, %reason, "fatal kafka client error; stopping");
                            break Some(err);
                        }
                        errors.note(err);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        };
        shared.health.stopping();
        info!("shutting down: finishing in-flight messages");
        shared.shutdown.cancel();
        let deadline = Instant::now() + shared.settings.shutdown_timeout;
        while shared.active.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::select! {
                _ = shared.idle.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let left = shared.active.load(Ordering::Acquire);
        if left > 0 {
            warn!(
                left,
                "shutdown timeout: messages still in flight stay uncommitted and are redelivered"
            );
        }
        shared.commit_ready(&consumer, None, CommitMode::Sync);
        // Closing leaves the group (librdkafka blocks until it is done), which runs the revocation
        // callback once more.
        close(consumer);
        // The gauges describe a running consumer; a stopped one owns and pauses nothing (the
        // revocation on close may not run, e.g. after a fatal error).
        crate::metrics::kafka_assigned(shared.processor.scope(), 0);
        crate::metrics::kafka_paused(shared.processor.scope(), 0);
        let summary = shared.stats.snapshot();
        info!(?summary, "idempotent consumer stopped");
        match fatal {
            None => Ok(summary),
            Some(err) => Err(KafkaConsumerError::Client(err)),
        }
    }
}

/// How long after an authentication, authorization or unknown-topic error a consumer without any
/// partition and without records gives up: [`KafkaConsumer::run`] then returns the error.
pub const FATAL_AFTER: Duration = Duration::from_secs(10);

/// How often a repeated client error is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Consumer errors seen since the last record: logged once per [`ERROR_LOG_EVERY`], and turned
/// into a fatal error when they cannot heal by themselves.
#[derive(Default)]
struct ClientErrors {
    /// The first report of an error that may be permanent, since the last record or assignment.
    permanent: Option<(Instant, KafkaError)>,
    last_logged: Option<(String, Instant)>,
    repeats: u64,
}

impl ClientErrors {
    /// Logs `err`, throttled (librdkafka may report the same error on every poll).
    fn note(&mut self, err: KafkaError) {
        let text = err.to_string();
        match &self.last_logged {
            Some((t, at)) if *t == text && at.elapsed() < ERROR_LOG_EVERY => self.repeats += 1,
            _ => {
                warn!(%err, repeated = self.repeats, "kafka consumer error");
                self.last_logged = Some((text, Instant::now()));
                self.repeats = 0;
            }
        }
        let permanent = matches!(
            err.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
            )
        );
        if permanent && self.permanent.is_none() {
            self.permanent = Some((Instant::now(), err));
        }
    }

    /// A record arrived or a partition was assigned: whatever was wrong healed.
    fn clear(&mut self) {
        self.permanent = None;
    }

    /// The error to stop with: a permanent-looking error reported [`FATAL_AFTER`] ago or more,
    /// with no record and no partition since. A missing topic must still be missing.
    fn fatal(
        &mut self,
        shared: &Shared,
        consumer: &StreamConsumer<IdemqContext>,
    ) -> Option<KafkaError> {
        if shared.stats.assigned.load(Ordering::Relaxed) > 0 {
            self.permanent = None;
        }
        let (since, err) = self.permanent.as_ref()?;
        if since.elapsed() < FATAL_AFTER {
            return None;
        }
        let unknown_topic = matches!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        );
        if unknown_topic && !topic_missing(shared, consumer) {
            self.permanent = None;
            return None;
        }
        let (_, err) = self.permanent.take()?;
        error!(%err, after = ?FATAL_AFTER, "kafka client error persists; stopping");
        Some(err)
    }
}

/// Whether a subscribed topic is missing from the cluster's metadata (asked once more, so a
/// topic created meanwhile is not mistaken for a missing one).
fn topic_missing(shared: &Shared, consumer: &StreamConsumer<IdemqContext>) -> bool {
    let ask = || {
        shared.settings.topics.iter().any(|t| {
            match consumer.fetch_metadata(Some(t), Duration::from_secs(5)) {
                Ok(md) => md.topics().iter().any(|mt| {
                    mt.name() == t && (mt.error().is_some() || mt.partitions().is_empty())
                }),
                // No answer: not proof that the topic is missing.
                Err(_) => false,
            }
        })
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) | Err(_) => ask(),
        Ok(_) => tokio::task::block_in_place(ask),
    }
}

/// How long a consumer may hold no partition before it warns, and how often it warns again.
const UNASSIGNED_WARNING: Duration = Duration::from_secs(30);

/// Warns while the consumer holds no partition, so a member left out of a stuck rebalance is
/// never silent.
#[derive(Default)]
struct UnassignedWatch {
    warned_at: Option<Duration>,
}

impl UnassignedWatch {
    fn check(&mut self, shared: &Shared) {
        let Some(none_for) = shared.stats.unassigned_for() else {
            self.warned_at = None;
            return;
        };
        let due = match self.warned_at {
            None => none_for >= UNASSIGNED_WARNING,
            Some(last) => none_for >= last + UNASSIGNED_WARNING,
        };
        if due {
            warn!(
                ?none_for,
                group_topics = ?shared.settings.topics,
                "this consumer has held no partition for a while; unless its group has more members than partitions, the group's rebalance is stuck"
            );
            self.warned_at = Some(none_for);
        }
    }
}

/// A batched commit. Commits are synchronous so that a refused commit is noticed and retried with
/// the next flush (librdkafka reports async commit results through an event that is not always
/// delivered); on the multi-thread runtime the short wait does not hold up the processing tasks.
fn flush(shared: &Shared, consumer: &StreamConsumer<IdemqContext>) {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) | Err(_) => {
            shared.commit_ready(consumer, None, CommitMode::Async)
        }
        Ok(_) => {
            tokio::task::block_in_place(|| shared.commit_ready(consumer, None, CommitMode::Sync))
        }
    }
}

fn close(consumer: StreamConsumer<IdemqContext>) {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) | Err(_) => drop(consumer),
        Ok(_) => tokio::task::block_in_place(move || drop(consumer)),
    }
}

/// Copies a record out of librdkafka's buffer and hands it to its partition.
fn dispatch(shared: &Shared, record: &BorrowedMessage<'_>) {
    let message = to_message(record);
    let (topic, partition, offset) = (
        record.topic().to_string(),
        record.partition(),
        record.offset(),
    );
    let work = Work {
        message: Arc::new(message),
        kafka_key: record.key().map(Bytes::copy_from_slice),
        offset,
    };
    shared.dispatch((topic, partition), work);
}
