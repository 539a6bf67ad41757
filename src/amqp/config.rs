//! Consumer settings and the builder that checks them.

use super::consumer::AmqpConsumer;
use super::error::AmqpError;
use crate::engine::{Backoff, ConfigError, Engine, EngineConfig, Processor};
use crate::fingerprint::FingerprintRule;
use crate::handler::Handler;
use crate::headers::IDEMPOTENCY_KEY;
use crate::key::{KeySource, Scope};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Where dead-lettered messages are published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterTarget {
    /// Exchange name (must exist; idemq does not declare it).
    pub exchange: String,
    /// Routing key; `None` keeps the message's original routing key.
    pub routing_key: Option<String>,
}

/// Resolved consumer settings (see [`AmqpConsumerBuilder`] for what each one means).
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// Queue consumed from (must exist).
    pub queue: String,
    /// Consumer tag; empty lets the broker choose one.
    pub consumer_tag: String,
    /// `basic.qos` prefetch count: unacknowledged deliveries the broker may push to us.
    pub prefetch: u16,
    /// Deliveries processed at the same time.
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
}

type MakeProcessor =
    Box<dyn FnOnce(Arc<dyn Store>, EngineConfig) -> Result<Arc<dyn Processor>, ConfigError> + Send>;

enum ProcessorSpec {
    Ready(Arc<dyn Processor>),
    Handler(MakeProcessor),
}

/// Builds an [`AmqpConsumer`].
///
/// Required: URL and queue (given to [`AmqpConsumer::builder`]), and either a store plus a
/// [`handler`](Self::handler), or a ready [`processor`](Self::processor).
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
/// let consumer = AmqpConsumer::builder("amqp://127.0.0.1:5672/%2f", "payments")
///     .key_source(KeySource::MessageId)
///     .key_source(KeySource::json_pointer("/payment/id")) // when message_id is not set
///     .fingerprint(FingerprintRule::json_pointers(["/payment/id", "/amount"]))
///     .store(Arc::new(MemoryStore::new()))
///     .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
///     .build()
///     .unwrap();
/// assert_eq!(consumer.processor_scope(), "payments"); // the queue, by default
/// ```
pub struct AmqpConsumerBuilder {
    config: AmqpConfig,
    store: Option<Arc<dyn Store>>,
    engine: Option<EngineConfig>,
    scope: Option<Scope>,
    key_sources: Option<Vec<KeySource>>,
    fingerprint: Option<FingerprintRule>,
    processor: Option<ProcessorSpec>,
}

impl AmqpConsumerBuilder {
    pub(crate) fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            config: AmqpConfig {
                url: url.into(),
                queue: queue.into(),
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
            },
            store: None,
            engine: None,
            scope: None,
            key_sources: None,
            fingerprint: None,
            processor: None,
        }
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

    /// Deliveries processed concurrently (default 16; at least 1, at most the prefetch).
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

    /// Dead-letter exchange and optional routing key (default: keep the original routing key).
    /// Without one, dead-lettered deliveries are rejected without requeue.
    pub fn dead_letter_exchange(
        mut self,
        exchange: impl Into<String>,
        routing_key: Option<String>,
    ) -> Self {
        self.config.dead_letter = Some(DeadLetterTarget {
            exchange: exchange.into(),
            routing_key,
        });
        self
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
        let bad = |m: &str| Err(AmqpError::Config(m.to_string()));
        if let Err(e) = config.url.parse::<lapin::uri::AMQPUri>() {
            return Err(AmqpError::Config(format!("invalid AMQP URL: {e}")));
        }
        if config.queue.is_empty() || config.queue.len() > 255 {
            return bad("queue name must be 1..=255 bytes");
        }
        if config.consumer_tag.len() > 255 {
            return bad("consumer tag must be at most 255 bytes");
        }
        if config.prefetch == 0 {
            return bad("prefetch must be at least 1 (0 would mean unbounded)");
        }
        if config.concurrency == 0 || config.concurrency > usize::from(config.prefetch) {
            return bad("concurrency must be between 1 and the prefetch count");
        }
        if config.publish_tries == 0 {
            return bad("publish_tries must be at least 1");
        }
        if config.settle_timeout.is_zero() || config.publish_timeout.is_zero() {
            return bad("settle and publish timeouts must be above zero");
        }
        if let Some(dl) = &config.dead_letter {
            if dl.exchange.len() > 255 || dl.routing_key.as_ref().is_some_and(|r| r.len() > 255) {
                return bad("dead-letter exchange and routing key must be at most 255 bytes");
            }
        }
        let processor = match self.processor {
            None => return bad("no handler or processor given"),
            Some(ProcessorSpec::Ready(p)) => p,
            Some(ProcessorSpec::Handler(make)) => {
                let Some(store) = self.store else {
                    return bad("a handler needs a store");
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
        Ok(AmqpConsumer::new(config, processor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::{HandlerContext, HandlerError};

    fn builder() -> AmqpConsumerBuilder {
        AmqpConsumer::builder("amqp://127.0.0.1:5672/%2f", "orders")
            .store(Arc::new(MemoryStore::new()))
            .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
    }

    fn err(b: AmqpConsumerBuilder) -> String {
        match b.build() {
            Ok(_) => panic!("expected a configuration error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rejects_contradictions() {
        assert!(builder().build().is_ok());
        assert!(err(builder().prefetch(0)).contains("prefetch"));
        assert!(err(builder().prefetch(4).concurrency(5)).contains("concurrency"));
        assert!(err(builder().concurrency(0)).contains("concurrency"));
        assert!(err(AmqpConsumer::builder("amqp://h/%2f", "")).contains("queue"));
        assert!(err(AmqpConsumer::builder("not a url", "q")).contains("URL"));
        let no_store = AmqpConsumer::builder("amqp://h/%2f", "q")
            .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) });
        assert!(err(no_store).contains("store"));
        assert!(err(AmqpConsumer::builder("amqp://h/%2f", "q")).contains("handler"));
        assert!(err(builder().key_sources([])).contains("key source"));
        assert!(err(builder().settle_timeout(Duration::ZERO)).contains("timeouts"));
    }

    #[test]
    fn scope_defaults_to_the_queue() {
        let c = builder().build().unwrap();
        assert_eq!(c.processor_scope(), "orders");
        let c = builder().scope("billing").build().unwrap();
        assert_eq!(c.processor_scope(), "billing");
        let c = builder().scope(Scope::PerTopic).build().unwrap();
        assert_eq!(c.processor_scope(), "orders");
        let c = builder()
            .scope(Scope::custom("tenant", |_| "t".into()))
            .build()
            .unwrap();
        assert_eq!(c.processor_scope(), "tenant");
        // With only the message_id as key source the engine accepts the configuration.
        assert!(builder().key_source(KeySource::MessageId).build().is_ok());
        assert!(err(builder().fingerprint(FingerprintRule::json_pointers(["x"]))).contains("'/'"));
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
