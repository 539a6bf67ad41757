//! One broker session: connection, consuming channel with its prefetch, and the publisher.
//!
//! The consumer reconnects by opening a fresh session (see `consumer.rs`). We do not use lapin's
//! automatic recovery: after a connection loss every unacknowledged delivery is redelivered by the
//! broker anyway, and a fresh session makes it obvious that acknowledgements of the old channel
//! are void (their `Acker`s are poisoned), which the delivery tasks check before settling.

use super::config::AmqpConfig;
use super::error::AmqpError;
use super::publish::Publisher;
use super::topology::Topology;
use crate::engine::ConfigError;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use std::sync::Arc;
use tracing::debug;

/// What the connect call gets besides the URL: the user's lapin escape hatches.
#[derive(Clone, Default)]
pub(crate) struct ConnectOptions {
    /// lapin's connection properties (client properties, auth provider, locale, ...).
    pub(crate) properties: ConnectionProperties,
    /// TLS client identity and extra CA chain for `amqps://` URLs.
    pub(crate) tls: OwnedTLSConfig,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The TLS identity holds a private key and its password: never print it.
        f.debug_struct("ConnectOptions")
            .field("properties", &self.properties)
            .field("tls_identity", &self.tls.identity.is_some())
            .field("tls_cert_chain", &self.tls.cert_chain.is_some())
            .finish()
    }
}

/// An open session.
pub(crate) struct Session {
    pub(crate) connection: Arc<Connection>,
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    pub(crate) publisher: Arc<Publisher>,
}

impl Session {
    /// Connects, sets the prefetch and starts consuming.
    pub(crate) async fn open(
        config: &AmqpConfig,
        options: &ConnectOptions,
    ) -> Result<Session, AmqpError> {
        let mut props = options.properties.clone();
        if let Some(name) = &config.connection_name {
            props = props.with_connection_name(name.clone().into());
        }
        let runtime = lapin::runtime::default_runtime().map_err(AmqpError::broker("connect"))?;
        let connection = Arc::new(
            Connection::connect_with_config(&config.url, props, options.tls.clone(), runtime)
                .await
                .map_err(AmqpError::broker("connect"))?,
        );
        if config.declare != Topology::default() {
            super::topology::declare(&connection, config, &config.declare).await?;
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(AmqpError::broker("channel.open"))?;
        // Per-consumer prefetch (global = false) bounds what this consumer holds unacknowledged.
        channel
            .basic_qos(config.prefetch, BasicQosOptions { global: false })
            .await
            .map_err(AmqpError::broker("basic.qos"))?;
        let publisher = Arc::new(Publisher::open(connection.clone()).await?);
        let queue = short("queue", &config.queue)?;
        let tag = short("consumer_tag", &config.consumer_tag)?;
        let consumer = channel
            .basic_consume(
                queue,
                tag,
                BasicConsumeOptions {
                    no_ack: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(AmqpError::broker("basic.consume"))?;
        debug!(queue = %config.queue, tag = %consumer.tag(), "consuming");
        Ok(Session {
            connection,
            channel,
            consumer,
            publisher,
        })
    }

    /// Closes channels and connection; errors only mean it was already gone.
    pub(crate) async fn close(&self) {
        if self.channel.status().connected() {
            if let Err(err) = self.channel.close(200, "shutdown".into()).await {
                debug!(%err, "closing the consuming channel");
            }
        }
        self.publisher.close().await;
        if self.connection.status().connected() {
            if let Err(err) = self.connection.close(200, "shutdown".into()).await {
                debug!(%err, "closing the connection");
            }
        }
    }
}

/// A validated short string (AMQP names are at most 255 bytes).
pub(crate) fn short(what: &'static str, s: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(s).map_err(|_| {
        AmqpError::Config(ConfigError::out_of_range(
            what,
            format!("{} bytes", s.len()),
            "at most 255 bytes",
        ))
    })
}
