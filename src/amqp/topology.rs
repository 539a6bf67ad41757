//! Optional declaration of the queues and exchange a consumer uses, so that a consumer started on a
//! fresh broker works without a separate setup step (see
//! [`AmqpConsumerBuilder::declare`](super::AmqpConsumerBuilder::declare)).
//!
//! Whatever already exists is used as it is: each name is first checked with a passive declare
//! (which fails with 404 only when it is missing), and only a missing one is declared. A queue
//! that an operator created with its own arguments (quorum type, TTLs, its own dead-letter
//! exchange) is therefore never redeclared with different ones, which RabbitMQ would refuse with
//! `PRECONDITION_FAILED`.

use super::config::AmqpConfig;
use super::connection::short;
use super::error::AmqpError;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use tracing::info;

/// What [`AmqpConsumerBuilder::declare`](super::AmqpConsumerBuilder::declare) creates when missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// Declare the consumed queue (durable, no arguments) when it does not exist.
    pub queue: bool,
    /// Declare the dead-letter exchange (durable, fanout) when it does not exist, and this durable
    /// queue bound to it, so dead letters are kept rather than dropped by an unbound exchange.
    pub dead_letter_queue: Option<String>,
}

impl Topology {
    /// Declares the consumed queue only.
    pub fn queue() -> Self {
        Self {
            queue: true,
            dead_letter_queue: None,
        }
    }

    /// Also declares the dead-letter exchange and `queue` bound to it.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }
}

/// Declares what is missing of `topology`; called once per session before consuming.
pub(crate) async fn declare(
    connection: &Connection,
    config: &AmqpConfig,
    topology: &Topology,
) -> Result<(), AmqpError> {
    if topology.queue {
        ensure_queue(connection, &config.queue).await?;
    }
    if let Some(dlq) = &topology.dead_letter_queue {
        let Some(target) = &config.dead_letter else {
            return Ok(()); // the builder refuses this combination; nothing to bind to
        };
        let created = ensure_exchange(connection, &target.exchange).await?;
        ensure_queue(connection, dlq).await?;
        if created {
            // Bound only when we created the exchange: an operator's exchange has its own
            // bindings. Fanout ignores the routing key, so every dead letter reaches the queue.
            let ch = channel(connection).await?;
            ch.queue_bind(
                short("dead_letter_queue", dlq)?,
                short("dead_letter_exchange", &target.exchange)?,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker("queue.bind"))?;
            let _ = ch.close(200, "declared".into()).await;
        }
    }
    Ok(())
}

async fn channel(connection: &Connection) -> Result<lapin::Channel, AmqpError> {
    connection
        .create_channel()
        .await
        .map_err(AmqpError::broker("channel.open"))
}

/// Declares `name` durable unless it exists. Returns whether it was created.
async fn ensure_queue(connection: &Connection, name: &str) -> Result<bool, AmqpError> {
    let queue = short("queue", name)?;
    // A failed passive declare closes its channel, hence one channel per attempt.
    let probe = channel(connection).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(queue.clone(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "checked".into()).await;
        return Ok(false);
    }
    let ch = channel(connection).await?;
    ch.queue_declare(queue, QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .map_err(AmqpError::broker("queue.declare"))?;
    let _ = ch.close(200, "declared".into()).await;
    info!(queue = name, "declared missing queue");
    Ok(true)
}

/// Declares exchange `name` (durable fanout) unless it exists. Returns whether it was created.
async fn ensure_exchange(connection: &Connection, name: &str) -> Result<bool, AmqpError> {
    let exchange = short("dead_letter_exchange", name)?;
    let probe = channel(connection).await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if probe
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok()
    {
        let _ = probe.close(200, "checked".into()).await;
        return Ok(false);
    }
    let ch = channel(connection).await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        exchange,
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(AmqpError::broker("exchange.declare"))?;
    let _ = ch.close(200, "declared".into()).await;
    info!(exchange = name, "declared missing dead-letter exchange");
    Ok(true)
}
