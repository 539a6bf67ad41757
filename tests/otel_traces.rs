//! Traces across the broker (feature `otel`): a message's W3C `traceparent` becomes the parent of
//! its `idemq.process` span, store calls are children of that span, and the dead-letter copy
//! carries the process span's context onward. Spans are collected with the SDK's in-memory
//! exporter behind the `tracing-opentelemetry` layer, as an application would wire it.
#![cfg(feature = "otel")]

mod support;

use idemq::message::KafkaMetadata;
use idemq::store::MemoryStore;
use idemq::Message;
use idemq::{CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::sync::{Arc, OnceLock};
use tracing_subscriber::layer::SubscriberExt;

/// The exporter behind the process-wide subscriber (installed once; tests tell their spans apart
/// by trace id).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("idemq-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber");
        exporter
    })
}

/// The finished spans of trace `trace`.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// Prints the trace as a tree (name, span id), the form `docs/observability.md` shows.
fn print_tree(spans: &[SpanData], parent: SpanId, depth: usize) {
    let mut children: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    children.sort_by_key(|s| s.start_time);
    for s in children {
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .filter(|kv| {
                let k = kv.key.as_str();
                k.starts_with("messaging.") || k == "decision" || k == "key"
            })
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        let line = format!(
            "{} span={} {}",
            s.name,
            s.span_context.span_id(),
            attrs.join(" ")
        );
        println!("{}{}", "  ".repeat(depth + 1), line.trim_end());
        print_tree(spans, s.span_context.span_id(), depth + 1);
    }
}

#[tokio::test]
async fn the_traceparent_header_is_the_parent_of_the_process_span_and_store_calls_its_children() {
    exporter();
    let (trace, parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        EngineConfig::new("billing"),
        |_ctx: HandlerContext| async { Ok::<_, HandlerError>("done") },
    )
    .unwrap();
    let msg = Message::from_kafka("{}", KafkaMetadata::new("orders", 3, 42))
        .with_header("Idempotency-Key", "order-7")
        .with_header("traceparent", format!("00-{trace}-{parent}-01"))
        .with_header("tracestate", "vendor=v1");
    let d = engine
        .process(Arc::new(msg), &CancellationToken::new())
        .await;
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");

    let trace = TraceId::from_hex(trace).unwrap();
    let spans = spans_of(trace);
    println!("trace {trace} (remote parent {parent}):");
    print_tree(&spans, SpanId::from_hex(parent).unwrap(), 0);
    let process: Vec<&SpanData> = spans.iter().filter(|s| s.name == "idemq.process").collect();
    assert_eq!(process.len(), 1, "one process span in the trace: {spans:?}");
    let process = process[0];
    assert_eq!(process.parent_span_id, SpanId::from_hex(parent).unwrap());
    assert!(process.parent_span_is_remote);
    assert_eq!(process.span_kind, opentelemetry::trace::SpanKind::Consumer);
    assert_eq!(process.span_context.trace_state().header(), "vendor=v1");
    for (key, value) in [
        ("messaging.system", Value::from("kafka")),
        ("messaging.destination.name", Value::from("orders")),
        ("messaging.operation.type", Value::from("process")),
        ("messaging.message.id", Value::from("orders-3-42")),
        ("messaging.destination.partition.id", Value::I64(3)),
        ("messaging.kafka.offset", Value::I64(42)),
        ("key", Value::from("order-7")),
        ("decision", Value::from("processed")),
    ] {
        assert_eq!(attribute(process, key), Some(value), "attribute {key}");
    }

    let mut store: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == process.span_context.span_id())
        .map(|s| s.name.as_ref())
        .collect();
    store.sort();
    assert_eq!(store, ["idemq.store.claim", "idemq.store.complete"]);
    let claim = spans
        .iter()
        .find(|s| s.name == "idemq.store.claim")
        .unwrap();
    assert_eq!(
        attribute(claim, "db.operation.name"),
        Some(Value::from("claim"))
    );
}

#[tokio::test]
async fn a_message_without_trace_context_starts_its_own_trace() {
    exporter();
    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        EngineConfig::new("billing"),
        |_ctx: HandlerContext| async { Ok::<_, HandlerError>("done") },
    )
    .unwrap();
    // A malformed traceparent is ignored (W3C: start a new trace), not an error.
    let msg = Message::from_kafka("{}", KafkaMetadata::new("orders-untraced", 0, 1))
        .with_header("Idempotency-Key", "order-8")
        .with_header("traceparent", "00-zz-bad-01");
    let d = engine
        .process(Arc::new(msg), &CancellationToken::new())
        .await;
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    let spans = exporter().get_finished_spans().unwrap();
    let process = spans
        .iter()
        .find(|s| {
            s.name == "idemq.process"
                && attribute(s, "messaging.destination.name")
                    == Some(Value::from("orders-untraced"))
        })
        .expect("process span");
    assert_eq!(process.parent_span_id, SpanId::INVALID, "a root span");
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafka_dead_letter_copy_carries_the_process_span_context() {
    use std::time::Duration;
    use support::kafka::*;
    exporter();
    let broker = Broker::mock();
    let (topic, group) = (
        support::services::unique("otel"),
        support::services::unique("g"),
    );
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1).await;
    broker.create_topic(&dlq, 1).await;
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    // No idempotency key: dead-lettered as missing-idempotency-key.
    let mut rec = Rec::keyed("x", "no key");
    rec.headers = vec![
        (
            "traceparent".into(),
            format!("00-{trace}-{parent}-01").into_bytes(),
        ),
        ("tracestate".into(), b"vendor=v2".to_vec()),
    ];
    produce(&broker.bootstrap(), &topic, &[rec]).await;
    let c = Running::start(consumer(
        &broker,
        &group,
        &topic,
        Arc::new(MemoryStore::new()),
        &Runs::default(),
        0,
        |b| b.dead_letter_topic(dlq.clone()),
    ));
    let stats = c.stats.clone();
    wait_for("dead-lettered", Duration::from_secs(30), || {
        stats.snapshot().finished() >= 1
    })
    .await;
    let s = c.shutdown().await;
    assert_eq!(s.dead_lettered, 1, "{s:?}");

    let dead = read_all(&broker.bootstrap(), &dlq, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    let copied = header(&dead[0], "traceparent").expect("traceparent on the dead letter");
    let trace_id = TraceId::from_hex(trace).unwrap();
    let spans = spans_of(trace_id);
    println!("trace {trace} (remote parent {parent}):");
    print_tree(&spans, SpanId::from_hex(parent).unwrap(), 0);
    println!("dead-letter copy: traceparent={copied}");
    let process = spans
        .iter()
        .find(|s| s.name == "idemq.process")
        .expect("process span");
    assert_eq!(process.parent_span_id, SpanId::from_hex(parent).unwrap());
    assert_eq!(
        attribute(process, "decision"),
        Some(Value::from("dead_letter"))
    );
    assert_eq!(
        copied,
        format!("00-{trace}-{}-01", process.span_context.span_id()),
        "same trace, the process span as parent"
    );
    assert_eq!(header(&dead[0], "tracestate").as_deref(), Some("vendor=v2"));
    let traceparents = {
        use rdkafka::message::{Headers, Message as _};
        dead[0]
            .headers()
            .map(|h| h.iter().filter(|h| h.key == "traceparent").count())
            .unwrap_or(0)
    };
    assert_eq!(traceparents, 1, "replaced, not added");
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_replies_and_dead_letters_carry_the_process_span_context() {
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::BasicProperties;
    use std::time::Duration;
    use support::amqp::{consumer, memory, Rabbit, Recorder, Running};
    exporter();
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("otel").await;
    let replies = rabbit.queue("otel-replies").await;
    let (dlx, dlq) = rabbit.dead_letter_pair("otel").await;
    let rec = Recorder::default();
    let run = Running::start(consumer(&queue, memory(), &rec).dead_letter_exchange(&dlx, None));
    let (request_trace, dead_trace, parent) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "a1a2a3a4a5a6a7a8",
    );
    let traced = |trace: &str, key: Option<&str>| {
        let mut h = FieldTable::default();
        h.insert(
            "traceparent".into(),
            AMQPValue::LongString(format!("00-{trace}-{parent}-01").into()),
        );
        if let Some(key) = key {
            h.insert("Idempotency-Key".into(), AMQPValue::LongString(key.into()));
        }
        BasicProperties::default().with_headers(h)
    };
    // A request (answered on `reply_to`) and a message without a key (dead-lettered).
    let request = traced(request_trace, Some("quote-1"))
        .with_reply_to(replies.as_str().into())
        .with_correlation_id("corr-1".into())
        .with_message_id("m-1".into());
    rabbit.publish_props("", &queue, b"{}", request).await;
    rabbit
        .publish_props("", &queue, b"no key", traced(dead_trace, None))
        .await;
    let reply = rabbit
        .wait_drain(&replies, 1, Duration::from_secs(10))
        .await;
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(10)).await;
    let stats = run.stop().await;
    assert_eq!((reply.len(), dead.len()), (1, 1), "{stats:?}");

    for (trace, got, what) in [
        (request_trace, &reply[0], "reply"),
        (dead_trace, &dead[0], "dead letter"),
    ] {
        let spans = spans_of(TraceId::from_hex(trace).unwrap());
        println!("trace {trace} (remote parent {parent}):");
        print_tree(&spans, SpanId::from_hex(parent).unwrap(), 0);
        let process = spans
            .iter()
            .find(|s| s.name == "idemq.process")
            .unwrap_or_else(|| panic!("no process span for the {what}"));
        assert_eq!(process.parent_span_id, SpanId::from_hex(parent).unwrap());
        assert_eq!(
            attribute(process, "messaging.system"),
            Some(Value::from("rabbitmq"))
        );
        assert_eq!(
            attribute(process, "messaging.destination.name"),
            Some(Value::from(queue.clone()))
        );
        println!(
            "{what}: traceparent={}",
            got.header("traceparent").unwrap_or_default()
        );
        assert_eq!(
            got.header("traceparent"),
            Some(format!("00-{trace}-{}-01", process.span_context.span_id())),
            "the {what} continues the trace from the process span"
        );
    }
    let request_process = spans_of(TraceId::from_hex(request_trace).unwrap())
        .into_iter()
        .find(|s| s.name == "idemq.process")
        .unwrap();
    assert_eq!(
        attribute(&request_process, "messaging.message.id"),
        Some(Value::from("m-1"))
    );
    rabbit.cleanup().await;
}
