//! The metrics operators scrape: every metric in `idemq::metrics::ALL` is described with HELP
//! text and unit; the engine, the Kafka consumer (MockCluster) and the RabbitMQ consumer count what
//! happened; and no label value is ever a key, an offset or a payload.
//!
//! One recorder for the whole binary (consumers record from their own threads); each test uses
//! its own scope and reads only its own series.

mod support;

use idemq::metrics::{self as m, Kind};
use idemq::store::MemoryStore;
use idemq::{
    Backoff, CancellationToken, Disposition, Engine, EngineConfig, HandlerContext, HandlerError,
    Message, Source, Store,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::faulty::FaultyStore;
use support::services::unique;

/// A series: metric name and sorted `(label, value)` pairs.
type Series = (String, Vec<(String, String)>);
/// A description: type, unit and HELP text.
type Described = (Kind, Option<Unit>, String);

#[derive(Default)]
struct Capture {
    described: Mutex<HashMap<String, Described>>,
    counters: Mutex<HashMap<Series, u64>>,
    gauges: Mutex<HashMap<Series, f64>>,
    histograms: Mutex<HashMap<Series, Vec<f64>>>,
}

fn series(key: &Key) -> Series {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    labels.sort();
    (key.name().to_string(), labels)
}

struct Handle {
    series: Series,
    capture: &'static Capture,
}

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        let mut c = self.capture.counters.lock().unwrap();
        *c.entry(self.series.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        let mut c = self.capture.counters.lock().unwrap();
        c.insert(self.series.clone(), value);
    }
}

impl metrics::GaugeFn for Handle {
    fn increment(&self, value: f64) {
        let mut g = self.capture.gauges.lock().unwrap();
        *g.entry(self.series.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        let mut g = self.capture.gauges.lock().unwrap();
        *g.entry(self.series.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        let mut g = self.capture.gauges.lock().unwrap();
        g.insert(self.series.clone(), value);
    }
}

impl metrics::HistogramFn for Handle {
    fn record(&self, value: f64) {
        let mut h = self.capture.histograms.lock().unwrap();
        h.entry(self.series.clone()).or_default().push(value);
    }
}

struct CaptureRecorder(&'static Capture);

impl CaptureRecorder {
    fn describe(&self, kind: Kind, name: KeyName, unit: Option<Unit>, help: SharedString) {
        let mut d = self.0.described.lock().unwrap();
        d.insert(name.as_str().to_string(), (kind, unit, help.to_string()));
    }
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            series: series(key),
            capture: self.0,
        })
    }
}

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(Kind::Counter, name, unit, help)
    }
    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(Kind::Gauge, name, unit, help)
    }
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, help: SharedString) {
        self.describe(Kind::Histogram, name, unit, help)
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::default());
        metrics::set_global_recorder(CaptureRecorder(capture)).expect("only recorder");
        capture
    })
}

/// What was recorded for one scope (series whose `scope` label is `scope`, or that have none).
struct Scoped {
    scope: String,
}

impl Scoped {
    fn new(scope: &str) -> Self {
        capture();
        Scoped {
            scope: scope.to_string(),
        }
    }

    fn matches(&self, s: &Series, name: &str, labels: &[(&str, &str)]) -> bool {
        s.0 == name
            && s.1.iter().any(|(k, v)| k == "scope" && *v == self.scope)
            && labels
                .iter()
                .all(|(k, v)| s.1.iter().any(|(k2, v2)| k2 == k && v2 == v))
    }

    /// Sum of the counters `name` with these labels (and this scope).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let c = capture().counters.lock().unwrap();
        c.iter()
            .filter(|(s, _)| self.matches(s, name, labels))
            .map(|(_, v)| *v)
            .sum()
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let g = capture().gauges.lock().unwrap();
        g.iter()
            .find(|(s, _)| self.matches(s, name, &[]))
            .map(|(_, v)| *v)
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        let h = capture().histograms.lock().unwrap();
        h.iter()
            .filter(|(s, _)| self.matches(s, name, labels))
            .map(|(_, v)| v.len())
            .sum()
    }

    fn messages(&self, decision: &str) -> u64 {
        self.counter(m::MESSAGES_TOTAL, &[("decision", decision)])
    }

    /// Every label value of every series recorded so far (all scopes).
    fn all_label_values() -> Vec<(String, String, String)> {
        let c = capture();
        let mut out = Vec::new();
        let mut add = |s: &Series| {
            for (k, v) in &s.1 {
                out.push((s.0.clone(), k.clone(), v.clone()));
            }
        };
        c.counters.lock().unwrap().keys().for_each(&mut add);
        c.gauges.lock().unwrap().keys().for_each(&mut add);
        c.histograms.lock().unwrap().keys().for_each(&mut add);
        out
    }

    /// Every recorded series name is one of `idemq::metrics::ALL` with only its documented labels,
    /// and no label value is one of `forbidden` (keys, offsets, payloads used by the test).
    fn assert_bounded(forbidden: &[String]) {
        for (name, label, value) in Self::all_label_values() {
            let metric = m::ALL
                .iter()
                .find(|x| x.name == name)
                .unwrap_or_else(|| panic!("{name} is not in idemq::metrics::ALL"));
            assert!(
                metric.labels.contains(&label.as_str()),
                "{name} has undocumented label {label}"
            );
            assert!(
                !forbidden.contains(&value),
                "{name}{{{label}={value:?}}}: a key, offset or payload as a label value"
            );
        }
    }
}

#[test]
fn every_metric_is_described_with_help_and_unit() {
    capture();
    m::describe();
    m::describe(); // idempotent
    let described = capture().described.lock().unwrap().clone();
    let mut names = std::collections::HashSet::new();
    for metric in m::ALL {
        assert!(names.insert(metric.name), "{} listed twice", metric.name);
        let (kind, unit, help) = described
            .get(metric.name)
            .unwrap_or_else(|| panic!("{} not described", metric.name));
        assert_eq!(*kind, metric.kind, "{}", metric.name);
        assert_eq!(*unit, Some(metric.unit), "{} unit", metric.name);
        assert!(help.len() > 20, "{} HELP text: {help:?}", metric.name);
        assert!(metric.name.starts_with("idemq_"), "{}", metric.name);
        // Prometheus naming: counters end in `_total`, only counters do; seconds say so.
        assert_eq!(
            metric.name.ends_with("_total"),
            metric.kind == Kind::Counter,
            "{}",
            metric.name
        );
        if metric.unit == Unit::Seconds {
            assert!(
                metric.name.ends_with("_seconds") || metric.name.ends_with("_seconds_total"),
                "{}",
                metric.name
            );
        }
    }
    assert!(!described.contains_key("idemq_superseded_total"));
}

/// A handler driven by the payload: `retry-once` (fails retriably on attempt 1),
/// `fail-permanently`, `slow` (runs 350 ms, past several lease renewals), `hang` (past the
/// 500 ms handler timeout); anything else succeeds.
fn engine(store: Arc<dyn Store>, scope: &str) -> Engine<impl idemq::Handler> {
    let mut config = EngineConfig::new(scope);
    config.lease = Duration::from_millis(300);
    config.handler_timeout = Some(Duration::from_millis(500));
    config.retry_backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
    config.store_backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
    Engine::new(store, config, |ctx: HandlerContext| async move {
        match &ctx.message.payload[..] {
            b"retry-once" if ctx.attempt == 1 => Err(HandlerError::retriable("first try fails")),
            b"fail-permanently" => Err(HandlerError::permanent("never works")),
            b"slow" => {
                tokio::time::sleep(Duration::from_millis(350)).await;
                Ok::<_, HandlerError>("slow")
            }
            b"hang" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok("hung")
            }
            _ => Ok("ok"),
        }
    })
    .expect("engine")
}

fn msg(key: &str, payload: &str) -> Arc<Message> {
    Arc::new(
        Message::new(payload.to_string(), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_counts_decisions_handler_runs_renewals_and_store_outages() {
    let scope = unique("metrics-engine");
    let seen = Scoped::new(&scope);
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let e = engine(store.clone(), &scope);
    let stop = CancellationToken::new();
    let run = |key: &str, payload: &str| e.process(msg(key, payload), &stop);

    assert!(matches!(
        run("k-ok", "fine").await,
        Disposition::Processed { .. }
    ));
    assert!(matches!(
        run("k-ok", "fine").await,
        Disposition::Replayed { .. }
    ));
    assert!(matches!(
        run("k-ok", "other").await,
        Disposition::DeadLetter(_)
    ));
    assert!(matches!(
        run("k-retry", "retry-once").await,
        Disposition::Retry { .. }
    ));
    assert!(matches!(
        run("k-retry", "retry-once").await,
        Disposition::Processed { .. }
    ));
    assert!(matches!(
        run("k-bad", "fail-permanently").await,
        Disposition::DeadLetter(_)
    ));
    assert!(matches!(
        run("k-slow", "slow").await,
        Disposition::Processed { .. }
    ));
    assert!(matches!(
        run("k-hang", "hang").await,
        Disposition::Retry { .. }
    ));

    // A store outage of over a second, seen by two messages, then the store is back.
    store.set_down(true);
    assert!(matches!(
        run("k-down", "fine").await,
        Disposition::Retry { .. }
    ));
    assert_eq!(seen.gauge(m::STORE_UP), Some(0.0), "store down");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        run("k-down", "fine").await,
        Disposition::Retry { .. }
    ));
    store.set_down(false);
    assert!(matches!(
        run("k-down", "fine").await,
        Disposition::Processed { .. }
    ));
    assert_eq!(seen.gauge(m::STORE_UP), Some(1.0), "store back");
    assert_eq!(seen.counter(m::STORE_DOWN_SECONDS, &[]), 1);

    assert_eq!(seen.messages("processed"), 4);
    assert_eq!(seen.messages("replayed"), 1);
    assert_eq!(seen.messages("retry"), 4);
    assert_eq!(seen.messages("dead_letter"), 2);
    let conflict = [
        ("decision", "dead_letter"),
        ("reason", "idempotency-key-conflict"),
    ];
    assert_eq!(seen.counter(m::MESSAGES_TOTAL, &conflict), 1);
    let failed = [("decision", "dead_letter"), ("reason", "handler-failed")];
    assert_eq!(seen.counter(m::MESSAGES_TOTAL, &failed), 1);

    assert_eq!(seen.samples(m::HANDLER_DURATION, &[("result", "ok")]), 4);
    assert_eq!(
        seen.samples(m::HANDLER_DURATION, &[("result", "retriable")]),
        2
    );
    assert_eq!(seen.counter(m::HANDLER_TIMEOUTS, &[]), 1, "k-hang");
    assert_eq!(
        seen.samples(m::HANDLER_DURATION, &[("result", "permanent")]),
        1
    );
    assert_eq!(
        seen.counter(m::CLAIMS_REACQUIRED, &[]),
        1,
        "k-retry's second claim"
    );
    // Lease 300 ms, renewed every 100 ms, handlers of 350 and 500 ms: up to 3 + 4 renewals
    // (fewer when the machine is slow).
    let renewed = seen.counter(m::LEASE_RENEWALS, &[("result", "ok")]);
    assert!((2..=7).contains(&renewed), "{renewed} renewals");
    assert_eq!(seen.counter(m::LEASE_RENEWALS, &[("result", "lost")]), 0);
    assert_eq!(seen.gauge(m::IN_FLIGHT), Some(0.0), "nothing in flight");

    let keys = ["k-ok", "k-retry", "k-bad", "k-slow", "k-hang", "k-down"];
    let payloads = [
        "fine",
        "other",
        "retry-once",
        "fail-permanently",
        "slow",
        "hang",
    ];
    let forbidden: Vec<String> = keys
        .iter()
        .chain(&payloads)
        .map(|s| s.to_string())
        .collect();
    Scoped::assert_bounded(&forbidden);
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_consumer_counts_match_what_happened() {
    use support::kafka::*;
    let broker = Broker::mock();
    let (topic, group) = (unique("metrics"), unique("metrics-g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 2).await;
    broker.create_topic(&dlq, 1).await;
    let seen = Scoped::new(&group);
    let mut recs = Vec::new();
    for k in 0..5 {
        recs.push(Rec::keyed(&format!("order-{k}"), "{}").on(0));
        recs.push(Rec::keyed(&format!("order-{k}"), "{}").on(1));
    }
    // The same key with another payload, after the first on the same partition: a conflict.
    recs.push(Rec::keyed("conflicting", "{\"a\":1}").on(0));
    recs.push(Rec::keyed("conflicting", "{\"a\":2}").on(0));
    produce(&broker.bootstrap(), &topic, &recs).await;

    let runs = Runs::default();
    let c = Running::start(consumer(
        &broker,
        &group,
        &topic,
        Arc::new(MemoryStore::new()),
        &runs,
        0,
        |b| b.dead_letter_topic(&dlq),
    ));
    let stats = c.stats.clone();
    wait_for("12 records finished", Duration::from_secs(60), || {
        stats.snapshot().finished() >= 12
    })
    .await;
    assert_eq!(seen.gauge(m::KAFKA_PARTITIONS_ASSIGNED), Some(2.0));
    let s = c.shutdown().await;

    assert_eq!(
        (s.processed, s.replayed, s.dead_lettered),
        (6, 5, 1),
        "{s:?}"
    );
    assert_eq!(seen.messages("processed"), s.processed);
    assert_eq!(seen.messages("replayed"), s.replayed);
    assert_eq!(seen.messages("dead_letter"), s.dead_lettered);
    assert_eq!(seen.samples(m::HANDLER_DURATION, &[("result", "ok")]), 6);
    assert_eq!(seen.counter(m::KAFKA_COMMIT_FAILURES, &[]), 0);
    assert_eq!(seen.counter(m::DEAD_LETTER_FAILURES, &[]), 0);
    assert_eq!(seen.gauge(m::IN_FLIGHT), Some(0.0));
    // A stopped consumer owns and pauses nothing; dashboards must not keep its last values.
    assert_eq!(seen.gauge(m::KAFKA_PARTITIONS_ASSIGNED), Some(0.0));
    assert_eq!(seen.gauge(m::KAFKA_PARTITIONS_PAUSED), Some(0.0));

    let mut forbidden: Vec<String> = (0..5).map(|k| format!("order-{k}")).collect();
    forbidden.extend(["conflicting", "{}", "{\"a\":1}", "{\"a\":2}"].map(String::from));
    // Offsets 1..=7 were used (0 is excluded: a gauge of zero partitions is not an offset).
    forbidden.extend((1..=7).map(|o| o.to_string()));
    Scoped::assert_bounded(&forbidden);
}

/// A store outage pauses the partitions (gauge), marks the store down, and both recover.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_store_outage_shows_paused_partitions_and_the_store_down() {
    use support::kafka::*;
    let broker = Broker::mock();
    let (topic, group) = (unique("metrics-outage"), unique("metrics-og"));
    broker.create_topic(&topic, 2).await;
    let seen = Scoped::new(&group);
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let recs = |from: i32| -> Vec<Rec> {
        (from..from + 4)
            .map(|k| Rec::keyed(&format!("o{k}"), "{}").on(k % 2))
            .collect()
    };
    produce(&broker.bootstrap(), &topic, &recs(0)).await;
    let runs = Runs::default();
    let c = Running::start(consumer(
        &broker,
        &group,
        &topic,
        store.clone(),
        &runs,
        0,
        |b| b,
    ));
    let stats = c.stats.clone();
    wait_for("4 processed", Duration::from_secs(60), || {
        stats.snapshot().processed >= 4
    })
    .await;
    assert_eq!(seen.gauge(m::STORE_UP), Some(1.0));

    store.set_down(true);
    produce(&broker.bootstrap(), &topic, &recs(4)).await;
    wait_for("a paused partition", Duration::from_secs(30), || {
        seen.gauge(m::KAFKA_PARTITIONS_PAUSED).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert_eq!(seen.gauge(m::STORE_UP), Some(0.0), "store down");
    tokio::time::sleep(Duration::from_millis(1200)).await;

    store.set_down(false);
    wait_for("8 processed", Duration::from_secs(60), || {
        stats.snapshot().processed >= 8
    })
    .await;
    wait_for("partitions resumed", Duration::from_secs(30), || {
        seen.gauge(m::KAFKA_PARTITIONS_PAUSED) == Some(0.0)
    })
    .await;
    let s = c.shutdown().await;
    assert_eq!(seen.gauge(m::STORE_UP), Some(1.0), "store back");
    assert!(
        seen.counter(m::STORE_DOWN_SECONDS, &[]) >= 1,
        "over a second down"
    );
    assert!(s.kafka.pauses >= 1, "{s:?}");
    assert_eq!(seen.messages("processed"), s.processed);
    assert!(seen.messages("retry") >= s.store_unavailable, "{s:?}");
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_consumer_counts_match_and_report_the_connection() {
    use support::amqp::*;
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("metrics").await;
    let (dlx, _dlq) = rabbit.dead_letter_pair("metrics").await;
    let seen = Scoped::new(&queue);
    let rec = Recorder::default();
    let name = unique("metrics-conn");
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .dead_letter_exchange(&dlx, None)
            .connection_name(&name),
    );
    for k in 0..4 {
        let key = format!("amqp-{k}");
        rabbit.publish(&queue, Some(&key), b"{}").await;
        rabbit.publish(&queue, Some(&key), b"{}").await;
    }
    rabbit
        .publish(&queue, Some("amqp-bad"), br#"{"fail":"permanent"}"#)
        .await;
    run.drained(&rabbit, &queue, Duration::from_secs(30)).await;
    assert_eq!(seen.gauge(m::AMQP_CONNECTION_UP), Some(1.0));

    force_close(&name).await;
    run.wait(Duration::from_secs(30), "a reconnect", |s| {
        s.amqp.reconnects >= 1
    })
    .await;
    eventually(Duration::from_secs(10), "connection up again", || {
        seen.gauge(m::AMQP_CONNECTION_UP) == Some(1.0)
    })
    .await;
    let s = run.stop().await;
    assert_eq!(seen.gauge(m::AMQP_CONNECTION_UP), Some(0.0), "stopped");

    // An ack still lingering at the forced close may come back as a replay or a second dead
    // letter; what was counted must match the consumer's own counts either way.
    assert_eq!(s.processed, 4, "{s:?}");
    assert!(s.replayed >= 4 && s.dead_lettered >= 1, "{s:?}");
    assert_eq!(seen.messages("processed"), s.processed);
    assert_eq!(seen.messages("replayed"), s.replayed);
    assert_eq!(seen.messages("dead_letter"), s.dead_lettered);
    assert_eq!(seen.counter(m::AMQP_RECONNECTS, &[]), s.amqp.reconnects);
    assert_eq!(seen.counter(m::DEAD_LETTER_FAILURES, &[]), 0);
    assert_eq!(seen.gauge(m::IN_FLIGHT), Some(0.0));

    let mut forbidden: Vec<String> = (0..4).map(|k| format!("amqp-{k}")).collect();
    forbidden.extend(["amqp-bad", "{}", r#"{"fail":"permanent"}"#].map(String::from));
    Scoped::assert_bounded(&forbidden);
    rabbit.cleanup().await;
}

#[test]
fn observability_doc_lists_every_metric_in_its_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/observability.md");
    let doc = std::fs::read_to_string(path).expect("docs/observability.md");
    for metric in m::ALL {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", metric.name)))
            .unwrap_or_else(|| panic!("{} has no row in docs/observability.md", metric.name));
        let kind = match metric.kind {
            Kind::Counter => "| counter |",
            Kind::Gauge => "| gauge |",
            Kind::Histogram => "| histogram |",
        };
        assert!(row.contains(kind), "{}: type in {row}", metric.name);
        for label in metric.labels {
            assert!(
                row.contains(&format!("`{label}`")),
                "{}: label {label}",
                metric.name
            );
        }
    }
    for section in ["## Metrics", "## Dashboard", "## Health", "## Traces"] {
        assert!(doc.lines().any(|l| l == section), "{section}");
    }
}
