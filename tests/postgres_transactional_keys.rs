//! The Postgres transactional engine resolves key sources, per-message scopes and fingerprint
//! rules exactly as `Engine` does.
#![cfg(feature = "postgres")]

mod support;

use idemq::fingerprint::FingerprintRule;
use idemq::message::KafkaMetadata;
use idemq::store::{RecordKey, Store};
use idemq::transactional::{from_fn_with, TransactionalEngine};
use idemq::{
    CancellationToken, DeadLetterReason, Disposition, EngineConfig, HandlerError, IdempotencyKey,
    KeySource, Message, Scope,
};
use std::sync::{Arc, Mutex};
use support::postgres::shared_store;
use support::services::unique;

#[tokio::test]
async fn per_topic_scope_record_key_and_exclude_fields() {
    let Some(store) = shared_store().await else {
        return;
    };
    let mut cfg = EngineConfig::new(Scope::PerTopic);
    cfg.key.sources = vec![KeySource::KafkaKey];
    cfg.fingerprint = FingerprintRule::exclude_fields(["/sent_at"]);
    let scopes: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = scopes.clone();
    let engine = TransactionalEngine::new(
        store.clone(),
        cfg,
        from_fn_with(seen, async |seen, ctx, _tx| {
            seen.lock().expect("lock").push(ctx.scope.to_string());
            Ok::<_, HandlerError>("done")
        }),
    )
    .expect("engine");
    // Topic names are the scopes here: unique so the shared table has no records of them yet.
    let (a, b) = (unique("topic-a"), unique("topic-b"));
    let msg = |topic: &str, offset: i64, payload: &str| {
        let meta = KafkaMetadata::new(topic, 0, offset).with_key("k-1");
        Arc::new(Message::from_kafka(payload.to_string(), meta))
    };
    let stop = CancellationToken::new();
    let decide = |m| {
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.process(m, &stop).await }
    };
    let first = r#"{"amount":5,"sent_at":"10:00"}"#;
    let retry = r#"{ "sent_at": "10:07", "amount": 5 }"#;
    assert_eq!(decide(msg(&a, 1, first)).await.decision(), "processed");
    assert_eq!(decide(msg(&b, 1, first)).await.decision(), "processed");
    assert_eq!(decide(msg(&a, 2, retry)).await.decision(), "replayed");
    match decide(msg(&a, 3, "not json")).await {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, DeadLetterReason::InvalidPayload),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(*scopes.lock().unwrap(), [a.clone(), b.clone()]);
    for topic in [a, b] {
        let key = RecordKey::new(topic, IdempotencyKey::new("k-1").unwrap());
        assert!(store.get(&key).await.unwrap().is_some(), "{key}");
    }
}
