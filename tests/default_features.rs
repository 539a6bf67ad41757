//! What a user gets with `idemq = "0.1"` and no feature list: the Kafka consumer and the Redis
//! store. `scripts/test.sh` runs this file with the default features (`cargo test --test
//! default_features`) before the all-features run, because a feature set nobody builds can break
//! unnoticed (it did: the Redis store was once unreachable without `features = ["redis"]`).

#[cfg(not(all(feature = "kafka", feature = "redis")))]
compile_error!("the default features must include the Kafka consumer and the Redis store");

use idemq::kafka::KafkaConsumer;
use idemq::prelude::*;
use std::sync::Arc;

mod support;
use support::services::{redis_url, require_redis, unique};

#[tokio::test]
async fn the_default_features_reach_the_redis_store_and_build_a_kafka_consumer() {
    if !require_redis() {
        return;
    }
    let store = idemq::store::connect(&redis_url())
        .await
        .expect("redis:// must be reachable with the default features");
    let scope = unique("defaults");
    let engine = Engine::new(
        store.clone(),
        EngineConfig::new(scope.as_str()),
        |ctx: HandlerContext| async move { Ok::<_, HandlerError>(ctx.message.payload.len()) },
    )
    .expect("engine");
    let msg = Arc::new(
        Message::new("{}", Source::Other("test".into())).with_header("Idempotency-Key", "k-1"),
    );
    let stop = CancellationToken::new();
    assert_eq!(
        engine.process(msg.clone(), &stop).await.decision(),
        "processed"
    );
    assert_eq!(engine.process(msg, &stop).await.decision(), "replayed");
    // The Kafka consumer builds with the same store (no broker needed to build it).
    let consumer = KafkaConsumer::builder()
        .bootstrap_servers("127.0.0.1:1")
        .group_id(scope.as_str())
        .topic("orders")
        .store(store)
        .handler(|_ctx: HandlerContext| async { Ok::<_, HandlerError>(()) })
        .build()
        .expect("consumer");
    assert_eq!(consumer.scope(), scope);
}
