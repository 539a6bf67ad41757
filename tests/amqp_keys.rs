//! AMQP properties as idempotency keys, with a fingerprint that ignores a re-stamped field, over
//! a real RabbitMQ.
#![cfg(feature = "amqp")]

mod support;

use idemq::fingerprint::FingerprintRule;
use idemq::KeySource;
use lapin::BasicProperties;
use std::time::Duration;
use support::amqp::{consumer, memory, Rabbit, Recorder, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn correlation_id_then_message_id_with_a_restamped_payload() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("corr").await;
    let rec = Recorder::default();
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .key_source(KeySource::CorrelationId)
            .key_source(KeySource::MessageId)
            .fingerprint(FingerprintRule::exclude_fields(["/sent_at"])),
    );
    let corr = || BasicProperties::default().with_correlation_id("req-1".into());
    let mid = || BasicProperties::default().with_message_id("m-9".into());
    let deliveries: [(&[u8], BasicProperties); 5] = [
        (br#"{"amount":1,"sent_at":1}"#, corr()),
        // The producer retried: other key order, new `sent_at`: a replay under this rule.
        (br#"{ "sent_at": 2, "amount": 1 }"#, corr()),
        (br#"{"amount":2}"#, mid()),
        (br#"{"amount":2}"#, mid()),
        // Not JSON under a JSON fingerprint rule: dead-lettered (invalid-payload).
        (b"amount=3", corr()),
    ];
    for (payload, props) in deliveries {
        rabbit.publish_props("", &queue, payload, props).await;
    }
    run.wait(Duration::from_secs(10), "5 settled", |s| s.finished() == 5)
        .await;
    let stats = run.stop().await;
    assert_eq!((stats.processed, stats.replayed), (2, 2), "{stats:?}");
    assert_eq!(stats.dead_lettered + stats.amqp.rejected, 1, "{stats:?}");
    assert_eq!(rec.succeeded("req-1"), 1);
    assert_eq!(rec.succeeded("m-9"), 1);
    assert_eq!(rec.total_successes(), 2);
    rabbit.cleanup().await;
}
