//! Every metric idemq emits, through the [`metrics`](https://docs.rs/metrics) facade: names as
//! constants, their type, unit, labels and meaning in [`ALL`], and [`describe`] to hand the HELP
//! text and units to the installed recorder (e.g. `metrics-exporter-prometheus`).
//!
//! The consumers call [`describe`] when they start and [`Engine::new`](crate::Engine::new) when
//! it builds an engine; call it yourself after installing a recorder later than that. It is
//! idempotent.
//!
//! Labels stay bounded: `scope` is the scope's label ([`Scope::label`](crate::Scope::label), e.g.
//! `orders-group/{topic}`, never a resolved key), `decision`, `reason`, `op`, `result` and
//! `broker` take a fixed set of values. No key, offset or payload ever becomes a label value.
//!
//! ```
//! use idemq::metrics::{self, Kind};
//!
//! idemq::metrics::describe(); // after installing your recorder
//! let messages = idemq::metrics::ALL
//!     .iter()
//!     .find(|m| m.name == metrics::MESSAGES_TOTAL)
//!     .unwrap();
//! assert_eq!(messages.kind, Kind::Counter);
//! assert!(messages.labels.contains(&"decision"));
//! ```

mod record;

pub(crate) use record::*;

use ::metrics::Unit;

/// Histogram buckets (seconds) that suit every idemq duration histogram: 0.5 ms to 60 s. Give
/// them to your exporter (e.g. `PrometheusBuilder::set_buckets`) so histograms are exposed as
/// Prometheus histograms (`_bucket`, `_sum`, `_count`), as the shipped Grafana dashboard expects.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Counter: messages by engine decision (`decision`: `processed`, `replayed`, `superseded`,
/// `unkeyed`, `retry`, `dead_letter`, `abandoned`; `reason` for dead letters; `scope`).
pub const MESSAGES_TOTAL: &str = "idemq_messages_total";
/// Histogram (seconds): store operation latency, by `op` (`claim`, `complete`, `renew`,
/// `release`, …).
pub const STORE_LATENCY: &str = "idemq_store_latency_seconds";
/// Histogram (seconds): how long the handler ran, by `scope` and `result` (`ok`, `retriable`,
/// `permanent`, `interrupted`).
pub const HANDLER_DURATION: &str = "idemq_handler_duration_seconds";
/// Gauge: messages being processed by the engine now, by `scope`.
pub const IN_FLIGHT: &str = "idemq_messages_in_flight";
/// Counter: handler runs dropped for exceeding the handler timeout, by `scope`.
pub const HANDLER_TIMEOUTS: &str = "idemq_handler_timeouts_total";
/// Counter: records found gone when the outcome was stored, re-created with the run's outcome;
/// by `scope`.
pub const RECORDS_RECREATED: &str = "idemq_records_recreated_total";
/// Counter: lease renewals while a handler runs, by `scope` and `result` (`ok`, `lost`, `error`).
pub const LEASE_RENEWALS: &str = "idemq_lease_renewals_total";
/// Counter: claims acquired on a key an earlier attempt claimed without finishing (attempt > 1):
/// a takeover of an expired lease, or a retry after a released failure; by `scope`.
pub const CLAIMS_REACQUIRED: &str = "idemq_claims_reacquired_total";
/// Gauge: 1 while the store answers, 0 from the first transient failure until the next success;
/// by `scope`.
pub const STORE_UP: &str = "idemq_store_up";
/// Counter (seconds): time the store was seen down (between a first transient failure and the
/// next success), by `scope`.
pub const STORE_DOWN_SECONDS: &str = "idemq_store_down_seconds_total";
/// Counter: dead-letter copies that could not be published, by `broker` and `scope`.
pub const DEAD_LETTER_FAILURES: &str = "idemq_dead_letter_publish_failures_total";
/// Gauge (Kafka): partitions assigned to the consumer, by `scope`.
pub const KAFKA_PARTITIONS_ASSIGNED: &str = "idemq_kafka_partitions_assigned";
/// Gauge (Kafka): partitions idemq holds paused (store outage or backpressure), by `scope`.
pub const KAFKA_PARTITIONS_PAUSED: &str = "idemq_kafka_partitions_paused";
/// Counter (Kafka): offset commits the broker refused (retried with the next flush), by `scope`.
pub const KAFKA_COMMIT_FAILURES: &str = "idemq_kafka_commit_failures_total";
/// Gauge (RabbitMQ): 1 while the consumer has an open connection and channel, else 0; by `scope`.
pub const AMQP_CONNECTION_UP: &str = "idemq_amqp_connection_up";
/// Counter (RabbitMQ): sessions opened again after a lost connection or channel, by `scope`.
pub const AMQP_RECONNECTS: &str = "idemq_amqp_reconnects_total";

/// The type of a metric, as Prometheus exposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; exposed under its name (which ends in `_total`).
    Counter,
    /// Goes up and down; exposed under its name.
    Gauge,
    /// Samples in buckets; exposed as `NAME_bucket`, `NAME_sum` and `NAME_count`.
    Histogram,
}

/// One metric: what [`describe`] registers and `docs/observability.md` lists.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its name (one of the constants of this module).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit.
    pub unit: Unit,
    /// The HELP text.
    pub help: &'static str,
    /// The label names it may carry (each with a bounded set of values).
    pub labels: &'static [&'static str],
}

impl Metric {
    /// The series names Prometheus exposes for it: the name itself, or for a histogram its
    /// `_bucket`, `_sum` and `_count` series.
    pub fn series(&self) -> Vec<String> {
        match self.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", self.name))
                .collect(),
            Kind::Counter | Kind::Gauge => vec![self.name.to_string()],
        }
    }
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        help,
        labels,
    }
}

/// Every metric idemq emits.
pub const ALL: &[Metric] = &[
    m(MESSAGES_TOTAL, Kind::Counter, Unit::Count, &["decision", "scope", "reason"],
        "Messages settled by the engine, by decision (processed, replayed, superseded, unkeyed, retry, dead_letter, abandoned); dead letters also by reason."),
    m(STORE_LATENCY, Kind::Histogram, Unit::Seconds, &["op"],
        "Latency of idempotency store operations (claim, complete, renew, release), timeouts included."),
    m(HANDLER_DURATION, Kind::Histogram, Unit::Seconds, &["scope", "result"],
        "How long the handler ran, by result (ok, retriable, permanent, interrupted by shutdown)."),
    m(IN_FLIGHT, Kind::Gauge, Unit::Count, &["scope"],
        "Messages being processed by the engine now (claiming, running or storing the outcome)."),
    m(HANDLER_TIMEOUTS, Kind::Counter, Unit::Count, &["scope"],
        "Handler runs dropped after exceeding the handler timeout (retried; their effects may have happened)."),
    m(RECORDS_RECREATED, Kind::Counter, Unit::Count, &["scope"],
        "Records found gone (expired, evicted, forgotten) when the outcome was stored, re-created with the outcome."),
    m(LEASE_RENEWALS, Kind::Counter, Unit::Count, &["scope", "result"],
        "Lease renewals while a handler runs, by result (ok, lost to another consumer, error reaching the store)."),
    m(CLAIMS_REACQUIRED, Kind::Counter, Unit::Count, &["scope"],
        "Claims acquired on a key whose earlier attempt did not finish: a takeover of an expired lease or a retry after a released failure."),
    m(STORE_UP, Kind::Gauge, Unit::Count, &["scope"],
        "1 while the idempotency store answers, 0 from a transient store failure until the next success."),
    m(STORE_DOWN_SECONDS, Kind::Counter, Unit::Seconds, &["scope"],
        "Seconds the idempotency store was seen down (from a transient failure to the next success)."),
    m(DEAD_LETTER_FAILURES, Kind::Counter, Unit::Count, &["broker", "scope"],
        "Dead-letter copies that could not be published (Kafka: each failed try, retried in place; RabbitMQ: given up and requeued)."),
    m(KAFKA_PARTITIONS_ASSIGNED, Kind::Gauge, Unit::Count, &["scope"],
        "Kafka partitions assigned to this consumer."),
    m(KAFKA_PARTITIONS_PAUSED, Kind::Gauge, Unit::Count, &["scope"],
        "Kafka partitions idemq holds paused (store unavailable or per-partition backpressure)."),
    m(KAFKA_COMMIT_FAILURES, Kind::Counter, Unit::Count, &["scope"],
        "Kafka offset commits that failed (the positions are committed again with the next flush)."),
    m(AMQP_CONNECTION_UP, Kind::Gauge, Unit::Count, &["scope"],
        "1 while the RabbitMQ consumer has an open connection and consuming channel, else 0."),
    m(AMQP_RECONNECTS, Kind::Counter, Unit::Count, &["scope"],
        "RabbitMQ sessions opened again after a lost connection or channel."),
];

/// Describes every metric in [`ALL`] (HELP text and unit) to the installed recorder. Idempotent;
/// does nothing without a recorder.
pub fn describe() {
    for metric in ALL {
        let (name, unit, help) = (metric.name, metric.unit, metric.help);
        match metric.kind {
            Kind::Counter => ::metrics::describe_counter!(name, unit, help),
            Kind::Gauge => ::metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => ::metrics::describe_histogram!(name, unit, help),
        }
    }
}
