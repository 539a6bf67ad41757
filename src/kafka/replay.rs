//! Dead-letter topic replay for Kafka; the classification rules are in [`crate::replay`].
//!
//! A consumer in its own group (default `idemq-replay-<from>`) reads the dead-letter topic from its
//! committed position (the beginning the first time). For each record:
//!
//! - would run: produced to the target topic with the original record key, payload and headers
//!   (minus idemq's `x-idemq-*` dead-letter headers, plus `x-idemq-replayed: N`); once the broker
//!   confirmed the delivery, the record's offset is committed;
//! - would skip (completed): committed without producing;
//! - conflict, no key: not republished, counted as kept, and committed past. A Kafka topic cannot
//!   delete single records: the record stays in the dead-letter topic until its retention, and a
//!   consumer reading the topic from the beginning still sees it.
//!
//! A dry run classifies and commits nothing. Offsets are committed synchronously one record at a
//! time, so a run killed or failing midway (store error, delivery failure) resumes after the last
//! handled record; at worst one record is both republished and still uncommitted, and the consumer's
//! deduplication makes the second copy harmless. The end of the topic is "no record for
//! [`idle_timeout`](KafkaReplay::idle_timeout)": high watermarks are not used, as some brokers
//! report them wrongly.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idemq::kafka::KafkaReplay;
//! use idemq::replay::{Classifier, ReplayClass};
//! use idemq::{store, KeyConfig};
//!
//! let classifier = Classifier::new(store::connect("redis://127.0.0.1").await?, "orders", KeyConfig::default());
//! let report = KafkaReplay::new("localhost:9092", "orders.dlq", "orders", classifier)
//!     .dry_run(true)
//!     .run(|_progress| {})
//!     .await?;
//! println!("would run {}", report.count(ReplayClass::WouldRun));
//! # Ok(()) }
//! ```

use super::convert::{to_kafka_headers, to_message};
use super::error::KafkaReplayError;
use crate::engine::ConfigError;
use crate::replay::{replay_headers, Classifier, ReplayAction, ReplayReport};
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, RuntimeFlavor};
use tracing::warn;

/// Settings the replay owns: offsets move only when a record was handled.
const FIXED: [(&str, &str); 3] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
];

/// One replay run from a dead-letter topic to a topic.
pub struct KafkaReplay {
    bootstrap: String,
    from_topic: String,
    to_topic: String,
    classifier: Classifier,
    group: Option<String>,
    limit: Option<u64>,
    dry_run: bool,
    idle_timeout: Duration,
    join_timeout: Duration,
    delivery_timeout: Duration,
    settings: Vec<(String, String)>,
}

impl KafkaReplay {
    /// Replays from `from_topic` to `to_topic` on the cluster at `bootstrap`.
    pub fn new(
        bootstrap: impl Into<String>,
        from_topic: impl Into<String>,
        to_topic: impl Into<String>,
        classifier: Classifier,
    ) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            from_topic: from_topic.into(),
            to_topic: to_topic.into(),
            classifier,
            group: None,
            limit: None,
            dry_run: false,
            idle_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(30),
            delivery_timeout: Duration::from_secs(30),
            settings: Vec::new(),
        }
    }

    /// The consumer group whose committed offsets mark what was replayed (default
    /// `idemq-replay-<from>`). Runs with the same group continue where the last one stopped.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Examine at most `n` records.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Classify and count only; produce and commit nothing.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Stop after this long without a record: the end of the topic (default 5 s).
    pub fn idle_timeout(mut self, after: Duration) -> Self {
        self.idle_timeout = after;
        self
    }

    /// Fail if no partition is assigned within this long (default 30 s).
    pub fn join_timeout(mut self, after: Duration) -> Self {
        self.join_timeout = after;
        self
    }

    /// How long to wait for the broker to confirm a republished record (default 30 s).
    pub fn delivery_timeout(mut self, after: Duration) -> Self {
        self.delivery_timeout = after;
        self
    }

    /// A librdkafka setting for both the consumer and the producer (security settings, client
    /// id). Offset handling settings are ignored.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Runs the replay; `progress` sees the report after every record.
    pub async fn run(
        &self,
        progress: impl Fn(&ReplayReport),
    ) -> Result<ReplayReport, KafkaReplayError> {
        for (setting, topic) in [
            ("from_topic", &self.from_topic),
            ("to_topic", &self.to_topic),
        ] {
            if topic.is_empty() {
                return Err(ConfigError::missing(setting, "a topic name").into());
            }
        }
        if self.from_topic == self.to_topic {
            return Err(ConfigError::conflict(
                "to_topic",
                "from_topic",
                "republishing to the dead-letter topic itself would loop",
            )
            .into());
        }
        let consumer = self.consumer()?;
        let producer = self.producer()?;
        let result = self.drain(&consumer, &producer, &progress).await;
        blocking(|| consumer.unsubscribe());
        result
    }

    fn consumer(&self) -> Result<StreamConsumer, KafkaReplayError> {
        let group = self
            .group
            .clone()
            .unwrap_or_else(|| format!("idemq-replay-{}", self.from_topic));
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            // Group joins stall on some brokers (Tansu) with the default session timeout.
            .set("session.timeout.ms", "6000");
        for (k, v) in &self.settings {
            if FIXED.iter().any(|(f, _)| f == k) {
                warn!(setting = %k, "ignored: the replay commits offsets itself");
                continue;
            }
            cc.set(k, v);
        }
        for (k, v) in FIXED {
            cc.set(k, v);
        }
        let consumer: StreamConsumer = cc.create().map_err(config)?;
        consumer
            .subscribe(&[&self.from_topic])
            .map_err(broker("subscribe"))?;
        Ok(consumer)
    }

    fn producer(&self) -> Result<FutureProducer, KafkaReplayError> {
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            );
        for (k, v) in &self.settings {
            if !FIXED.iter().any(|(f, _)| f == k) && k != "session.timeout.ms" {
                pc.set(k, v);
            }
        }
        pc.create().map_err(config)
    }

    async fn drain(
        &self,
        consumer: &StreamConsumer,
        producer: &FutureProducer,
        progress: &impl Fn(&ReplayReport),
    ) -> Result<ReplayReport, KafkaReplayError> {
        let mut report = ReplayReport {
            dry_run: self.dry_run,
            ..ReplayReport::default()
        };
        let started = Instant::now();
        let mut last_record = Instant::now();
        let mut assigned = false;
        let mut last_error: Option<KafkaError> = None;
        // Short polls, so the end of the topic and a failed join are noticed on time.
        let step = Duration::from_millis(200).min(self.idle_timeout);
        while self.limit.is_none_or(|l| report.examined < l) {
            let record = match tokio::time::timeout(step, consumer.recv()).await {
                Ok(Ok(record)) => record,
                waited => {
                    if let Ok(Err(err)) = waited {
                        warn!(%err, topic = %self.from_topic, "consumer error");
                        last_error = Some(err);
                    }
                    if assigned {
                        if last_record.elapsed() >= self.idle_timeout {
                            break;
                        }
                    } else if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                        assigned = true;
                        last_record = Instant::now();
                    } else if started.elapsed() >= self.join_timeout {
                        return Err(match last_error {
                            Some(source) => KafkaReplayError::Broker {
                                during: "group join",
                                source,
                            },
                            None => KafkaReplayError::NotAssigned {
                                topic: self.from_topic.clone(),
                                after: self.join_timeout,
                            },
                        });
                    }
                    continue;
                }
            };
            assigned = true;
            last_record = Instant::now();
            let message = to_message(&record);
            let kafka_key = record.key().map(Bytes::copy_from_slice);
            let null_payload = record.payload().is_none();
            let (partition, offset) = (record.partition(), record.offset());
            drop(record);

            let classified = self.classifier.classify(&message).await?;
            report.note(&classified);
            let action = if self.dry_run {
                ReplayAction::Keep
            } else {
                classified.class.action()
            };
            match action {
                ReplayAction::Republish => {
                    let headers = replay_headers(&message.headers);
                    let mut out: FutureRecord<'_, [u8], [u8]> =
                        FutureRecord::to(&self.to_topic).headers(to_kafka_headers(&headers));
                    if !null_payload {
                        out = out.payload(message.payload.as_ref());
                    }
                    if let Some(key) = &kafka_key {
                        out = out.key(key.as_ref());
                    }
                    self.deliver(producer, out).await?;
                    report.republished += 1;
                }
                ReplayAction::Remove => report.removed += 1,
                ReplayAction::Keep => report.kept += 1,
            }
            if !self.dry_run {
                // Past a kept record too: it stays in the topic, and the next run starts after it.
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&self.from_topic, partition, Offset::Offset(offset + 1))
                    .map_err(broker("commit"))?;
                blocking(|| consumer.commit(&tpl, CommitMode::Sync)).map_err(broker("commit"))?;
            }
            report.last_handled = Some(format!("{}[{partition}]@{offset}", self.from_topic));
            progress(&report);
        }
        Ok(report)
    }

    async fn deliver(
        &self,
        producer: &FutureProducer,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<(), KafkaReplayError> {
        // `message.timeout.ms` bounds the delivery inside librdkafka; the outer timeout is a
        // safety net against a wedged producer.
        let send = producer.send(record, Timeout::After(self.delivery_timeout));
        match tokio::time::timeout(self.delivery_timeout + Duration::from_secs(5), send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(KafkaReplayError::Publish {
                topic: self.to_topic.clone(),
                source,
            }),
            Err(_) => Err(KafkaReplayError::Timeout {
                topic: self.to_topic.clone(),
                after: self.delivery_timeout,
            }),
        }
    }
}

fn config(err: KafkaError) -> KafkaReplayError {
    KafkaReplayError::Client(err)
}

fn broker(during: &'static str) -> impl Fn(KafkaError) -> KafkaReplayError {
    move |source| KafkaReplayError::Broker { during, source }
}

/// Runs a blocking librdkafka call without stalling other tasks of a multi-threaded runtime (on a
/// current-thread runtime nothing else would run meanwhile anyway).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
