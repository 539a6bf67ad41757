//! Every decision is visible to operators: a `idemq_messages_total{decision,scope}` counter, a
//! store-latency histogram per operation, and a tracing span carrying key, scope and decision.

use idemq::store::MemoryStore;
use idemq::{
    CancellationToken, Engine, EngineConfig, HandlerContext, HandlerError, Message, Source,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Records counter increments and histogram samples by name and sorted labels.
#[derive(Default)]
struct Capture {
    counters: Mutex<HashMap<String, u64>>,
    histograms: Mutex<HashMap<String, usize>>,
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Handle {
    name: String,
    capture: Arc<Capture>,
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        let mut c = self.capture.counters.lock().expect("lock");
        *c.entry(self.name.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.capture
            .counters
            .lock()
            .expect("lock")
            .insert(self.name.clone(), value);
    }
}

impl metrics::HistogramFn for Handle {
    fn record(&self, _value: f64) {
        let mut h = self.capture.histograms.lock().expect("lock");
        *h.entry(self.name.clone()).or_default() += 1;
    }
}

struct CaptureRecorder(Arc<Capture>);

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle {
            name: render(key),
            capture: self.0.clone(),
        }))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle {
            name: render(key),
            capture: self.0.clone(),
        }))
    }
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn msg(key: &str, payload: &str) -> Arc<Message> {
    Arc::new(
        Message::new(payload.to_string(), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn decisions_emit_metrics_and_spans() {
    let capture = Arc::new(Capture::default());
    metrics::set_global_recorder(CaptureRecorder(capture.clone()))
        .expect("only recorder in this binary");
    let logs = Buffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        EngineConfig::new("telemetry"),
        |_ctx: HandlerContext| async { Ok::<_, HandlerError>(1) },
    )
    .expect("engine");
    let stop = CancellationToken::new();
    engine.process(msg("t-1", "a"), &stop).await;
    engine.process(msg("t-1", "a"), &stop).await;
    engine.process(msg("t-1", "b"), &stop).await;

    let counters = capture.counters.lock().expect("lock").clone();
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        get("idemq_messages_total{decision=processed,scope=telemetry}"),
        1,
        "{counters:?}"
    );
    assert_eq!(
        get("idemq_messages_total{decision=replayed,scope=telemetry}"),
        1,
        "{counters:?}"
    );
    assert_eq!(
        get("idemq_messages_total{decision=dead_letter,reason=idempotency-key-conflict,scope=telemetry}"),
        1,
        "{counters:?}"
    );
    let histograms = capture.histograms.lock().expect("lock").clone();
    assert_eq!(
        histograms.get("idemq_store_latency_seconds{op=claim}"),
        Some(&3),
        "{histograms:?}"
    );
    assert_eq!(
        histograms.get("idemq_store_latency_seconds{op=complete}"),
        Some(&1),
        "{histograms:?}"
    );

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    for decision in ["processed", "replayed", "dead_letter"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("decision=\"{decision}\"")))
            .unwrap_or_else(|| panic!("no span with decision={decision} in:\n{text}"));
        assert!(
            line.contains("scope=telemetry") && line.contains("key=\"t-1\""),
            "{line}"
        );
    }
}
