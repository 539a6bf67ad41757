//! Three `kafka_orders` processes in one consumer group on a private Tansu broker, over Redis,
//! each with `--exit-when-idle 8`: every process must exit by itself and every key must run once.
//!
//! This is the field report of a member left without partitions after a rebalance that never
//! exited (the scripts waiting for it hung). It is slow (about 30 s per run), so it is ignored by
//! default:
//!
//! ```text
//! cargo build --all-features --example kafka_orders
//! KAFKA_ORDERS_RUNS=10 cargo test --all-features --test kafka_orders_group -- --ignored --nocapture
//! ```
//!
//! `KAFKA_ORDERS_BIN` runs another build of the example (e.g. an older one, to compare).
#![cfg(all(feature = "kafka", feature = "redis"))]

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::kafka::*;
use support::services::{example_binary, redis_url, require_redis, unique};

/// 600 keys, five copies each, plus ten conflicts, ten missing and ten invalid keys: 3,030 records.
/// Three in five go to partition 0, so whoever holds it queues more than the default
/// `max_buffered_per_partition` (1000) and pauses it for backpressure.
fn records() -> Vec<Rec> {
    let mut recs = Vec::new();
    for copy in 0..5 {
        for k in 0..600 {
            recs.push(Rec::keyed(&format!("k{k}"), &format!("{{\"order\":{k}}}")));
            if copy == 2 && k % 60 == 0 {
                recs.push(Rec::keyed(&format!("k{k}"), "{\"order\":\"other\"}"));
            }
        }
    }
    for i in 0..10 {
        let mut missing = Rec::keyed(&format!("m{i}"), "no key");
        missing.headers.clear();
        recs.push(missing);
        let mut invalid = Rec::keyed(&format!("i{i}"), "bad key");
        invalid.headers = vec![("Idempotency-Key".into(), b"bad\nkey".to_vec())];
        recs.push(invalid);
    }
    recs.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let p = if i % 5 < 3 { 0 } else { 1 + (i % 3) as i32 };
            r.on(p)
        })
        .collect()
}

/// One run; returns how many processes did not exit by themselves within the bound.
async fn one_run(bin: &std::path::Path, run: usize, dir: &std::path::Path) -> usize {
    let Some(broker) = Broker::tansu() else {
        return 0;
    };
    let (topic, group) = (unique("orders"), unique("g"));
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 4).await;
    broker.create_topic(&dlq, 1).await;
    produce(&broker.bootstrap(), &topic, &records()).await;
    let effects = dir.join(format!("effects-{run}.jsonl"));
    let mut children: Vec<(Child, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let log = dir.join(format!("run{run}-p{i}.log"));
            let file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(bin)
                .args(["--bootstrap", &broker.bootstrap(), "--topic", &topic])
                .args(["--group", &group, "--store", &redis_url()])
                .args(["--dead-letter-topic", &dlq, "--exit-when-idle", "8"])
                .arg("--effects")
                .arg(&effects)
                .env("RUST_LOG", "info,librdkafka=warn")
                .stdout(Stdio::from(file.try_clone().expect("log file")))
                .stderr(Stdio::from(file))
                .spawn()
                .expect("start kafka_orders");
            std::thread::sleep(Duration::from_millis(300));
            (child, log)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut hung = 0;
    for (child, log) in &mut children {
        loop {
            match child.try_wait().expect("wait") {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    hung += 1;
                    println!("run {run}: process still running after 150 s; log {log:?}");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let mut per_key: HashMap<String, u32> = HashMap::new();
    for line in std::fs::read_to_string(&effects)
        .unwrap_or_default()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).expect("effects line");
        if let Some(k) = v["key"].as_str() {
            *per_key.entry(k.to_string()).or_default() += 1;
        }
    }
    let twice = per_key.values().filter(|n| **n > 1).count();
    println!(
        "run {run}: hung={hung} keys run={} keys run twice={twice} (elapsed until all exited or were killed)",
        per_key.len()
    );
    if hung == 0 {
        assert_eq!(per_key.len(), 600, "run {run}: every key ran");
    }
    assert_eq!(twice, 0, "run {run}: no key runs twice");
    hung
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "slow: about 30 s per run; see the file's doc"]
async fn three_kafka_orders_processes_in_one_group_all_exit_when_idle() {
    if !require_redis() {
        return;
    }
    let bin = match std::env::var("KAFKA_ORDERS_BIN") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => match example_binary("kafka_orders") {
            Some(p) => p,
            None => return,
        },
    };
    let runs: usize = std::env::var("KAFKA_ORDERS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(unique("kafka-orders-group"));
    std::fs::create_dir_all(&dir).expect("work dir");
    let mut hung_runs = 0;
    for run in 0..runs {
        if one_run(&bin, run, &dir).await > 0 {
            hung_runs += 1;
        }
    }
    println!("{hung_runs} of {runs} runs had a process that never exited (logs in {dir:?})");
    assert_eq!(hung_runs, 0);
}
