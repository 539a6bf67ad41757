//! Key sources, scopes and fingerprint rules through the engine, on the memory store: what a
//! service configures on either consumer, checked end to end (claim, handler run, replay).

use idemq::fingerprint::FingerprintRule;
use idemq::message::{AmqpMetadata, AmqpProperties, KafkaMetadata};
use idemq::store::{MemoryStore, RecordKey, Store};
use idemq::{
    CancellationToken, DeadLetterReason, Disposition, Engine, EngineConfig, HandlerContext,
    HandlerError, IdempotencyKey, KeySource, Message, Scope, Source,
};
use std::sync::{Arc, Mutex};

/// What the handler saw on each run: key, scope, Kafka topic.
type Seen = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

fn engine(store: Arc<MemoryStore>, cfg: EngineConfig) -> (Engine<impl idemq::Handler>, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let engine = Engine::new(store, cfg, move |ctx: HandlerContext| {
        let s = s.clone();
        async move {
            let key = ctx.key.as_ref().map(|k| k.to_string()).unwrap_or_default();
            let topic = ctx.kafka().map(|k| k.topic.clone());
            s.lock()
                .expect("lock")
                .push((key, ctx.scope.to_string(), topic));
            Ok::<_, HandlerError>("done")
        }
    })
    .expect("engine");
    (engine, seen)
}

fn config(sources: impl IntoIterator<Item = KeySource>) -> EngineConfig {
    let mut c = EngineConfig::new("svc");
    c.key.sources = sources.into_iter().collect();
    c
}

fn other(payload: &str) -> Message {
    Message::new(payload.to_string(), Source::Other("test".into()))
}

fn kafka(topic: &str, offset: i64, key: &str, payload: &str) -> Arc<Message> {
    let meta = KafkaMetadata::new(topic, 0, offset).with_key(key.to_string());
    Arc::new(Message::from_kafka(payload.to_string(), meta))
}

fn amqp(tag: u64, props: AmqpProperties, payload: &str) -> Arc<Message> {
    let meta = AmqpMetadata::new("orders", "shop", "order.created", tag).with_properties(props);
    Arc::new(Message::from_amqp(payload.to_string(), meta))
}

async fn run(engine: &Engine<impl idemq::Handler>, m: &Arc<Message>) -> Disposition {
    engine.process(m.clone(), &CancellationToken::new()).await
}

fn decision(d: &Disposition) -> &'static str {
    d.decision()
}

fn dead_letter_reason(d: &Disposition) -> Option<DeadLetterReason> {
    match d {
        Disposition::DeadLetter(dl) => Some(dl.reason),
        _ => None,
    }
}

#[tokio::test]
async fn json_pointer_key_deduplicates_by_a_payload_field() {
    let (e, seen) = engine(
        Arc::new(MemoryStore::new()),
        config([KeySource::json_pointer("/order/id")]),
    );
    let first = Arc::new(other(r#"{"order":{"id":"o-1"},"amount":5}"#));
    assert_eq!(decision(&run(&e, &first).await), "processed");
    assert_eq!(decision(&run(&e, &first).await), "replayed");
    // Numbers are keys too (their decimal text).
    let numeric = Arc::new(other(r#"{"order":{"id":17}}"#));
    assert_eq!(decision(&run(&e, &numeric).await), "processed");
    let keys: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(keys, ["o-1", "17"]);
    // A payload that is not JSON is an invalid key: dead-lettered, handler not run, no panic.
    let d = run(&e, &Arc::new(other("<order id='1'/>"))).await;
    assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::InvalidKey));
    match &d {
        Disposition::DeadLetter(dl) => assert!(dl.error.contains("not JSON"), "{}", dl.error),
        other => panic!("{other:?}"),
    }
    // JSON without the field: missing.
    let d = run(&e, &Arc::new(other(r#"{"order":{}}"#))).await;
    assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::MissingKey));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn kafka_record_key_is_the_idempotency_key() {
    let (e, seen) = engine(
        Arc::new(MemoryStore::new()),
        config([KeySource::header("Idempotency-Key"), KeySource::KafkaKey]),
    );
    assert_eq!(
        decision(&run(&e, &kafka("orders", 1, "order-7", "{}")).await),
        "processed"
    );
    // The producer retried: same record key, later offset.
    assert_eq!(
        decision(&run(&e, &kafka("orders", 2, "order-7", "{}")).await),
        "replayed"
    );
    // The header, when present, wins over the record key.
    let with_header = Arc::new(
        Message::from_kafka("{}", KafkaMetadata::new("orders", 0, 3).with_key("order-7"))
            .with_header("Idempotency-Key", "h-1"),
    );
    assert_eq!(decision(&run(&e, &with_header).await), "processed");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0],
        ("order-7".into(), "svc".into(), Some("orders".into()))
    );
    assert_eq!(seen[1].0, "h-1");
    // A null record key (and no header) is a missing key.
    let null_key = Arc::new(Message::from_kafka(
        "{}",
        KafkaMetadata::new("orders", 0, 4),
    ));
    assert_eq!(
        dead_letter_reason(&run(&e, &null_key).await),
        Some(DeadLetterReason::MissingKey)
    );
}

#[tokio::test]
async fn amqp_correlation_id_then_message_id() {
    let (e, seen) = engine(
        Arc::new(MemoryStore::new()),
        config([KeySource::CorrelationId, KeySource::MessageId]),
    );
    let by_correlation = AmqpProperties::default()
        .with_correlation_id("req-1")
        .with_message_id("m-1");
    assert_eq!(
        decision(&run(&e, &amqp(1, by_correlation.clone(), "p")).await),
        "processed"
    );
    assert_eq!(
        decision(&run(&e, &amqp(2, by_correlation, "p")).await),
        "replayed"
    );
    let by_message_id = AmqpProperties::default().with_message_id("m-2");
    assert_eq!(
        decision(&run(&e, &amqp(3, by_message_id, "p")).await),
        "processed"
    );
    let keys: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(keys, ["req-1", "m-2"]);
}

#[tokio::test]
async fn custom_key_function() {
    let tenant_order = KeySource::custom(|m: &Message| {
        let tenant = m.header("tenant")??;
        let order = m.header("order")??;
        Some(format!(
            "{}:{}",
            String::from_utf8_lossy(tenant),
            String::from_utf8_lossy(order)
        ))
    });
    let (e, seen) = engine(Arc::new(MemoryStore::new()), config([tenant_order]));
    let m = |tenant: &str| {
        Arc::new(
            other("p")
                .with_header("tenant", tenant.to_string())
                .with_header("order", "7"),
        )
    };
    assert_eq!(decision(&run(&e, &m("acme")).await), "processed");
    assert_eq!(decision(&run(&e, &m("acme")).await), "replayed");
    assert_eq!(decision(&run(&e, &m("globex")).await), "processed");
    let keys: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(keys, ["acme:7", "globex:7"]);
    // The function found nothing: missing key.
    assert_eq!(
        dead_letter_reason(&run(&e, &Arc::new(other("p"))).await),
        Some(DeadLetterReason::MissingKey)
    );
}

#[tokio::test]
async fn per_topic_scope_runs_the_same_key_once_per_topic() {
    let store = Arc::new(MemoryStore::new());
    let mut cfg = config([KeySource::KafkaKey]);
    cfg.scope = Scope::PerTopic;
    let (e, seen) = engine(store.clone(), cfg);
    assert_eq!(
        decision(&run(&e, &kafka("orders", 1, "k", "p")).await),
        "processed"
    );
    assert_eq!(
        decision(&run(&e, &kafka("refunds", 1, "k", "p")).await),
        "processed"
    );
    assert_eq!(
        decision(&run(&e, &kafka("orders", 2, "k", "p")).await),
        "replayed"
    );
    assert_eq!(
        decision(&run(&e, &kafka("refunds", 2, "k", "p")).await),
        "replayed"
    );
    let scopes: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(scopes, ["orders", "refunds"]);
    let key = IdempotencyKey::new("k").unwrap();
    for topic in ["orders", "refunds"] {
        let record = store
            .get(&RecordKey::new(topic, key.clone()))
            .await
            .unwrap();
        assert!(record.is_some(), "no record in scope {topic}");
    }
    // With one fixed scope the second topic's copy is a replay.
    let (e, _) = engine(Arc::new(MemoryStore::new()), config([KeySource::KafkaKey]));
    assert_eq!(
        decision(&run(&e, &kafka("orders", 1, "k", "p")).await),
        "processed"
    );
    assert_eq!(
        decision(&run(&e, &kafka("refunds", 1, "k", "p")).await),
        "replayed"
    );
}

#[tokio::test]
async fn custom_scope_function_and_its_empty_result() {
    let mut cfg = config([KeySource::header("Idempotency-Key")]);
    cfg.scope = Scope::custom("tenant", |m: &Message| {
        m.header("tenant")
            .flatten()
            .map(|t| format!("billing/{}", String::from_utf8_lossy(t)))
            .unwrap_or_default()
    });
    let (e, seen) = engine(Arc::new(MemoryStore::new()), cfg);
    assert_eq!(idemq::Processor::scope(&e), "tenant");
    let m = |tenant: &str| {
        Arc::new(
            other("p")
                .with_header("Idempotency-Key", "k")
                .with_header("tenant", tenant.to_string()),
        )
    };
    assert_eq!(decision(&run(&e, &m("a")).await), "processed");
    assert_eq!(decision(&run(&e, &m("b")).await), "processed");
    assert_eq!(decision(&run(&e, &m("a")).await), "replayed");
    let scopes: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
    assert_eq!(scopes, ["billing/a", "billing/b"]);
    // No tenant: the function returns an empty scope, which is dead-lettered, not claimed in "".
    let d = run(
        &e,
        &Arc::new(other("p").with_header("Idempotency-Key", "k")),
    )
    .await;
    assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::InvalidKey));
}

#[cfg(all(feature = "amqp", feature = "kafka"))]
#[tokio::test]
async fn default_scopes_are_the_group_and_the_queue() {
    // The AMQP consumer's default scope is its queue (no broker needed to build it).
    let c = idemq::amqp::AmqpConsumer::builder()
        .url("amqp://127.0.0.1:5672/%2f")
        .queue("payments")
        .store(Arc::new(MemoryStore::new()))
        .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
        .build()
        .unwrap();
    assert_eq!(c.scope(), "payments");
    // The Kafka consumer's is its group id; per-topic scopes are `{group}/{topic}`.
    let kafka = |scope: Option<Scope>| {
        let mut b = idemq::kafka::KafkaConsumerBuilder::new()
            .bootstrap_servers("127.0.0.1:1")
            .group_id("billing")
            .topic("orders")
            .store(Arc::new(MemoryStore::new()))
            .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) });
        if let Some(scope) = scope {
            b = b.scope(scope);
        }
        b.build().unwrap()
    };
    assert_eq!(kafka(None).scope(), "billing");
    assert_eq!(kafka(Some(Scope::PerTopic)).scope(), "billing/{topic}");
    assert_eq!(kafka(Some("shared".into())).scope(), "shared");
}

/// A first delivery and a producer retry that re-serialized the JSON (other key order and
/// spacing) and stamped a new `sent_at`.
const FIRST: &str = r#"{"id":"o-1","amount":5,"sent_at":"2026-01-01T10:00:00Z"}"#;
const RETRY: &str = r#"{ "sent_at": "2026-01-01T10:00:07Z", "amount": 5, "id": "o-1" }"#;
const REORDERED: &str = r#"{"sent_at":"2026-01-01T10:00:00Z", "id":"o-1","amount":5}"#;
const CHANGED: &str = r#"{"id":"o-1","amount":6,"sent_at":"2026-01-01T10:00:00Z"}"#;

/// The decision for `second` after `first`, both with key `k`, under `rule`.
async fn second_copy(rule: FingerprintRule, first: &str, second: &str) -> Disposition {
    let mut cfg = config([KeySource::header("Idempotency-Key")]);
    cfg.fingerprint = rule;
    let (e, seen) = engine(Arc::new(MemoryStore::new()), cfg);
    let m = |p: &str| Arc::new(other(p).with_header("Idempotency-Key", "k"));
    assert_eq!(decision(&run(&e, &m(first)).await), "processed");
    let d = run(&e, &m(second)).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the handler ran again");
    d
}

#[tokio::test]
async fn whole_payload_fingerprint_makes_reserialized_copies_conflict() {
    for second in [RETRY, REORDERED] {
        let d = second_copy(FingerprintRule::default(), FIRST, second).await;
        assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::Conflict));
    }
}

#[tokio::test]
async fn excluded_fields_make_restamped_copies_replays() {
    let rule = || FingerprintRule::exclude_fields(["/sent_at"]);
    assert_eq!(
        decision(&second_copy(rule(), FIRST, RETRY).await),
        "replayed"
    );
    assert_eq!(
        decision(&second_copy(rule(), FIRST, REORDERED).await),
        "replayed"
    );
    let d = second_copy(rule(), FIRST, CHANGED).await;
    assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::Conflict));
    // Key order alone never matters under a JSON rule, even with nothing excluded.
    let none = FingerprintRule::exclude_fields(Vec::<String>::new());
    assert_eq!(
        decision(&second_copy(none, FIRST, REORDERED).await),
        "replayed"
    );
}

#[tokio::test]
async fn chosen_pointers_ignore_everything_else() {
    let rule = || FingerprintRule::json_pointers(["/id", "/amount"]);
    assert_eq!(
        decision(&second_copy(rule(), FIRST, RETRY).await),
        "replayed"
    );
    let d = second_copy(rule(), FIRST, CHANGED).await;
    assert_eq!(dead_letter_reason(&d), Some(DeadLetterReason::Conflict));
}

#[tokio::test]
async fn key_only_never_conflicts() {
    let d = second_copy(FingerprintRule::key_only(), FIRST, "entirely different").await;
    assert_eq!(decision(&d), "replayed");
    // With chosen headers, only they count.
    let mut cfg = config([KeySource::header("Idempotency-Key")]);
    cfg.fingerprint = FingerprintRule::key_only().with_headers(["tenant"]);
    let (e, _) = engine(Arc::new(MemoryStore::new()), cfg);
    let m = |p: &str, tenant: &str| {
        Arc::new(
            other(p)
                .with_header("Idempotency-Key", "k")
                .with_header("tenant", tenant.to_string()),
        )
    };
    assert_eq!(decision(&run(&e, &m("a", "1")).await), "processed");
    assert_eq!(decision(&run(&e, &m("b", "1")).await), "replayed");
    assert_eq!(
        dead_letter_reason(&run(&e, &m("a", "2")).await),
        Some(DeadLetterReason::Conflict)
    );
}

#[tokio::test]
async fn json_rule_on_a_non_json_payload_is_a_typed_dead_letter() {
    let mut cfg = config([KeySource::header("Idempotency-Key")]);
    cfg.fingerprint = FingerprintRule::exclude_fields(["/sent_at"]);
    let (e, seen) = engine(Arc::new(MemoryStore::new()), cfg);
    let d = run(
        &e,
        &Arc::new(other("plain text").with_header("Idempotency-Key", "k")),
    )
    .await;
    assert_eq!(
        dead_letter_reason(&d),
        Some(DeadLetterReason::InvalidPayload)
    );
    match &d {
        Disposition::DeadLetter(dl) => {
            assert_eq!(dl.reason.as_str(), "invalid-payload");
            assert!(dl.error.contains("not JSON"), "{}", dl.error);
        }
        other => panic!("{other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty());
}
