//! [`KafkaConsumerBuilder`]: everything a [`KafkaConsumer`] needs, with sane defaults.

use super::consumer::KafkaConsumer;
use super::error::KafkaConsumerError;
use super::hooks::KafkaHooks;
use super::properties::{check_fixed, route, KafkaClient, Routed};
use crate::engine::{ConfigError, Engine, EngineConfig, Processor};
use crate::fingerprint::FingerprintRule;
use crate::handler::Handler;
use crate::key::{KeySource, Scope};
use crate::store::Store;
use rdkafka::config::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

type ProcessorFactory = Box<
    dyn FnOnce(Arc<dyn Store>, EngineConfig) -> Result<Arc<dyn Processor>, KafkaConsumerError>
        + Send,
>;

enum ProcessorSource {
    Handler(ProcessorFactory),
    Ready(Arc<dyn Processor>),
}

/// Settings of the consumer loop, resolved by [`KafkaConsumerBuilder::build`].
#[derive(Clone, Debug)]
pub(crate) struct LoopSettings {
    pub(crate) topics: Vec<String>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) partition_concurrency: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_buffered_per_partition: usize,
    pub(crate) commit_every: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) dead_letter_timeout: Duration,
    pub(crate) no_dead_letter_retry: Duration,
}

/// Builds a [`KafkaConsumer`]; start one with [`KafkaConsumer::builder`].
///
/// Required: [`bootstrap_servers`](Self::bootstrap_servers), [`group_id`](Self::group_id), at least
/// one [`topic`](Self::topic), and either [`handler`](Self::handler) plus [`store`](Self::store), or
/// [`processor`](Self::processor).
///
/// Any librdkafka property can be given with [`set`](Self::set) (consumer),
/// [`producer_set`](Self::producer_set) (dead-letter producer), [`set_common`](Self::set_common)
/// (both) or [`client_config`](Self::client_config) (a whole rdkafka `ClientConfig`, both).
/// Properties idemq relies on are fixed, and overriding them fails [`build`](Self::build) with
/// [`KafkaConsumerError::FixedProperty`]: `enable.auto.commit=false` and
/// `enable.auto.offset.store=false` (offsets are committed by idemq once messages are finished);
/// on the dead-letter producer `enable.idempotence=true`, `acks=all` and `message.timeout.ms` (from
/// [`dead_letter_timeout`](Self::dead_letter_timeout)). `auto.offset.reset` is `earliest` unless
/// you set it.
///
/// [`build`](Self::build) checks everything and reports the first problem as a typed
/// [`KafkaConsumerError::Config`] naming the setting (missing, out of range, conflicting).
///
/// Escape hatches for what idemq does not wrap: any librdkafka property (above), a whole
/// [`ClientConfig`], and [`hooks`](Self::hooks) for librdkafka's rebalance, statistics, error and
/// commit events.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use idemq::kafka::KafkaConsumer;
/// use idemq::store::MemoryStore;
/// use idemq::{CancellationToken, HandlerContext, HandlerError};
/// use rdkafka::ClientConfig;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let mut security = ClientConfig::new(); // e.g. loaded from the deployment's settings
/// security.set("security.protocol", "SSL").set("ssl.ca.location", "/etc/kafka/ca.pem");
/// let consumer = KafkaConsumer::builder()
///     .bootstrap_servers("broker-1:9093")
///     .group_id("billing")
///     .topics(["orders", "refunds"])
///     .client_config(&security)
///     .set("session.timeout.ms", "15000")
///     .partition_concurrency(4)
///     .commit_interval(Duration::from_millis(500))
///     .dead_letter_topic("billing.dlq")
///     .store(Arc::new(MemoryStore::new()))
///     .handler(|ctx: HandlerContext| async move { Ok::<_, HandlerError>(ctx.message.payload.len()) })
///     .build()?;
/// let stats = consumer.stats(); // live counters, e.g. for a metrics endpoint
/// let stop = CancellationToken::new();
/// let totals = consumer.run(stop).await?;
/// assert_eq!(totals.received, stats.snapshot().received);
/// # Ok(()) }
/// ```
///
/// Keys, scopes and fingerprints ([`key_source`](Self::key_source), [`scope`](Self::scope),
/// [`fingerprint`](Self::fingerprint)) follow the same rules as on the AMQP builder:
///
/// ```no_run
/// # fn demo(store: std::sync::Arc<dyn idemq::Store>) -> Result<(), idemq::kafka::KafkaConsumerError> {
/// use idemq::fingerprint::FingerprintRule;
/// use idemq::kafka::KafkaConsumer;
/// use idemq::{HandlerContext, HandlerError, KeySource, Scope};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let consumer = KafkaConsumer::builder()
///     .bootstrap_servers("localhost:9092")
///     .group_id("billing")
///     .topics(["orders", "refunds"])
///     .key_source(KeySource::header("Idempotency-Key"))
///     .key_source(KeySource::KafkaKey) // when the header is absent
///     .scope(Scope::PerTopic) // keys in "billing/orders" and "billing/refunds"
///     .fingerprint(FingerprintRule::exclude_fields(["/sent_at"]))
///     .store(store)
///     .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
///     .build()?;
/// # let _ = consumer; Ok(()) })
/// # }
/// ```
pub struct KafkaConsumerBuilder {
    bootstrap: Option<String>,
    group_id: Option<String>,
    scope: Option<Scope>,
    key_sources: Option<Vec<KeySource>>,
    fingerprint: Option<FingerprintRule>,
    consumer_settings: Vec<(String, String)>,
    producer_settings: Vec<(String, String)>,
    store: Option<Arc<dyn Store>>,
    engine_config: Option<EngineConfig>,
    processor: Option<ProcessorSource>,
    settings: LoopSettings,
    hooks: Option<Arc<dyn KafkaHooks>>,
}

impl Default for KafkaConsumerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KafkaConsumerBuilder {
    /// A builder with the defaults: one message at a time per partition, 64 in flight overall,
    /// commits every 100 finished messages or 1 s, 10 s to drain on revocation, 30 s on shutdown.
    pub fn new() -> Self {
        Self {
            bootstrap: None,
            group_id: None,
            scope: None,
            key_sources: None,
            fingerprint: None,
            consumer_settings: Vec::new(),
            producer_settings: Vec::new(),
            store: None,
            engine_config: None,
            processor: None,
            settings: LoopSettings {
                topics: Vec::new(),
                dead_letter_topic: None,
                partition_concurrency: 1,
                max_in_flight: 64,
                max_buffered_per_partition: 1000,
                commit_every: 100,
                commit_interval: Duration::from_secs(1),
                revoke_timeout: Duration::from_secs(10),
                shutdown_timeout: Duration::from_secs(30),
                dead_letter_timeout: Duration::from_secs(30),
                no_dead_letter_retry: Duration::from_secs(30),
            },
            hooks: None,
        }
    }

    /// `bootstrap.servers`, e.g. `localhost:9092`.
    pub fn bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.bootstrap = Some(servers.into());
        self
    }

    /// `group.id`; also the default scope of the idempotency keys.
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.group_id = Some(group.into());
        self
    }

    /// Static group membership (`group.instance.id`, Kafka 2.3+): a member that restarts with the
    /// same id within `session.timeout.ms` gets its partitions back without a rebalance, so a
    /// killed and replaced consumer costs no session timeout. Give every consumer of the group its
    /// own stable id (e.g. the pod name of a StatefulSet). A static member does not leave the group
    /// when it stops: its partitions wait for it up to the session timeout.
    pub fn group_instance_id(mut self, id: impl Into<String>) -> Self {
        self.consumer_settings
            .push(("group.instance.id".into(), id.into()));
        self
    }

    /// Adds a topic to subscribe to.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.settings.topics.push(topic.into());
        self
    }

    /// Adds several topics.
    pub fn topics<I, S>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.settings
            .topics
            .extend(topics.into_iter().map(Into::into));
        self
    }

    /// Key namespace; defaults to the group id. A name, or a [`Scope`]:
    /// [`Scope::PerTopic`] claims each topic's keys in `{group}/{topic}`. Overrides the scope of
    /// [`engine_config`](Self::engine_config).
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

    /// A librdkafka property for the consumer (e.g. `session.timeout.ms`); any property of
    /// librdkafka's CONFIGURATION.md can be given. `bootstrap.servers` and `group.id` are the same
    /// as [`bootstrap_servers`](Self::bootstrap_servers) and [`group_id`](Self::group_id).
    /// Properties idemq fixes (`enable.auto.commit`, `enable.auto.offset.store`) make
    /// [`build`](Self::build) fail with [`KafkaConsumerError::FixedProperty`] unless given the
    /// fixed value; unknown properties or invalid values with [`KafkaConsumerError::Client`].
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        if !self.route(&key, &value) {
            self.consumer_settings.push((key, value));
        }
        self
    }

    /// A librdkafka property for both the consumer and the dead-letter producer: the connection
    /// and security properties (`security.protocol`, `ssl.*`, `sasl.*`, `client.id`, ...).
    pub fn set_common(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        if !self.route(&key, &value) {
            self.producer_settings.push((key.clone(), value.clone()));
            self.consumer_settings.push((key, value));
        }
        self
    }

    /// A librdkafka property for the dead-letter producer only (e.g. `compression.type`). The
    /// producer's fixed properties (`enable.idempotence=true`, `acks=all`, `message.timeout.ms`
    /// from [`dead_letter_timeout`](Self::dead_letter_timeout)) make [`build`](Self::build) fail
    /// with [`KafkaConsumerError::FixedProperty`] unless given the fixed value.
    pub fn producer_set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_settings.push((key.into(), value.into()));
        self
    }

    /// Every property of an rdkafka [`ClientConfig`], each as if given to
    /// [`set_common`](Self::set_common): the escape hatch for configurations built or loaded
    /// elsewhere (secrets included; only the log level of `config` is not carried over).
    pub fn client_config(mut self, config: &ClientConfig) -> Self {
        // `config_map` masks secrets such as `sasl.password`; `get` returns the real value.
        for key in config.config_map().into_keys() {
            if let Some(value) = config.get(key) {
                self = self.set_common(key, value);
            }
        }
        self
    }

    /// Callbacks for librdkafka's rebalance, statistics, error and commit events, called by
    /// idemq's own consumer context after its own handling (idemq needs that context, so it does
    /// not take a custom one). See [`KafkaHooks`].
    pub fn hooks(mut self, hooks: impl KafkaHooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// Takes the properties the builder has its own setting for; `true` if `key` was one.
    fn route(&mut self, key: &str, value: &str) -> bool {
        match route(key) {
            Some(Routed::Bootstrap) => self.bootstrap = Some(value.to_string()),
            Some(Routed::GroupId) => self.group_id = Some(value.to_string()),
            None => return false,
        }
        true
    }

    /// The store holding claims and outcomes (required with [`handler`](Self::handler)).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Engine settings (key sources, missing-key policy, lease, retention, retries). Its scope is
    /// replaced by [`scope`](Self::scope) or the group id.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine_config = Some(config);
        self
    }

    /// The handler; an [`Engine`] is built from it, the [`store`](Self::store) and the
    /// [`engine_config`](Self::engine_config).
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        let factory: ProcessorFactory = Box::new(move |store, config| {
            let engine = Engine::new(store, config, handler)?;
            Ok(Arc::new(engine) as Arc<dyn Processor>)
        });
        self.processor = Some(ProcessorSource::Handler(factory));
        self
    }

    /// A ready processor (an [`Engine`] you built, or the Postgres transactional engine) instead of
    /// a handler; [`store`](Self::store), [`engine_config`](Self::engine_config) and the scope, key
    /// and fingerprint settings are then unused (the processor has its own).
    pub fn processor(mut self, processor: Arc<dyn Processor>) -> Self {
        self.processor = Some(ProcessorSource::Ready(processor));
        self
    }

    /// Topic that receives messages the engine dead-letters (conflicts, missing or invalid keys,
    /// permanent failures, exhausted retries). Without one, such a message is logged as an error and
    /// its partition does not commit past it; it is tried again every 30 s.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.settings.dead_letter_topic = Some(topic.into());
        self
    }

    /// The same as [`dead_letter_topic`](Self::dead_letter_topic), under the name the AMQP
    /// builder uses too (`AmqpConsumerBuilder::dead_letter`).
    pub fn dead_letter(self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic(topic)
    }

    /// Handlers running at the same time for one partition (default 1, which keeps the order of a
    /// partition). Commits never pass an unfinished message either way.
    ///
    /// Above 1, up to three times as many records of the partition are in process: the extra
    /// ones are being claimed or are storing their outcome, which take no handler slot (see
    /// [`HandlerSlots`](crate::HandlerSlots)), so store latency does not cut into the handler
    /// concurrency. At 1, one record is in process at a time.
    pub fn partition_concurrency(mut self, n: usize) -> Self {
        self.settings.partition_concurrency = n;
        self
    }

    /// Handlers running at the same time over all partitions (default 64). Records in process
    /// (claimed, running, or storing the outcome) are bounded at three times this.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.settings.max_in_flight = n;
        self
    }

    /// Received messages a partition may queue before it is paused (default 1000).
    pub fn max_buffered_per_partition(mut self, n: usize) -> Self {
        self.settings.max_buffered_per_partition = n;
        self
    }

    /// Commit after this many finished messages (default 100) or [`commit_interval`](Self::commit_interval),
    /// whichever comes first.
    pub fn commit_every(mut self, messages: usize) -> Self {
        self.settings.commit_every = messages;
        self
    }

    /// Longest time a finished message waits for its commit (default 1 s).
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.settings.commit_interval = interval;
        self
    }

    /// How long a revocation waits for in-flight messages of the revoked partitions (default 10 s).
    /// Keep it well below `max.poll.interval.ms`.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.settings.revoke_timeout = timeout;
        self
    }

    /// How long shutdown waits for in-flight messages before the final commit (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.settings.shutdown_timeout = timeout;
        self
    }

    /// How long to wait for the broker to confirm one dead-letter publish (default 30 s).
    pub fn dead_letter_timeout(mut self, timeout: Duration) -> Self {
        self.settings.dead_letter_timeout = timeout;
        self
    }

    /// Without a dead-letter topic, how long to wait before trying a dead-letter-bound message again
    /// (default 30 s).
    pub fn no_dead_letter_retry(mut self, delay: Duration) -> Self {
        self.settings.no_dead_letter_retry = delay;
        self
    }

    /// Checks the settings, creates the librdkafka clients and subscribes.
    ///
    /// Must be called inside a Tokio runtime. Use the multi-threaded runtime: revocation waits for
    /// in-flight handlers while librdkafka's rebalance callback blocks one worker thread.
    pub fn build(self) -> Result<KafkaConsumer, KafkaConsumerError> {
        let dlt = self.settings.dead_letter_timeout;
        let consumer_settings = check_fixed(KafkaClient::Consumer, self.consumer_settings, dlt)?;
        let producer_settings =
            check_fixed(KafkaClient::DeadLetterProducer, self.producer_settings, dlt)?;
        let bootstrap = self.bootstrap.ok_or(ConfigError::missing(
            "bootstrap_servers",
            "the brokers to connect to, e.g. localhost:9092",
        ))?;
        let group = self.group_id.ok_or(ConfigError::missing(
            "group_id",
            "the consumer group (also the default scope of the keys)",
        ))?;
        let s = &self.settings;
        if s.topics.is_empty() {
            return Err(ConfigError::missing("topic", "at least one topic to subscribe to").into());
        }
        for (setting, value) in [
            ("partition_concurrency", s.partition_concurrency),
            ("max_in_flight", s.max_in_flight),
            ("max_buffered_per_partition", s.max_buffered_per_partition),
            ("commit_every", s.commit_every),
        ] {
            if value == 0 {
                return Err(ConfigError::out_of_range(setting, 0, "at least 1").into());
            }
        }
        if s.commit_interval.is_zero() {
            return Err(ConfigError::out_of_range(
                "commit_interval",
                format!("{:?}", s.commit_interval),
                "above zero",
            )
            .into());
        }
        if let Some(dlq) = &s.dead_letter_topic {
            if s.topics.contains(dlq) {
                return Err(ConfigError::conflict(
                    "dead_letter_topic",
                    "topic",
                    format!("{dlq:?} is also consumed: dead-lettered messages would loop"),
                )
                .into());
            }
        }
        let processor = match self.processor {
            Some(ProcessorSource::Ready(p)) => p,
            Some(ProcessorSource::Handler(factory)) => {
                let store = self.store.ok_or(ConfigError::missing(
                    "store",
                    "a handler needs a store for claims and outcomes",
                ))?;
                let mut config = self
                    .engine_config
                    .unwrap_or_else(|| EngineConfig::new(group.clone()));
                let scope = self.scope.unwrap_or_else(|| Scope::Fixed(group.clone()));
                config.scope = scope.under_group(&group);
                if let Some(sources) = self.key_sources {
                    config.key.sources = sources;
                }
                if let Some(rule) = self.fingerprint {
                    config.fingerprint = rule;
                }
                factory(store, config)?
            }
            None => {
                return Err(ConfigError::missing(
                    "handler",
                    "a handler (with a store) or a ready processor",
                )
                .into())
            }
        };
        KafkaConsumer::create(super::consumer::ClientSettings {
            bootstrap,
            group,
            consumer_settings,
            producer_settings,
            processor,
            settings: self.settings,
            hooks: self.hooks,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
