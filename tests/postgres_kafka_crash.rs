//! Crash test with the real example on Kafka (a private Tansu broker): `kafka_orders
//! --transactional` consumers of one group on the Postgres store are SIGKILLed at random moments
//! and restarted; afterwards every key has exactly one `order_effects` row, every key's outcome is
//! stored and the group has committed every record.
//!
//! Needs the example binary (`cargo test --all-features` builds examples before running tests; with
//! `--test postgres_kafka_crash` alone, build it first: `cargo build --all-features --example
//! kafka_orders`).
#![cfg(all(feature = "postgres", feature = "kafka"))]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use support::kafka::{committed, produce, Broker, Rec};
use support::postgres::{
    assert_exactly_one_effect_per_key, effect_rows, exec, shared_store, unique_table,
    wait_for_work_then_random_pause, SHARED_TABLE,
};
use support::services::{example_binary, postgres_url, unique};
use tokio::process::Command;

const KEYS: i64 = 800;
const COPIES: i64 = 3;
const PARTITIONS: i32 = 2;
const KILLS: u32 = 10;

fn consumer(
    bin: &PathBuf,
    bootstrap: &str,
    topic: &str,
    group: &str,
    effects: &str,
    idle_exit: bool,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--bootstrap", bootstrap, "--topic", topic, "--group", group])
        .args([
            "--store",
            &format!(
                "{}?idemq_table={SHARED_TABLE}&idemq_migrate=true",
                postgres_url()
            ),
        ])
        .args(["--transactional", "--effects-table", effects])
        // A slow handler (inside the transaction), one message at a time per partition, so the
        // work spans all the kills: 800 keys × 20 ms / 2 partitions ≈ 8 s of handler time.
        .args(["--handler-ms", "20"])
        .env("RUST_LOG", "warn,librdkafka=error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if idle_exit {
        // Counted from the partition assignment (the join may first wait for a dead member).
        cmd.args(["--exit-when-idle", "5"]);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_kafka_orders_consumers_leave_exactly_one_effect_row_per_key() {
    let Some(store) = shared_store().await else {
        return;
    };
    let Some(bin) = example_binary("kafka_orders") else {
        return;
    };
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let bootstrap = broker.bootstrap();
    let topic = unique("pg-kafka-crash");
    let group = unique("pg-kafka-crash-group");
    let effects = unique_table("order_effects");
    broker.create_topic(&topic, PARTITIONS).await;

    // Every key three times; its copies alternate partitions, so duplicates are also processed
    // concurrently (one partition each) and wait on each other's row lock.
    let recs: Vec<Rec> = (0..COPIES)
        .flat_map(|copy| {
            (0..KEYS).map(move |i| {
                let key = format!("order-{i}");
                let body = format!(r#"{{"order":{i},"amount":{}}}"#, i % 97 + 1);
                Rec::keyed(&key, &body).on(((i + copy) % i64::from(PARTITIONS)) as i32)
            })
        })
        .collect();
    let total = recs.len() as i64;
    assert!(total >= 2000);
    produce(&bootstrap, &topic, &recs).await;

    let committed_total = || {
        tokio::task::block_in_place(|| {
            committed(&bootstrap, &group, &topic, PARTITIONS)
                .into_iter()
                .map(|o| o.max(0))
                .sum::<i64>()
        })
    };

    let mut kills_mid_work = 0;
    for round in 0..KILLS {
        let mut child = consumer(&bin, &bootstrap, &topic, &group, &effects, false)
            .spawn()
            .expect("spawn consumer");
        // Wait until this consumer makes progress (the group join waits for the killed member's
        // session to expire), then kill it a random 50..550 ms later.
        let before =
            wait_for_work_then_random_pause(&store, &effects, Duration::from_secs(60)).await;
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        let done = effect_rows(&store, &effects).await;
        if done > before && done < KEYS {
            kills_mid_work += 1;
        }
        eprintln!(
            "kill {}: {done} keys with effects, {} of {total} records committed",
            round + 1,
            committed_total()
        );
    }

    // Drain: a consumer that exits once idle; again if it stopped before the group had
    // committed everything (e.g. it went idle while its join waited on a dead member).
    for _ in 0..4 {
        let mut last = consumer(&bin, &bootstrap, &topic, &group, &effects, true)
            .spawn()
            .expect("spawn final consumer");
        let exited = tokio::time::timeout(Duration::from_secs(120), last.wait())
            .await
            .expect("final consumer drains and exits when idle")
            .expect("wait");
        assert!(exited.success(), "final consumer failed: {exited}");
        if committed_total() == total {
            break;
        }
    }

    assert_exactly_one_effect_per_key(&store, &effects, &group, KEYS).await;
    // Offsets are contiguous from 0 on each partition, so the committed offsets add up to the
    // number of records once every record is done.
    assert_eq!(committed_total(), total, "no record is left unprocessed");
    assert!(
        kills_mid_work == KILLS,
        "kills must land while consumers work: {kills_mid_work} of {KILLS}"
    );
    exec(&store, &format!("DROP TABLE {effects}")).await;
}
