//! Unit tests of the builder's librdkafka properties: every property reaches the client, fixed
//! ones are refused with a typed error.

use super::*;
use crate::store::MemoryStore;
use crate::HandlerContext;

fn builder() -> KafkaConsumerBuilder {
    KafkaConsumer::builder()
        .topic("orders")
        .store(Arc::new(MemoryStore::new()))
        .handler(|_ctx: HandlerContext| async { Ok::<_, crate::HandlerError>(()) })
}

fn fixed_key(err: KafkaConsumerError) -> (KafkaClient, String) {
    match err {
        KafkaConsumerError::FixedProperty { client, key, .. } => (client, key),
        other => panic!("expected FixedProperty, got {other:?}"),
    }
}

#[test]
fn overriding_auto_commit_or_the_dead_letter_producers_guarantees_fails_the_build() {
    let b = || builder().bootstrap_servers("127.0.0.1:1").group_id("g");
    let cases: [(KafkaConsumerBuilder, KafkaClient, &str); 6] = [
        (
            b().set("enable.auto.commit", "true"),
            KafkaClient::Consumer,
            "enable.auto.commit",
        ),
        (
            b().set_common("enable.auto.offset.store", "true"),
            KafkaClient::Consumer,
            "enable.auto.offset.store",
        ),
        (
            b().producer_set("acks", "1"),
            KafkaClient::DeadLetterProducer,
            "acks",
        ),
        (
            b().set_common("enable.idempotence", "false"),
            KafkaClient::DeadLetterProducer,
            "enable.idempotence",
        ),
        (
            b().producer_set("message.timeout.ms", "600000"),
            KafkaClient::DeadLetterProducer,
            "message.timeout.ms",
        ),
        (
            b().client_config(ClientConfig::new().set("request.required.acks", "0")),
            KafkaClient::DeadLetterProducer,
            "request.required.acks",
        ),
    ];
    for (builder, client, key) in cases {
        let err = builder.build().expect_err(key);
        assert_eq!(fixed_key(err), (client, key.to_string()));
    }
}

#[test]
fn set_and_client_config_carry_bootstrap_and_group_like_their_own_setters() {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", "broker-1:9093")
        .set("group.id", "payments")
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "user")
        .set("sasl.password", "s3cret");
    let b = builder().client_config(&config);
    assert_eq!(b.bootstrap.as_deref(), Some("broker-1:9093"));
    assert_eq!(b.group_id.as_deref(), Some("payments"));
    // The secret is passed as given, not rdkafka's masked placeholder; both clients get it.
    for settings in [&b.consumer_settings, &b.producer_settings] {
        assert!(settings.contains(&("sasl.password".into(), "s3cret".into())));
        assert!(settings.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert!(!settings.iter().any(|(k, _)| k == "bootstrap.servers"));
    }
    let b = builder()
        .set("bootstrap.servers", "a:1")
        .set("group.id", "g1");
    assert_eq!(
        (b.bootstrap.as_deref(), b.group_id.as_deref()),
        (Some("a:1"), Some("g1"))
    );
    assert!(b.consumer_settings.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_librdkafka_property_reaches_the_clients() {
    // The fixed value itself is accepted; a valid property builds (no broker is contacted yet).
    let ok = builder()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("group.id", "g")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.max.bytes", "1048576")
        .producer_set("compression.type", "zstd")
        .producer_set("acks", "all")
        .dead_letter_topic("orders.dlq")
        .build();
    assert!(ok.is_ok(), "{ok:?}");
    // librdkafka sees every property: an unknown one (consumer), and an invalid value (producer).
    for b in [
        builder().set("no.such.property", "1"),
        builder()
            .producer_set("linger.ms", "not-a-number")
            .dead_letter_topic("orders.dlq"),
    ] {
        let err = b
            .bootstrap_servers("127.0.0.1:1")
            .group_id("g")
            .build()
            .expect_err("librdkafka refuses it");
        assert!(
            matches!(
                err,
                KafkaConsumerError::Client(rdkafka::error::KafkaError::ClientConfig(..))
            ),
            "{err:?}"
        );
    }
}

fn config_error(b: KafkaConsumerBuilder) -> ConfigError {
    match b.build() {
        Err(KafkaConsumerError::Config(e)) => e,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn build_reports_typed_errors_that_name_the_setting() {
    let full = || builder().bootstrap_servers("127.0.0.1:1").group_id("g");
    let missing = |b: KafkaConsumerBuilder| match config_error(b) {
        ConfigError::Missing { setting, .. } => setting,
        other => panic!("expected Missing, got {other:?}"),
    };
    assert_eq!(missing(builder().group_id("g")), "bootstrap_servers");
    assert_eq!(missing(builder().bootstrap_servers("h:1")), "group_id");
    let no_topic = KafkaConsumer::builder()
        .bootstrap_servers("h:1")
        .group_id("g")
        .store(Arc::new(MemoryStore::new()))
        .handler(|_ctx: HandlerContext| async { Ok::<_, crate::HandlerError>(()) });
    assert_eq!(missing(no_topic), "topic");
    let no_store = KafkaConsumer::builder()
        .bootstrap_servers("h:1")
        .group_id("g")
        .topic("t")
        .handler(|_ctx: HandlerContext| async { Ok::<_, crate::HandlerError>(()) });
    assert_eq!(missing(no_store), "store");
    let no_handler = KafkaConsumer::builder()
        .bootstrap_servers("h:1")
        .group_id("g")
        .topic("t");
    assert_eq!(missing(no_handler), "handler");

    for (b, name) in [
        (full().partition_concurrency(0), "partition_concurrency"),
        (full().max_in_flight(0), "max_in_flight"),
        (
            full().max_buffered_per_partition(0),
            "max_buffered_per_partition",
        ),
        (full().commit_every(0), "commit_every"),
        (full().commit_interval(Duration::ZERO), "commit_interval"),
    ] {
        let err = config_error(b);
        assert!(
            matches!(err, ConfigError::OutOfRange { setting, .. } if setting == name),
            "{name}: {err:?}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }

    let err = config_error(full().dead_letter_topic("orders"));
    assert!(
        matches!(
            err,
            ConfigError::Conflict {
                setting: "dead_letter_topic",
                other: "topic",
                ..
            }
        ),
        "{err:?}"
    );
    // The engine's own checks come back through the same variant.
    let mut engine = EngineConfig::new("x");
    engine.max_attempts = 0;
    assert_eq!(
        config_error(full().engine_config(engine)).setting(),
        "max_attempts"
    );
    // The wrapper says which consumer it is about, the inner error which setting.
    let text = full().commit_every(0).build().unwrap_err().to_string();
    assert_eq!(
        text,
        "invalid kafka consumer configuration: `commit_every` = 0 is out of range: expected at least 1"
    );
}

#[test]
fn building_outside_a_tokio_runtime_is_a_typed_error() {
    let err = builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id("g")
        .build()
        .unwrap_err();
    assert!(matches!(err, KafkaConsumerError::NoRuntime), "{err:?}");
}
