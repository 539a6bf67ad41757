//! Unit tests of the builder's librdkafka properties: every property reaches the client, fixed
//! ones are refused with a typed error.

use super::*;
use crate::store::MemoryStore;
use crate::HandlerContext;

fn builder() -> KafkaConsumerBuilder {
    KafkaConsumerBuilder::new()
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
