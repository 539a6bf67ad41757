//! Crash test with the real example on RabbitMQ: `amqp_orders --transactional` consumers on the
//! Postgres store are SIGKILLed at random moments and restarted; afterwards every key has exactly
//! one `order_effects` row and the queue is empty.
//!
//! Needs the example binary (`cargo test --all-features` builds examples before running tests; with
//! `--test postgres_amqp_crash` alone, build it first: `cargo build --all-features --example
//! amqp_orders`).
#![cfg(all(feature = "postgres", feature = "amqp"))]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use support::amqp::Rabbit;
use support::postgres::{
    assert_exactly_one_effect_per_key, effect_rows, exec, shared_store, unique_table,
    wait_for_work_then_random_pause, SHARED_TABLE,
};
use support::services::{amqp_url, example_binary, postgres_url};
use tokio::process::Command;

const ORDERS: i64 = 1000;
const COPIES: u64 = 3;
const KILLS: u32 = 10;

fn consumer(bin: &PathBuf, queue: &str, effects: &str, idle_exit: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--amqp-url", &amqp_url(), "--queue", queue])
        .args([
            "--store",
            &format!(
                "{}?idemq_table={SHARED_TABLE}&idemq_migrate=true",
                postgres_url()
            ),
        ])
        .args(["--transactional", "--effects-table", effects])
        // A slow handler (inside the transaction) and little concurrency, so the work spans all
        // the kills: ~1,000 keys × 20 ms / 4 ≈ 5 s of handler time.
        .args([
            "--handler-ms",
            "20",
            "--prefetch",
            "8",
            "--concurrency",
            "4",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if idle_exit {
        cmd.args(["--exit-when-idle", "3"]);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_amqp_orders_consumers_leave_exactly_one_effect_row_per_key() {
    let Some(store) = shared_store().await else {
        return;
    };
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(bin) = example_binary("amqp_orders") else {
        return;
    };
    let queue = rabbit.queue("pg-crash").await;
    let effects = unique_table("order_effects");

    let published = Command::new(&bin)
        .args(["--amqp-url", &amqp_url(), "--queue", &queue])
        .args([
            "--publish",
            &ORDERS.to_string(),
            "--copies",
            &COPIES.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run publisher");
    assert!(published.success(), "publishing failed");
    let total = ORDERS as u64 * COPIES;
    assert!(total >= 2000);

    let mut kills_mid_work = 0;
    for round in 0..KILLS {
        let mut child = consumer(&bin, &queue, &effects, false)
            .spawn()
            .expect("spawn consumer");
        // Wait until this consumer makes progress (startup time varies with machine load), then
        // kill it a random 50..550 ms later.
        let before =
            wait_for_work_then_random_pause(&store, &effects, Duration::from_secs(30)).await;
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        let done = effect_rows(&store, &effects).await;
        // Unacked deliveries of the killed consumer are back in the queue.
        let (ready, _) = rabbit.counts(&queue).await;
        if done > before && ready > 0 {
            kills_mid_work += 1;
        }
        eprintln!(
            "kill {}: {done} keys with effects, {ready} messages left",
            round + 1
        );
    }

    let mut last = consumer(&bin, &queue, &effects, true)
        .spawn()
        .expect("spawn final consumer");
    let exited = tokio::time::timeout(Duration::from_secs(180), last.wait())
        .await
        .expect("final consumer drains and exits when idle")
        .expect("wait");
    assert!(exited.success(), "final consumer failed: {exited}");

    assert_exactly_one_effect_per_key(&store, &effects, &queue, ORDERS).await;
    let (ready, _) = rabbit.counts(&queue).await;
    assert_eq!(ready, 0, "no message is left unprocessed");
    assert!(
        kills_mid_work == KILLS,
        "kills must land while consumers work: {kills_mid_work} of {KILLS}"
    );
    exec(&store, &format!("DROP TABLE {effects}")).await;
    rabbit.cleanup().await;
}
