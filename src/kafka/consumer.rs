//! [`IdempotentConsumer`]: the poll loop, commits and graceful shutdown.

use super::config::LoopSettings;
use super::convert::to_message;
use super::dead_letter::DeadLetterProducer;
use super::error::KafkaConsumerError;
use super::partitions::Shared;
use super::summary::{ConsumerSummary, StatsHandle};
use super::worker::Work;
use super::IdemqContext;
use crate::engine::Processor;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::producer::FutureProducer;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What [`KafkaConsumerBuilder::build`](super::KafkaConsumerBuilder::build) resolved.
pub(crate) struct ClientSettings {
    pub(crate) bootstrap: String,
    pub(crate) group: String,
    pub(crate) consumer_settings: Vec<(String, String)>,
    pub(crate) producer_settings: Vec<(String, String)>,
    pub(crate) processor: Arc<dyn Processor>,
    pub(crate) settings: LoopSettings,
}

/// A Kafka consumer that runs each idempotency key's handler at most once.
///
/// Built with [`KafkaConsumerBuilder`](super::KafkaConsumerBuilder); run it with
/// [`run`](Self::run) until the cancellation token fires.
pub struct IdempotentConsumer {
    consumer: StreamConsumer<IdemqContext>,
    shared: Arc<Shared>,
    group: String,
}

impl std::fmt::Debug for IdempotentConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentConsumer")
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

impl IdempotentConsumer {
    pub(crate) fn create(c: ClientSettings) -> Result<Self, KafkaConsumerError> {
        let runtime = Handle::try_current().map_err(|_| {
            KafkaConsumerError::Config("build the consumer inside a Tokio runtime".into())
        })?;
        let dead_letter = match &c.settings.dead_letter_topic {
            Some(topic) => {
                let mut pc = ClientConfig::new();
                pc.set("bootstrap.servers", &c.bootstrap)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
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
        for (k, v) in &c.consumer_settings {
            if FIXED.iter().any(|(f, _)| f == k) {
                warn!(setting = %k, "ignored: idemq commits offsets itself");
                continue;
            }
            cc.set(k, v);
        }
        for (k, v) in FIXED {
            cc.set(k, v);
        }
        let shared = Arc::new(Shared::new(c.settings, c.processor, dead_letter, runtime));
        let consumer: StreamConsumer<IdemqContext> = cc.create_with_context(IdemqContext {
            shared: shared.clone(),
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
        StatsHandle(self.shared.stats.clone())
    }

    /// The scope keys are claimed in.
    pub fn scope(&self) -> &str {
        self.shared.processor.scope()
    }

    /// [`run`](Self::run) until Ctrl-C (SIGINT) or `stop`, whichever comes first.
    pub async fn run_until_ctrl_c(self, stop: CancellationToken) -> ConsumerSummary {
        let on_signal = stop.clone();
        let watcher = tokio::spawn(async move {
            tokio::select! {
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => {
                        info!("Ctrl-C: shutting down");
                        on_signal.cancel();
                    }
                    // No signal handler: keep running until `stop`.
                    Err(err) => warn!(%err, "cannot listen for Ctrl-C"),
                },
                _ = on_signal.cancelled() => {}
            }
        });
        let summary = self.run(stop).await;
        watcher.abort();
        summary
    }

    /// Consumes until `stop` is cancelled, then shuts down gracefully: stops fetching, lets
    /// in-flight messages finish (bounded by the shutdown timeout; handlers get the engine's
    /// shutdown grace), commits what finished, and leaves the group. Returns what it did.
    pub async fn run(self, stop: CancellationToken) -> ConsumerSummary {
        let IdempotentConsumer {
            consumer, shared, ..
        } = self;
        let mut tick = tokio::time::interval(shared.settings.commit_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        info!(topics = ?shared.settings.topics, scope = shared.processor.scope(), "idempotent consumer started");
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = shared.pauses_changed.notified() => shared.apply_pauses(&consumer),
                _ = shared.commit_wanted.notified() => flush(&shared, &consumer),
                _ = tick.tick() => flush(&shared, &consumer),
                received = consumer.recv() => match received {
                    Ok(record) => dispatch(&shared, &record),
                    Err(err) => {
                        warn!(%err, "kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
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
        let summary = shared.stats.snapshot();
        info!(?summary, "idempotent consumer stopped");
        summary
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
