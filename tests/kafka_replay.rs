//! `KafkaReplay` failure handling on a MockCluster: a store error stops the run and leaves every
//! record after the last handled one uncommitted, so the next run resumes there; `limit` bounds
//! the run.
#![cfg(feature = "kafka")]

mod support;

use idemq::kafka::{KafkaReplay, KafkaReplayError};
use idemq::replay::{Classifier, ReplayReport};
use idemq::store::MemoryStore;
use idemq::KeyConfig;
use std::sync::Arc;
use std::time::Duration;
use support::faulty::FaultyStore;
use support::kafka::{committed, produce, read_all, Broker, Rec};
use support::services::unique;

fn replay(
    broker: &Broker,
    store: Arc<FaultyStore>,
    dlq: &str,
    main: &str,
    group: &str,
) -> KafkaReplay {
    KafkaReplay::new(
        broker.bootstrap(),
        dlq,
        main,
        Classifier::new(store, "s", KeyConfig::default()),
    )
    .group(group)
    .idle_timeout(Duration::from_millis(800))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_error_stops_the_run_after_the_last_handled_record() {
    let broker = Broker::mock();
    let (dlq, main, group) = (unique("dlq"), unique("main"), unique("g"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    let recs: Vec<Rec> = (0..4)
        .map(|i| Rec::keyed(&format!("k{i}"), &format!("p{i}")).on(0))
        .collect();
    produce(&broker.bootstrap(), &dlq, &recs).await;
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));

    // The store goes down once two records were handled.
    let down = store.clone();
    let err = replay(&broker, store.clone(), &dlq, &main, &group)
        .run(move |r: &ReplayReport| {
            if r.examined == 2 {
                down.set_down(true);
            }
        })
        .await
        .expect_err("store outage stops the run");
    assert!(matches!(err, KafkaReplayError::Store(_)), "{err:?}");
    assert_eq!(
        committed(&broker.bootstrap(), &group, &dlq, 1),
        [2],
        "nothing committed beyond the last handled record"
    );
    assert_eq!(
        read_all(&broker.bootstrap(), &main, 3, Duration::from_secs(2)).len(),
        2
    );

    // The next run resumes at the third record; limit bounds it.
    store.set_down(false);
    let r = replay(&broker, store.clone(), &dlq, &main, &group)
        .limit(1)
        .run(|_| {})
        .await
        .expect("resumed run");
    assert_eq!((r.examined, r.republished), (1, 1));
    assert_eq!(committed(&broker.bootstrap(), &group, &dlq, 1), [3]);
    let r = replay(&broker, store, &dlq, &main, &group)
        .run(|_| {})
        .await
        .expect("last run");
    assert_eq!((r.examined, r.republished), (1, 1));
    assert_eq!(committed(&broker.bootstrap(), &group, &dlq, 1), [4]);
    let mut bodies: Vec<String> = read_all(&broker.bootstrap(), &main, 5, Duration::from_secs(2))
        .iter()
        .map(|m| {
            use rdkafka::message::Message as _;
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        ["p0", "p1", "p2", "p3"],
        "each record republished once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_source_and_target_is_a_config_error() {
    let broker = Broker::mock();
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let err = replay(&broker, store, "t", "t", "g")
        .run(|_| {})
        .await
        .expect_err("rejected");
    assert!(
        matches!(
            err,
            KafkaReplayError::Config(idemq::ConfigError::Conflict {
                setting: "to_topic",
                other: "from_topic",
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_fails_after_the_join_timeout() {
    let port = support::kafka::free_port();
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let err = KafkaReplay::new(
        format!("127.0.0.1:{port}"),
        "dlq",
        "main",
        Classifier::new(store, "s", KeyConfig::default()),
    )
    .join_timeout(Duration::from_secs(1))
    .run(|_| {})
    .await
    .expect_err("no broker");
    assert!(
        matches!(
            err,
            KafkaReplayError::NotAssigned { .. } | KafkaReplayError::Broker { .. }
        ),
        "{err:?}"
    );
}

/// The same replay on a real broker process (Tansu; skipped without the binary unless CI=true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_replay_republishes_and_commits() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let (dlq, main, group) = (unique("dlq"), unique("main"), unique("g"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    let mut no_key = Rec::keyed("x", "no key").on(0);
    no_key.headers.clear();
    let recs = vec![
        Rec::keyed("k0", "p0").on(0),
        no_key,
        Rec::keyed("k1", "p1").on(0),
    ];
    produce(&broker.bootstrap(), &dlq, &recs).await;
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let r = replay(&broker, store.clone(), &dlq, &main, &group)
        .idle_timeout(Duration::from_secs(2))
        .run(|_| {})
        .await
        .expect("replay");
    assert_eq!((r.examined, r.republished, r.kept), (3, 2, 1), "{r:?}");
    assert_eq!(committed(&broker.bootstrap(), &group, &dlq, 1), [3]);
    assert_eq!(
        read_all(&broker.bootstrap(), &main, 3, Duration::from_secs(3)).len(),
        2
    );
    let again = replay(&broker, store, &dlq, &main, &group)
        .idle_timeout(Duration::from_secs(2))
        .run(|_| {})
        .await
        .expect("second replay");
    assert_eq!(again.examined, 0, "resumes after the committed offset");
}

/// A dead-lettered record with a header name that is not UTF-8 (legal in Kafka) is replayed, not
/// a panic in rdkafka's header accessors that kills the run on every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_replayed() {
    let broker = Broker::mock();
    let (dlq, main, group) = (unique("dlq"), unique("main"), unique("g"));
    broker.create_topic(&dlq, 1).await;
    broker.create_topic(&main, 1).await;
    support::kafka::produce_raw_headers(
        &broker.bootstrap(),
        &dlq,
        &[vec![
            (b"trace-\xff".as_slice(), b"t-1".as_slice()),
            (b"Idempotency-Key", b"k1"),
        ]],
    )
    .await;
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    let report = replay(&broker, store, &dlq, &main, &group)
        .run(|_| {})
        .await
        .expect("replay runs");
    assert_eq!(report.republished, 1, "{report:?}");
    assert_eq!(
        read_all(&broker.bootstrap(), &main, 1, Duration::from_secs(10)).len(),
        1
    );
    assert_eq!(committed(&broker.bootstrap(), &group, &dlq, 1), [1]);
}
