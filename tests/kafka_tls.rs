//! Secured and compressed clusters: librdkafka's built-in features, the consumer and its
//! dead-letter producer over TLS (a private Tansu broker behind stunnel, certificates made by the
//! test), a SASL_SSL + SCRAM-SHA-512 configuration, and a zstd-compressed topic.
#![cfg(feature = "kafka")]

mod support;

use idemq::kafka::{KafkaConsumerBuilder, KafkaConsumerError};
use idemq::store::MemoryStore;
use idemq::{HandlerContext, HandlerError};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::ClientConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::kafka::*;
use support::services::unique;
use support::tls::*;

/// librdkafka as linked (built from source by default, or a system library when the application
/// enables `rdkafka/dynamic-linking`) supports what managed clusters need. Fails if a Cargo.toml
/// change drops a feature.
#[test]
fn librdkafka_is_built_with_tls_sasl_plain_and_scram_and_zstd() {
    let (hex, version) = rdkafka::util::get_rdkafka_version();
    assert!(
        hex >= 0x020c_0100,
        "librdkafka {version} is older than 2.12.1"
    );
    let conf = ClientConfig::new()
        .create_native_config()
        .expect("native config");
    let features = conf.get("builtin.features").expect("builtin.features");
    let features: Vec<&str> = features.split(',').map(str::trim).collect();
    for needed in [
        "ssl",
        "sasl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "zstd",
    ] {
        assert!(
            features.contains(&needed),
            "librdkafka {version} lacks {needed}: {features:?}"
        );
    }
    println!("librdkafka {version} ({hex:#x}): {}", features.join(","));
}

/// A consumer of `topic` over the broker's TLS port, with the TLS properties given once for both
/// the consumer and the dead-letter producer.
fn tls_consumer(
    broker: &TlsBroker,
    group: &str,
    topic: &str,
    dlq: &str,
    runs: &Runs,
) -> KafkaConsumerBuilder {
    let runs = runs.clone();
    let mut b = KafkaConsumerBuilder::new()
        .bootstrap_servers(&broker.bootstrap)
        .group_id(group)
        .topic(topic)
        .dead_letter_topic(dlq)
        .store(Arc::new(MemoryStore::new()))
        .engine_config(fast_engine(group))
        .commit_interval(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(5))
        // Tansu stalls group joins with the default session timeout.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .handler(move |ctx: HandlerContext| {
            let runs = runs.clone();
            async move {
                let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
                runs.record(&key);
                Ok::<_, HandlerError>(key)
            }
        });
    for (k, v) in broker.tls_properties() {
        b = b.set_common(k, v);
    }
    b
}

/// A client with `props` on the TLS port cannot even fetch metadata.
fn metadata_fails(bootstrap: &str, props: &[(&str, &str)]) -> bool {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in props {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer = c.create().expect("client");
    consumer
        .fetch_metadata(None, Duration::from_secs(4))
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_duplicates_run_once_a_bad_record_is_dead_lettered_and_offsets_commit() {
    init_tracing();
    let Some(broker) = TlsBroker::start() else {
        return;
    };
    // The port is TLS only and the certificate is verified: plaintext and an unknown CA fail.
    assert!(
        metadata_fails(&broker.bootstrap, &[]),
        "plaintext must fail"
    );
    assert!(
        metadata_fails(&broker.bootstrap, &[("security.protocol", "ssl")]),
        "TLS without the test CA must fail verification"
    );

    let (topic, group) = (unique("tls"), unique("g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 2).await;
    broker.create_topic(&dlq, 1).await;
    let mut recs = Vec::new();
    for copy in 0..2 {
        for k in 0..10 {
            recs.push(Rec::keyed(&format!("order-{k}"), "{}").on((k + copy) % 2));
        }
    }
    let mut no_key = Rec::keyed("x", "no key").on(0);
    no_key.headers = vec![("trace".into(), b"t-9".to_vec())];
    recs.push(no_key);
    let tls = broker.client_config();
    produce_with(&tls, &[], &topic, &recs).await;

    let runs = Runs::default();
    let consumer = tls_consumer(&broker, &group, &topic, &dlq, &runs)
        .build()
        .expect("TLS consumer builds");
    let c = Running::start(consumer);
    let stats = c.stats.clone();
    wait_for("21 records finished", Duration::from_secs(60), || {
        stats.snapshot().finished() >= 21
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = committed_with(&tls, &group, &topic, 2);
        if got == [11, 10] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed {got:?}, expected [11, 10]"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = c.shutdown().await;
    assert_eq!(runs.repeated(), vec![], "no key may run twice");
    assert_eq!(runs.distinct(), 10, "handler runs == distinct keys");
    assert_eq!(
        (s.processed, s.replayed, s.dead_lettered),
        (10, 10, 1),
        "{s:?}"
    );

    let dead = read_all_with(&tls, &dlq, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1, "one dead letter over TLS");
    assert_eq!(
        header(&dead[0], "x-idemq-reason").as_deref(),
        Some("missing-idempotency-key")
    );
    assert_eq!(header(&dead[0], "trace").as_deref(), Some("t-9"));
    assert_eq!(
        header(&dead[0], "x-idemq-source-topic").as_deref(),
        Some(topic.as_str())
    );
}

/// Errors librdkafka reports through the client context.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error:?}: {reason}"));
    }
}

impl ConsumerContext for Errors {}

fn scram(broker: &TlsBroker, mechanism: &str) -> Vec<(&'static str, String)> {
    let mut props = broker.tls_properties();
    props[0] = ("security.protocol", "SASL_SSL".to_string());
    props.extend([
        ("sasl.mechanisms", mechanism.to_string()),
        ("sasl.username", "idemq".to_string()),
        ("sasl.password", "not-checked-here".to_string()),
    ]);
    props
}

/// A SASL_SSL + SCRAM-SHA-512 configuration end to end as far as it can go here: librdkafka
/// accepts it (an unsupported mechanism is refused by `build`), the consumer starts and stops with
/// it, and against a broker that requires SCRAM (Tansu `--authentication`, behind TLS) the client
/// completes the TLS handshake and the SCRAM exchange and is refused at the credential check: no
/// SCRAM user can be created on Tansu's in-memory storage, so a successful login is not tested.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sasl_ssl_scram_sha_512_is_accepted_and_fails_on_the_credentials_not_the_configuration() {
    init_tracing();
    let Some(broker) = TlsBroker::start_authenticating() else {
        return;
    };
    let (topic, group) = (unique("scram"), unique("g"));
    let with = |mechanism: &str| {
        let mut b = tls_consumer(&broker, &group, &topic, "scram.dlq", &Runs::default());
        for (k, v) in scram(&broker, mechanism) {
            b = b.set_common(k, v);
        }
        b
    };
    match with("SCRAM-SHA-999").build() {
        Err(KafkaConsumerError::Client(_)) => {}
        other => panic!("an unsupported mechanism must fail the build: {other:?}"),
    }
    let consumer = with("SCRAM-SHA-512")
        .build()
        .expect("SASL_SSL + SCRAM-SHA-512 is a valid configuration");
    let c = Running::start(consumer);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = c.shutdown().await;
    assert_eq!(s.received, 0, "{s:?}");

    // The same properties on a plain client, whose context collects librdkafka's errors.
    let errors_with = |props: Vec<(&'static str, String)>| {
        let errors = Errors::default();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &broker.bootstrap)
            .set_log_level(RDKafkaLogLevel::Emerg);
        for (k, v) in props {
            config.set(k, v);
        }
        let client: BaseConsumer<Errors> =
            config.create_with_context(errors.clone()).expect("client");
        let deadline = Instant::now() + Duration::from_secs(15);
        while errors.0.lock().unwrap().is_empty() && Instant::now() < deadline {
            // Errors reach the context while the client is polled.
            let _ = client.poll(Duration::from_millis(100));
            let _ = client.fetch_metadata(None, Duration::from_millis(200));
        }
        let seen = errors.0.lock().unwrap().clone();
        seen
    };
    let seen = errors_with(scram(&broker, "SCRAM-SHA-512"));
    println!("SCRAM-SHA-512 client: {seen:#?}");
    // librdkafka's SCRAM client sent its client-first message; the broker answered `e=unknown-user`.
    assert!(
        seen.iter().any(|e| e.contains("Authentication")
            && e.contains("SCRAM")
            && e.contains("unknown-user")),
        "expected a SCRAM authentication failure at the credential check, got {seen:?}"
    );
}

/// Producer statistics: payload bytes produced vs bytes sent on the wire.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Option<(i64, i64, i64)>>>);

impl ClientContext for Wire {
    fn stats(&self, s: Statistics) {
        *self.0.lock().unwrap() = Some((s.txmsgs, s.txmsg_bytes, s.tx_bytes));
    }
}

/// On librdkafka's MockCluster (stores the batches as sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zstd_compressed_topic_is_consumed_with_dedup() {
    init_tracing();
    zstd_topic_consumed_with_dedup(&Broker::mock()).await;
}

/// On Tansu, which decodes the record batches it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_a_zstd_compressed_topic_is_consumed_with_dedup() {
    init_tracing();
    let Some(broker) = Broker::tansu() else {
        return;
    };
    zstd_topic_consumed_with_dedup(&broker).await;
}

/// Records produced with `compression.type=zstd` are consumed with deduplication: handler runs ==
/// distinct keys. The producer's statistics show the batches really were compressed.
async fn zstd_topic_consumed_with_dedup(broker: &Broker) {
    let (topic, group) = (unique("zstd"), unique("g"));
    broker.create_topic(&topic, 2).await;
    let (keys, copies) = (20, 2);
    let wire = Wire::default();
    let producer: FutureProducer<Wire> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("compression.type", "zstd")
        .set("linger.ms", "20")
        .set("statistics.interval.ms", "100")
        .create_with_context(wire.clone())
        .expect("zstd producer");
    // 4 KiB of repetitive JSON per record: compresses well.
    let body = format!("{{\"items\":\"{}\"}}", "sku-0001,".repeat(455));
    let names: Vec<String> = (0..keys).map(|k| format!("order-{k}")).collect();
    let mut sends = Vec::new();
    for copy in 0..copies {
        for (k, key) in names.iter().enumerate() {
            let k = k as i32;
            let record = FutureRecord::to(&topic)
                .key(key)
                .partition((k + copy) % 2)
                .payload(&body)
                .headers(
                    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                        key: "Idempotency-Key",
                        value: Some(key),
                    }),
                );
            sends.push(producer.send(record, Duration::from_secs(10)));
        }
    }
    for r in futures::future::join_all(sends).await {
        r.expect("delivered");
    }
    let total = (keys * copies) as i64;
    wait_for("producer statistics", Duration::from_secs(10), || {
        wire.0.lock().unwrap().is_some_and(|(n, _, _)| n >= total)
    })
    .await;
    let (msgs, payload_bytes, wire_bytes) = wire.0.lock().unwrap().expect("stats");
    println!("zstd: {msgs} records, {payload_bytes} payload bytes, {wire_bytes} bytes sent");
    assert!(
        wire_bytes * 4 < payload_bytes,
        "batches were not compressed: {wire_bytes} bytes sent for {payload_bytes} payload bytes"
    );

    let runs = Runs::default();
    let c = Running::start(consumer(
        broker,
        &group,
        &topic,
        Arc::new(MemoryStore::new()),
        &runs,
        0,
        |b| b,
    ));
    let stats = c.stats.clone();
    wait_for("every record finished", Duration::from_secs(30), || {
        stats.snapshot().finished() >= total as u64
    })
    .await;
    wait_committed(
        &broker.bootstrap(),
        &group,
        &topic,
        &[keys as i64, keys as i64],
        Duration::from_secs(10),
    )
    .await;
    let s = c.shutdown().await;
    assert_eq!(runs.repeated(), vec![], "no key may run twice");
    assert_eq!(
        runs.distinct(),
        keys as usize,
        "handler runs == distinct keys"
    );
    assert_eq!(
        (s.processed, s.replayed),
        (keys as u64, keys as u64),
        "{s:?}"
    );
}
