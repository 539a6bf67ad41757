//! Consumer settings and the builder that checks them.

use super::connection::ConnectOptions;
use super::consumer::AmqpConsumer;
use super::error::AmqpError;
use super::topology::Topology;
use crate::engine::{Backoff, ConfigError, Engine, EngineConfig, Processor};
use crate::fingerprint::FingerprintRule;
use crate::handler::Handler;
use crate::headers::IDEMPOTENCY_KEY;
use crate::key::{KeySource, Scope};
use crate::store::Store;
use lapin::tcp::OwnedTLSConfig;
use lapin::ConnectionProperties;
use std::sync::Arc;
use std::time::Duration;

/// Where dead-lettered messages are published.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterTarget {
    /// Exchange name (must exist unless declared with
    /// [`AmqpConsumerBuilder::declare`] and a dead-letter queue).
    pub exchange: String,
    /// Routing key; `None` keeps the message's original routing key.
    pub routing_key: Option<String>,
}

impl DeadLetterTarget {
    /// Publish to `exchange`, keeping each message's original routing key.
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            routing_key: None,
        }
    }

    /// Publish with this routing key instead of the original one.
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }
}

impl From<&str> for DeadLetterTarget {
    fn from(exchange: &str) -> Self {
        Self::new(exchange)
    }
}

impl From<String> for DeadLetterTarget {
    fn from(exchange: String) -> Self {
        Self::new(exchange)
    }
}

/// Resolved consumer settings (see [`AmqpConsumerBuilder`] for what each one means).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Queue consumed from (must exist unless declared with [`AmqpConsumerBuilder::declare`]).
    pub queue: String,
    /// Consumer tag; empty lets the broker choose one.
    pub consumer_tag: String,
    /// `basic.qos` prefetch count: unacknowledged deliveries the broker may push to us.
    pub prefetch: u16,
    /// Handlers running at the same time (deliveries in process: up to three times this, at most
    /// the prefetch; see [`AmqpConsumerBuilder::concurrency`]).
    pub concurrency: usize,
    /// `connection_name` client property shown by the broker (management UI, `rabbitmqctl`).
    pub connection_name: Option<String>,
    /// Dead-letter exchange; `None` rejects without requeue so the queue's own DLX applies.
    pub dead_letter: Option<DeadLetterTarget>,
    /// Publish the outcome to `reply_to` for request/reply deliveries (default on).
    pub replies: bool,
    /// Delay between reconnect attempts (exponential with jitter).
    pub reconnect_backoff: Backoff,
    /// Delay between tries of a dead-letter or reply publish that was not confirmed.
    pub publish_backoff: Backoff,
    /// Tries of such a publish before the delivery is requeued.
    pub publish_tries: u32,
    /// How long one publish may wait for its confirmation (a blocked connection never confirms).
    pub publish_timeout: Duration,
    /// How long shutdown waits for in-flight deliveries before closing the channel anyway.
    pub shutdown_timeout: Duration,
    /// How long one ack, nack or reject may take to be handed to the connection. One that takes
    /// longer (its connection died under it) counts as unsettled: the broker redelivers it.
    pub settle_timeout: Duration,
    /// How long a delivery ready to be acked waits for the deliveries below it, so that one
    /// `basic.ack(multiple)` settles them all, before it is acked on its own.
    pub ack_linger: Duration,
    /// Queues and exchange declared at each connect when missing (default: none; the queue and
    /// the dead-letter exchange must exist).
    pub declare: Topology,
}

type MakeProcessor =
    Box<dyn FnOnce(Arc<dyn Store>, EngineConfig) -> Result<Arc<dyn Processor>, ConfigError> + Send>;

enum ProcessorSpec {
    Ready(Arc<dyn Processor>),
    Handler(MakeProcessor),
}

/// Builds an [`AmqpConsumer`]; start one with [`AmqpConsumer::builder`].
///
/// Required: [`url`](Self::url), [`queue`](Self::queue), and either a store plus a
/// [`handler`](Self::handler), or a ready [`processor`](Self::processor).
///
/// [`build`](Self::build) checks everything and reports the first problem as a typed
/// [`AmqpError::Config`] naming the setting (missing, out of range, conflicting).
///
/// Escape hatches for what idemq does not wrap: lapin's
/// [`ConnectionProperties`](Self::connection_properties) (client properties, a custom
/// authentication provider, ...) and the [`tls`](Self::tls) client identity and CA chain for
/// `amqps://` URLs, both passed to every connect.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use idemq::amqp::{AmqpConsumer, DeadLetterTarget};
/// use idemq::store::MemoryStore;
/// use idemq::{HandlerContext, HandlerError};
/// use lapin::tcp::OwnedTLSConfig;
/// use lapin::ConnectionProperties;
/// use std::sync::Arc;
///
/// let tls = OwnedTLSConfig {
///     identity: None,
///     cert_chain: Some(std::fs::read_to_string("/etc/rabbitmq/ca.pem")?),
/// };
/// let consumer = AmqpConsumer::builder()
///     .url("amqps://app:secret@rabbit:5671/%2f")
///     .queue("orders")
///     .prefetch(64)
///     .concurrency(16)
///     .dead_letter(DeadLetterTarget::new("orders.dlx").routing_key("billing"))
///     .connection_name("billing-1")
///     .connection_properties(ConnectionProperties::default().with_locale("en_US".into()))
///     .tls(tls)
///     .store(Arc::new(MemoryStore::new()))
///     .handler(|ctx: HandlerContext| async move { Ok::<_, HandlerError>(ctx.message.payload.len()) })
///     .build()?;
/// let stats = consumer.run_until_signal().await?; // SIGINT or SIGTERM
/// println!("processed {} replayed {}", stats.processed, stats.replayed);
/// # Ok(()) }
/// ```
///
/// Keys, scopes and fingerprints follow the same rules as on the Kafka builder:
///
/// ```
/// use idemq::amqp::AmqpConsumer;
/// use idemq::fingerprint::FingerprintRule;
/// use idemq::store::MemoryStore;
/// use idemq::{HandlerContext, HandlerError, KeySource};
/// use std::sync::Arc;
///
/// let consumer = AmqpConsumer::builder()
///     .url("amqp://127.0.0.1:5672/%2f")
///     .queue("payments")
///     .key_source(KeySource::MessageId)
///     .key_source(KeySource::json_pointer("/payment/id")) // when message_id is not set
///     .fingerprint(FingerprintRule::json_pointers(["/payment/id", "/amount"]))
///     .store(Arc::new(MemoryStore::new()))
///     .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
///     .build()
///     .unwrap();
/// assert_eq!(consumer.scope(), "payments"); // the queue, by default
/// ```
pub struct AmqpConsumerBuilder {
    config: AmqpConfig,
    store: Option<Arc<dyn Store>>,
    engine: Option<EngineConfig>,
    scope: Option<Scope>,
    key_sources: Option<Vec<KeySource>>,
    fingerprint: Option<FingerprintRule>,
    processor: Option<ProcessorSpec>,
    connect: ConnectOptions,
}

impl Default for AmqpConsumerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AmqpConsumerBuilder {
    /// A builder with the defaults (the same as [`AmqpConsumer::builder`]): prefetch 32,
    /// 16 deliveries at a time, replies on, 15 s to drain on shutdown.
    pub fn new() -> Self {
        Self {
            config: AmqpConfig {
                url: String::new(),
                queue: String::new(),
                consumer_tag: String::new(),
                prefetch: 32,
                concurrency: 16,
                connection_name: None,
                dead_letter: None,
                replies: true,
                reconnect_backoff: Backoff::new(
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                ),
                publish_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
                publish_tries: 10,
                publish_timeout: Duration::from_secs(30),
                shutdown_timeout: Duration::from_secs(15),
                settle_timeout: Duration::from_secs(10),
                ack_linger: Duration::from_millis(5),
                declare: Topology::default(),
            },
            store: None,
            engine: None,
            scope: None,
            key_sources: None,
            fingerprint: None,
            processor: None,
            connect: ConnectOptions::default(),
        }
    }

    /// AMQP URL of the broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (`amqps://` for TLS,
    /// see [`tls`](Self::tls)). Required.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// Queue to consume from. Required. It must exist unless [`declare`](Self::declare) creates it.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.config.queue = queue.into();
        self
    }

    /// Consumer tag (default: chosen by the broker).
    pub fn consumer_tag(mut self, tag: impl Into<String>) -> Self {
        self.config.consumer_tag = tag.into();
        self
    }

    /// `basic.qos` prefetch count (default 32, at least 1). Bounds how many unacknowledged
    /// deliveries — and so how much memory — one consumer holds.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.config.prefetch = prefetch;
        self
    }

    /// Handlers running at the same time (default 16; at least 1, at most the prefetch).
    ///
    /// Above 1, up to three times as many deliveries (never more than the prefetch) are in
    /// process: the extra ones are being claimed or are storing their outcome, which take no
    /// handler slot (see [`HandlerSlots`](crate::HandlerSlots)). At 1, one delivery is in process
    /// at a time.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Scope the keys are claimed in (default: the queue name). A name, or a [`Scope`];
    /// [`Scope::PerTopic`] is the queue name.
    pub fn scope(mut self, scope: impl Into<Scope>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Adds a place the idempotency key is read from. The first call replaces the default
    /// (`Idempotency-Key` header), later calls add fallbacks; the first source present wins (see
    /// [`KeySource`]). Overrides the key sources of [`engine_config`](Self::engine_config).
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.key_sources.get_or_insert_with(Vec::new).push(source);
        self
    }

    /// Sets every key source at once, in order (see [`key_source`](Self::key_source)).
    pub fn key_sources(mut self, sources: impl IntoIterator<Item = KeySource>) -> Self {
        self.key_sources = Some(sources.into_iter().collect());
        self
    }

    /// Which parts of a message its fingerprint covers (default: the whole payload); see
    /// [`FingerprintRule`] for the risks of each. Overrides that of
    /// [`engine_config`](Self::engine_config).
    pub fn fingerprint(mut self, rule: FingerprintRule) -> Self {
        self.fingerprint = Some(rule);
        self
    }

    /// The store (required with [`handler`](Self::handler)).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Engine settings (lease, retention, retries, …). Its scope is used unless
    /// [`scope`](Self::scope) is set; without this call the defaults with the queue name as scope
    /// apply.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = Some(config);
        self
    }

    /// Header names the key is read from, tried in order: the key sources become these headers
    /// (followed by `message_id` if [`message_id_fallback`](Self::message_id_fallback) was on).
    #[deprecated(note = "use `key_source(KeySource::header(..))` / `key_sources(..)`")]
    pub fn key_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let fallback = self
            .sources()
            .iter()
            .any(|s| matches!(s, KeySource::MessageId));
        let mut sources: Vec<KeySource> = names.into_iter().map(KeySource::header).collect();
        if fallback {
            sources.push(KeySource::MessageId);
        }
        self.key_sources(sources)
    }

    /// Fall back to the AMQP `message_id` property when no key header is present.
    #[deprecated(note = "use `key_source(KeySource::MessageId)` after the header sources")]
    pub fn message_id_fallback(mut self, on: bool) -> Self {
        let mut sources = self.sources();
        sources.retain(|s| !matches!(s, KeySource::MessageId));
        if on {
            sources.push(KeySource::MessageId);
        }
        self.key_sources(sources)
    }

    /// The key sources configured so far (the default header if none).
    fn sources(&mut self) -> Vec<KeySource> {
        self.key_sources
            .take()
            .unwrap_or_else(|| vec![KeySource::header(IDEMPOTENCY_KEY)])
    }

    /// Where dead-lettered deliveries are published: an exchange name (`"orders.dlx"`, keeping
    /// the original routing key) or a [`DeadLetterTarget`] with its own routing key. The same
    /// method as the Kafka builder's `KafkaConsumerBuilder::dead_letter`.
    /// Without one, dead-lettered deliveries are rejected without requeue (the queue's own
    /// dead-letter exchange, if any, applies).
    pub fn dead_letter(mut self, target: impl Into<DeadLetterTarget>) -> Self {
        self.config.dead_letter = Some(target.into());
        self
    }

    /// Declares what is missing of `topology` at each connect, before consuming: the consumed
    /// queue and/or the dead-letter exchange with a queue bound to it. Names that exist are used
    /// as they are (checked with a passive declare), so an operator's queue arguments are never
    /// contradicted. Without this call nothing is declared.
    ///
    /// ```no_run
    /// # fn demo(store: std::sync::Arc<dyn idemq::Store>) -> Result<(), idemq::amqp::AmqpError> {
    /// use idemq::amqp::{AmqpConsumer, Topology};
    /// use idemq::{HandlerContext, HandlerError};
    ///
    /// let consumer = AmqpConsumer::builder()
    ///     .url("amqp://guest:guest@127.0.0.1:5672/%2f")
    ///     .queue("orders")
    ///     .dead_letter("orders.dlx")
    ///     .declare(Topology::queue().dead_letter_queue("orders.dlq"))
    ///     .store(store)
    ///     .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
    ///     .build()?;
    /// # let _ = consumer; Ok(()) }
    /// ```
    pub fn declare(mut self, topology: Topology) -> Self {
        self.config.declare = topology;
        self
    }

    /// Dead-letter exchange and optional routing key (default: keep the original routing key);
    /// the same as [`dead_letter`](Self::dead_letter).
    pub fn dead_letter_exchange(
        self,
        exchange: impl Into<String>,
        routing_key: Option<String>,
    ) -> Self {
        let target = DeadLetterTarget {
            exchange: exchange.into(),
            routing_key,
        };
        self.dead_letter(target)
    }

    /// Publish outcomes to `reply_to` for request/reply deliveries (default `true`).
    pub fn replies(mut self, on: bool) -> Self {
        self.config.replies = on;
        self
    }

    /// `connection_name` client property, shown by the broker.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.config.connection_name = Some(name.into());
        self
    }

    /// lapin's connection properties for every connect (default: lapin's defaults): client
    /// properties, a custom [`AuthProvider`](lapin::auth::AuthProvider) (e.g. OAuth 2 tokens or
    /// `EXTERNAL` with a client certificate), the locale. A
    /// [`connection_name`](Self::connection_name) is added on top. idemq does its own reconnects,
    /// so leave lapin's automatic recovery off.
    pub fn connection_properties(mut self, properties: ConnectionProperties) -> Self {
        self.connect.properties = properties;
        self
    }

    /// TLS settings for `amqps://` URLs: a client identity (certificate authentication) and
    /// extra trusted certificates in PEM, passed to every connect.
    pub fn tls(mut self, tls: OwnedTLSConfig) -> Self {
        self.connect.tls = tls;
        self
    }

    /// Reconnect delays (default 100 ms doubling to 10 s, ±20 % jitter).
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.config.reconnect_backoff = backoff;
        self
    }

    /// Retries of an unconfirmed dead-letter or reply publish: `tries` attempts (default 10) spaced
    /// by `backoff` (default 100 ms doubling to 5 s), each waiting at most `timeout` (default 30 s)
    /// for the confirm. When they are used up the delivery is requeued, never acked.
    pub fn publish_retries(mut self, tries: u32, backoff: Backoff, timeout: Duration) -> Self {
        self.config.publish_tries = tries;
        self.config.publish_backoff = backoff;
        self.config.publish_timeout = timeout;
        self
    }

    /// How long shutdown waits for in-flight deliveries (default 15 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long one ack, nack or reject may take before it counts as unsettled (default 10 s).
    ///
    /// A settle is only handed to the connection (AMQP sends no answer to it), so it takes
    /// microseconds on a live connection; the bound is for a connection that dies under it, whose
    /// delivery task must still end so its concurrency permit comes back. The broker redelivers
    /// whatever was not acknowledged, and the redelivery is deduplicated.
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.config.settle_timeout = timeout;
        self
    }

    /// How long a delivery whose outcome is durable may wait to be acked together with others
    /// (default 5 ms; zero acks every delivery that cannot join a run at once).
    ///
    /// Acks are coalesced: when the deliveries with the lowest open tags are all ready, one
    /// `basic.ack(multiple = true)` settles the whole run, which saves RabbitMQ and the client a
    /// frame per delivery. A ready delivery behind one still running waits up to this long for the
    /// run to reach it, then is acked on its own, so a slow handler holds back the others' acks
    /// at most this long. Nothing is ever acked before its own outcome is durable; a longer
    /// linger only means more acknowledged-late deliveries are redelivered (and replayed from the
    /// store) if the connection drops meanwhile, and that they hold prefetch slots a little longer.
    pub fn ack_linger(mut self, linger: Duration) -> Self {
        self.config.ack_linger = linger;
        self
    }

    /// The handler; an [`Engine`] is built from the store and the engine settings.
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.processor = Some(ProcessorSpec::Handler(Box::new(move |store, config| {
            Ok(Arc::new(Engine::new(store, config, handler)?) as Arc<dyn Processor>)
        })));
        self
    }

    /// A ready processor (an [`Engine`] you built, or the Postgres transactional engine). The store,
    /// scope, key, fingerprint and engine settings of this builder are then not used.
    pub fn processor(mut self, processor: Arc<dyn Processor>) -> Self {
        self.processor = Some(ProcessorSpec::Ready(processor));
        self
    }

    /// Checks the settings and builds the consumer (nothing connects until
    /// [`run`](AmqpConsumer::run)).
    pub fn build(self) -> Result<AmqpConsumer, AmqpError> {
        let config = self.config;
        let range = |setting, value: u32, expected| {
            Err(AmqpError::Config(ConfigError::out_of_range(
                setting, value, expected,
            )))
        };
        // Names are checked by length; the error shows the length, not the (long) name.
        let too_long = |setting, len: usize| {
            Err(AmqpError::Config(ConfigError::out_of_range(
                setting,
                format!("{len} bytes"),
                "at most 255 bytes",
            )))
        };
        if config.url.is_empty() {
            return Err(ConfigError::missing(
                "url",
                "the broker, e.g. amqp://guest:guest@127.0.0.1:5672/%2f",
            )
            .into());
        }
        if config.queue.is_empty() {
            return Err(ConfigError::missing("queue", "the queue to consume from").into());
        }
        // The URL may hold a password: the error repeats lapin's reason only.
        if let Err(e) = config.url.parse::<lapin::uri::AMQPUri>() {
            return Err(ConfigError::invalid("url", format!("not an AMQP URL: {e}")).into());
        }
        if config.queue.len() > 255 {
            return too_long("queue", config.queue.len());
        }
        if config.consumer_tag.len() > 255 {
            return too_long("consumer_tag", config.consumer_tag.len());
        }
        if config.prefetch == 0 {
            return range("prefetch", 0, "at least 1 (0 would mean unbounded)");
        }
        if config.concurrency == 0 {
            return range("concurrency", 0, "at least 1");
        }
        if config.concurrency > usize::from(config.prefetch) {
            return Err(ConfigError::conflict(
                "concurrency",
                "prefetch",
                format!(
                    "{} deliveries at a time need a prefetch of at least {}, not {}",
                    config.concurrency, config.concurrency, config.prefetch
                ),
            )
            .into());
        }
        if config.publish_tries == 0 {
            return range("publish_tries", 0, "at least 1");
        }
        for (setting, d) in [
            ("settle_timeout", config.settle_timeout),
            ("publish_timeout", config.publish_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::out_of_range(setting, "0s", "above zero").into());
            }
        }
        if let Some(dlq) = &config.declare.dead_letter_queue {
            if config.dead_letter.is_none() {
                return Err(ConfigError::conflict(
                    "declare",
                    "dead_letter",
                    "a dead-letter queue to declare needs a dead-letter exchange to bind it to",
                )
                .into());
            }
            if dlq.len() > 255 {
                return too_long("dead_letter_queue", dlq.len());
            }
        }
        if let Some(dl) = &config.dead_letter {
            if dl.exchange.len() > 255 {
                return too_long("dead_letter_exchange", dl.exchange.len());
            }
            if let Some(key) = dl.routing_key.as_ref().filter(|r| r.len() > 255) {
                return too_long("dead_letter_routing_key", key.len());
            }
        }
        let processor = match self.processor {
            None => {
                return Err(ConfigError::missing(
                    "handler",
                    "a handler (with a store) or a ready processor",
                )
                .into())
            }
            Some(ProcessorSpec::Ready(p)) => p,
            Some(ProcessorSpec::Handler(make)) => {
                let Some(store) = self.store else {
                    return Err(ConfigError::missing(
                        "store",
                        "a handler needs a store for claims and outcomes",
                    )
                    .into());
                };
                let mut engine = self
                    .engine
                    .unwrap_or_else(|| EngineConfig::new(config.queue.clone()));
                if let Some(scope) = self.scope {
                    engine.scope = scope;
                }
                engine.scope = engine.scope.under_queue(&config.queue);
                if let Some(sources) = self.key_sources {
                    engine.key.sources = sources;
                }
                if let Some(rule) = self.fingerprint {
                    engine.fingerprint = rule;
                }
                make(store, engine)?
            }
        };
        Ok(AmqpConsumer::new(config, self.connect, processor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::{HandlerContext, HandlerError};

    fn builder() -> AmqpConsumerBuilder {
        AmqpConsumer::builder()
            .url("amqp://127.0.0.1:5672/%2f")
            .queue("orders")
            .store(Arc::new(MemoryStore::new()))
            .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
    }

    fn err(b: AmqpConsumerBuilder) -> ConfigError {
        match b.build() {
            Err(AmqpError::Config(e)) => e,
            Err(other) => panic!("expected a configuration error, got {other:?}"),
            Ok(_) => panic!("expected a configuration error"),
        }
    }

    fn out_of_range(b: AmqpConsumerBuilder) -> &'static str {
        match err(b) {
            ConfigError::OutOfRange { setting, .. } => setting,
            other => panic!("expected OutOfRange, got {other:?}"),
        }
    }

    fn missing(b: AmqpConsumerBuilder) -> &'static str {
        match err(b) {
            ConfigError::Missing { setting, .. } => setting,
            other => panic!("expected Missing, got {other:?}"),
        }
    }

    #[test]
    fn build_reports_typed_errors_that_name_the_setting() {
        assert!(builder().build().is_ok());
        assert_eq!(out_of_range(builder().prefetch(0)), "prefetch");
        assert_eq!(out_of_range(builder().concurrency(0)), "concurrency");
        let conflict = err(builder().prefetch(4).concurrency(5));
        assert!(
            matches!(
                conflict,
                ConfigError::Conflict {
                    setting: "concurrency",
                    other: "prefetch",
                    ..
                }
            ),
            "{conflict:?}"
        );
        assert_eq!(
            out_of_range(
                AmqpConsumer::builder()
                    .url("amqp://h/%2f")
                    .queue("x".repeat(256))
            ),
            "queue"
        );
        assert_eq!(
            out_of_range(builder().consumer_tag("t".repeat(256))),
            "consumer_tag"
        );
        assert_eq!(
            out_of_range(builder().publish_retries(
                0,
                Backoff::new(Duration::ZERO, Duration::ZERO),
                Duration::from_secs(1)
            )),
            "publish_tries"
        );
        assert_eq!(
            out_of_range(builder().settle_timeout(Duration::ZERO)),
            "settle_timeout"
        );
        assert_eq!(
            out_of_range(builder().dead_letter_exchange("x".repeat(256), None)),
            "dead_letter_exchange"
        );
        let long = err(builder().consumer_tag("t".repeat(300)));
        assert_eq!(
            long.to_string(),
            "`consumer_tag` = 300 bytes is out of range: expected at most 255 bytes"
        );
        // A bad URL is named without repeating it (it may hold a password).
        let bad_url = err(AmqpConsumer::builder().url("not a url :secret@").queue("q"));
        assert_eq!(bad_url.setting(), "url");
        assert!(!bad_url.to_string().contains("secret"), "{bad_url}");
        let no_store = AmqpConsumer::builder()
            .url("amqp://h/%2f")
            .queue("q")
            .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) });
        assert_eq!(missing(no_store), "store");
        assert_eq!(
            missing(AmqpConsumer::builder().url("amqp://h/%2f").queue("q")),
            "handler"
        );
        // The engine's own checks come back through the same variant.
        assert_eq!(missing(builder().key_sources([])), "key source");
        let text = builder().prefetch(0).build().err().unwrap().to_string();
        assert_eq!(
            text,
            "invalid AMQP consumer configuration: `prefetch` = 0 is out of range: expected at least 1 (0 would mean unbounded)"
        );
    }

    #[test]
    fn scope_defaults_to_the_queue() {
        let c = builder().build().unwrap();
        assert_eq!(c.scope(), "orders");
        let c = builder().scope("billing").build().unwrap();
        assert_eq!(c.scope(), "billing");
        let c = builder().scope(Scope::PerTopic).build().unwrap();
        assert_eq!(c.scope(), "orders");
        let c = builder()
            .scope(Scope::custom("tenant", |_| "t".into()))
            .build()
            .unwrap();
        assert_eq!(c.scope(), "tenant");
        // With only the message_id as key source the engine accepts the configuration.
        assert!(builder().key_source(KeySource::MessageId).build().is_ok());
        let bad = err(builder().fingerprint(FingerprintRule::json_pointers(["x"])));
        assert!(bad.to_string().contains("'/'"), "{bad}");
    }

    #[test]
    #[allow(deprecated)]
    fn deprecated_key_setters_map_to_sources() {
        let mut b = builder().message_id_fallback(true);
        let names: Vec<String> = b.sources().iter().map(KeySource::describe).collect();
        assert_eq!(names, ["header Idempotency-Key", "message_id"]);
        let mut b = builder().message_id_fallback(true).key_headers(["A", "B"]);
        let names: Vec<String> = b.sources().iter().map(KeySource::describe).collect();
        assert_eq!(names, ["header A", "header B", "message_id"]);
        let mut b = builder().key_headers(["A"]).message_id_fallback(false);
        assert_eq!(b.sources().len(), 1);
    }
}
