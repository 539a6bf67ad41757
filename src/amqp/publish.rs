//! Publishing with publisher confirms: every message idemq publishes (dead letters, replies) is
//! confirmed by the broker before the original delivery is acknowledged.

use super::error::AmqpError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use std::sync::Arc;
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// A confirm-mode channel that is reopened when the broker closed it (publishing to a missing
/// exchange closes the channel with 404, which must not take the consumer down).
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    channel: Mutex<Channel>,
}

impl Publisher {
    pub(crate) async fn open(connection: Arc<Connection>) -> Result<Self, AmqpError> {
        let channel = confirm_channel(&connection).await?;
        Ok(Self {
            connection,
            channel: Mutex::new(channel),
        })
    }

    /// Publishes and waits for the broker's confirmation. `mandatory` makes an unroutable message
    /// an error instead of a silent drop.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        let channel = self.channel().await?;
        let not_confirmed = |detail: String| AmqpError::NotConfirmed {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            detail,
        };
        let exchange_name = ShortString::try_new(exchange)
            .map_err(|_| not_confirmed("exchange name longer than 255 bytes".into()))?;
        let key = ShortString::try_new(routing_key)
            .map_err(|_| not_confirmed("routing key longer than 255 bytes".into()))?;
        let confirm = channel
            .basic_publish(
                exchange_name,
                key,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            )
            .await
            .map_err(AmqpError::broker("basic.publish"))?
            .await
            .map_err(AmqpError::broker("publisher confirm"))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(not_confirmed(format!(
                "returned by the broker: {} {}",
                returned.reply_code, returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(not_confirmed("nacked by the broker".into())),
            Confirmation::NotRequested => {
                Err(not_confirmed("channel is not in confirm mode".into()))
            }
        }
    }

    /// The current channel, reopened if the broker closed it.
    async fn channel(&self) -> Result<Channel, AmqpError> {
        let mut guard = self.channel.lock().await;
        if !guard.status().connected() {
            if !self.connection.status().connected() {
                return Err(AmqpError::Disconnected);
            }
            warn!("publishing channel was closed by the broker; reopening it");
            *guard = confirm_channel(&self.connection).await?;
        }
        Ok(guard.clone())
    }

    pub(crate) async fn close(&self) {
        let channel = self.channel.lock().await;
        if channel.status().connected() {
            if let Err(err) = channel.close(200, "shutdown".into()).await {
                debug!(%err, "closing the publishing channel");
            }
        }
    }
}

async fn confirm_channel(connection: &Connection) -> Result<Channel, AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(AmqpError::broker("channel.open"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(AmqpError::broker("confirm.select"))?;
    Ok(channel)
}
