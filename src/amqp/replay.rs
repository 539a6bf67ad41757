//! Dead-letter queue replay for RabbitMQ; the classification rules are in [`crate::replay`].
//!
//! Messages are fetched one at a time with `basic.get`. A message to republish is published to the
//! target with publisher confirms and acked from the dead-letter queue only after the confirm.
//! Messages kept (conflicts, no key, and every message of a dry run) stay unacknowledged until the
//! end, so `basic.get` does not hand them out again, and are then requeued.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use idemq::amqp::AmqpReplay;
//! use idemq::replay::Classifier;
//! use idemq::{store, KeyConfig};
//!
//! let classifier = Classifier::new(store::connect("redis://127.0.0.1").await?, "orders", KeyConfig::default());
//! let report = AmqpReplay::new("amqp://guest:guest@127.0.0.1:5672/%2f", "orders.dlq", "", Some("orders".into()), classifier)
//!     .dry_run(true)
//!     .run(|_progress| {})
//!     .await?;
//! println!("would run {}", report.count(idemq::replay::ReplayClass::WouldRun));
//! # Ok(()) }
//! ```

use super::connection::short;
use super::convert::to_message;
use super::error::AmqpError;
use super::publish::Publisher;
use crate::headers;
use crate::replay::{
    is_dead_letter_header, next_replay_count, Classifier, ReplayAction, ReplayReport,
};
use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Connection, ConnectionProperties};
use std::sync::Arc;
use tracing::warn;

/// One replay run from a dead-letter queue to an exchange.
pub struct AmqpReplay {
    url: String,
    from_queue: String,
    to_exchange: String,
    to_routing_key: Option<String>,
    classifier: Classifier,
    limit: Option<u64>,
    dry_run: bool,
}

impl AmqpReplay {
    /// Replays from `from_queue` to `to_exchange` (`""` is the default exchange). Without a routing
    /// key, each message goes back with the routing key it was originally published with
    /// (`x-idemq-source-routing-key`, else the one it reached the dead-letter queue with).
    pub fn new(
        url: impl Into<String>,
        from_queue: impl Into<String>,
        to_exchange: impl Into<String>,
        to_routing_key: Option<String>,
        classifier: Classifier,
    ) -> Self {
        Self {
            url: url.into(),
            from_queue: from_queue.into(),
            to_exchange: to_exchange.into(),
            to_routing_key,
            classifier,
            limit: None,
            dry_run: false,
        }
    }

    /// Examine at most `n` messages.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Classify and count only; move nothing.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Runs the replay; `progress` sees the report after every message.
    pub async fn run(&self, progress: impl Fn(&ReplayReport)) -> Result<ReplayReport, AmqpError> {
        let setup = |during| move |source| AmqpError::Setup { during, source };
        let connection = Arc::new(
            Connection::connect(&self.url, ConnectionProperties::default())
                .await
                .map_err(setup("connect"))?,
        );
        let channel = connection
            .create_channel()
            .await
            .map_err(setup("channel.open"))?;
        let publisher = Publisher::open(connection.clone()).await?;
        let mut held = Vec::new();
        let result = self.drain(&channel, &publisher, &mut held, &progress).await;
        // Kept messages go back to the dead-letter queue, whatever happened above.
        for acker in held {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(err) = acker.nack(requeue).await {
                warn!(%err, "requeue failed; the broker requeues unacked messages when the channel closes");
            }
        }
        publisher.close().await;
        let _ = channel.close(200, "replay done".into()).await;
        let _ = connection.close(200, "replay done".into()).await;
        result
    }

    async fn drain(
        &self,
        channel: &lapin::Channel,
        publisher: &Publisher,
        held: &mut Vec<Acker>,
        progress: &impl Fn(&ReplayReport),
    ) -> Result<ReplayReport, AmqpError> {
        let mut report = ReplayReport {
            dry_run: self.dry_run,
            ..ReplayReport::default()
        };
        let queue = short("queue", &self.from_queue)?;
        while self.limit.is_none_or(|l| report.examined < l) {
            let Some(got) = channel
                .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                .await
                .map_err(AmqpError::broker("basic.get"))?
            else {
                break;
            };
            let d = got.delivery;
            let message = to_message(
                &self.from_queue,
                d.exchange.as_str(),
                d.routing_key.as_str(),
                d.delivery_tag,
                d.redelivered,
                &d.properties,
                Bytes::from(d.data),
            );
            let classified = match self.classifier.classify(&message).await {
                Ok(c) => c,
                Err(err) => {
                    held.push(d.acker);
                    return Err(AmqpError::Store(err));
                }
            };
            report.note(&classified);
            let action = if self.dry_run {
                ReplayAction::Keep
            } else {
                classified.class.action()
            };
            match action {
                ReplayAction::Keep => {
                    report.kept += 1;
                    held.push(d.acker);
                }
                ReplayAction::Remove => {
                    ack(&d.acker).await?;
                    report.removed += 1;
                }
                ReplayAction::Republish => {
                    let source_key = message
                        .header(headers::SOURCE_ROUTING_KEY)
                        .flatten()
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    let routing_key = self
                        .to_routing_key
                        .clone()
                        .or(source_key)
                        .unwrap_or_else(|| d.routing_key.as_str().to_string());
                    let properties = replay_properties(&d.properties, &message.headers);
                    if let Err(err) = publisher
                        .publish(
                            &self.to_exchange,
                            &routing_key,
                            &message.payload,
                            properties,
                            true,
                        )
                        .await
                    {
                        held.push(d.acker);
                        return Err(err);
                    }
                    ack(&d.acker).await?;
                    report.republished += 1;
                }
            }
            report.last_handled = Some(match &classified.key {
                Some(key) => format!("key {key}"),
                None => format!("delivery {}", d.delivery_tag),
            });
            progress(&report);
        }
        Ok(report)
    }
}

async fn ack(acker: &Acker) -> Result<(), AmqpError> {
    acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(AmqpError::broker("basic.ack"))
}

/// The original properties with idemq's dead-letter headers removed and the replay count set.
fn replay_properties(original: &BasicProperties, converted: &[crate::Header]) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(h) = original.headers() {
        for (name, value) in h.inner() {
            if !is_dead_letter_header(name.as_str()) {
                table.insert(name.clone(), value.clone());
            }
        }
    }
    table.insert(
        ShortString::from(headers::REPLAYED),
        AMQPValue::LongString(LongString::from(next_replay_count(converted).to_string())),
    );
    original.clone().with_headers(table)
}
