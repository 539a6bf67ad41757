//! Errors of the AMQP consumer.

use crate::engine::ConfigError;
use crate::store::StoreError;

/// Why the AMQP consumer could not be built or could not keep running.
///
/// Connection losses after the first successful session are not errors: the consumer reconnects
/// with backoff. Only configuration problems and failures that retrying cannot fix end
/// [`AmqpConsumer::run`](super::AmqpConsumer::run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// A builder or engine setting is missing, out of range or contradicts another; the
    /// [`ConfigError`] names the setting.
    #[error("invalid AMQP consumer configuration: {0}")]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The first session could not be set up for a reason reconnecting will not fix (access
    /// refused, queue not found, bad URL).
    #[error("AMQP setup failed during {during}: {source}")]
    Setup {
        /// What was being done (`connect`, `basic.consume`, …).
        during: &'static str,
        /// The client error.
        #[source]
        source: lapin::Error,
    },
    /// A broker operation failed; the consumer treats this as a lost session and reconnects.
    #[error("AMQP {during} failed: {source}")]
    Broker {
        /// What was being done.
        during: &'static str,
        /// The client error.
        #[source]
        source: lapin::Error,
    },
    /// The connection is gone; unsettled deliveries will be redelivered on the next session.
    #[error("AMQP connection is closed")]
    Disconnected,
    /// A publish was negatively confirmed or returned as unroutable.
    #[error("publish to exchange {exchange:?} with routing key {routing_key:?} was not confirmed: {detail}")]
    NotConfirmed {
        /// Target exchange.
        exchange: String,
        /// Routing key used.
        routing_key: String,
        /// Nack, or the return reply text.
        detail: String,
    },
}

impl AmqpError {
    pub(crate) fn broker(during: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
        move |source| AmqpError::Broker { during, source }
    }
}
