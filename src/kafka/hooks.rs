//! [`KafkaHooks`]: librdkafka's client events, forwarded to your code by idemq's own consumer
//! context.
//!
//! idemq needs its own `ConsumerContext` (it drains and commits revoked partitions in the
//! rebalance callback and tracks commit results), so it does not take a custom one. Give a
//! [`KafkaHooks`] to [`KafkaConsumerBuilder::hooks`](super::KafkaConsumerBuilder::hooks) instead:
//! idemq's context calls it for every rebalance, statistics report, client error and commit
//! result, after doing its own part.

use rdkafka::consumer::Rebalance;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::TopicPartitionList;

/// Callbacks for librdkafka events; every method has an empty default, so implement only what
/// you need.
///
/// The methods run on librdkafka's callback path (inside the consumer's poll, or on a
/// librdkafka thread): keep them short and never block on the consumer itself.
///
/// ```no_run
/// use idemq::kafka::{KafkaConsumer, KafkaHooks};
/// use rdkafka::consumer::Rebalance;
/// use rdkafka::statistics::Statistics;
///
/// struct Metrics;
///
/// impl KafkaHooks for Metrics {
///     fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
///         if let Rebalance::Assign(tpl) = rebalance {
///             println!("assigned {} partitions", tpl.count());
///         }
///     }
///     fn statistics(&self, stats: Statistics) {
///         println!("consumer lag report at {}", stats.time);
///     }
/// }
///
/// let builder = KafkaConsumer::builder()
///     .set("statistics.interval.ms", "5000") // librdkafka only reports statistics if asked
///     .hooks(Metrics);
/// ```
pub trait KafkaHooks: Send + Sync + 'static {
    /// A rebalance is about to be applied. For a revocation idemq has already drained the revoked
    /// partitions' in-flight records and committed what finished when this is called.
    fn pre_rebalance(&self, rebalance: &Rebalance<'_>) {
        let _ = rebalance;
    }

    /// A rebalance was applied (for an assignment: idemq now dispatches the new partitions).
    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        let _ = rebalance;
    }

    /// librdkafka's statistics, every `statistics.interval.ms` (off unless you
    /// [`set`](super::KafkaConsumerBuilder::set) it).
    fn statistics(&self, statistics: Statistics) {
        let _ = statistics;
    }

    /// A client-level error (broker down, authentication failure, ...), also logged by idemq.
    fn error(&self, error: &KafkaError, reason: &str) {
        let _ = (error, reason);
    }

    /// The result of an asynchronous offset commit idemq issued, as librdkafka reports it (on
    /// Tokio's current-thread runtime; on the multi-threaded one idemq commits synchronously and
    /// reads the result itself). Failed partitions are retried by idemq.
    fn commit(&self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        let _ = (result, offsets);
    }
}
