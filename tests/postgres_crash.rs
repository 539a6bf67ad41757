//! Crash test for exactly-once effects (invariant 5), without a broker: the test plays the broker.
//!
//! The test binary re-runs itself as a worker process (`crash_worker`, ignored unless
//! `IDEMQ_CRASH_WORKER` is set) that reads messages from stdin, processes up to 8 at once with a
//! `TransactionalEngine` whose handler inserts one `order_effects` row (key, pid) per execution, and
//! prints `ack <seq>` only after `Processed`/`Replayed`. The test feeds it 3,000 messages in which
//! keys repeat (750 keys), SIGKILLs it at random moments at least 10 times, redelivers every message not yet
//! acked to a fresh worker (as a broker would), and finally lets one drain. Every key must end with
//! exactly one effect row, and every message must have been acked.
#![cfg(feature = "postgres")]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::Duration;
use support::postgres::{exec, shared_store, unique_table};
use support::services::{postgres_url, unique};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const MESSAGES: u64 = 3000;
const DISTINCT_KEYS: u64 = 750;
const KILLS: u32 = 12;

fn key_of(seq: u64) -> String {
    // Every key four times: two adjacent copies (processed concurrently by one worker), and the
    // same pair again far away in the stream (after restarts).
    format!("order-{}", ((seq / 2) * 7919) % DISTINCT_KEYS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_leave_exactly_one_effect_row_per_key() {
    let Some(store) = shared_store().await else {
        return;
    };
    let effects = unique_table("order_effects");
    exec(
        &store,
        &format!(
            "CREATE TABLE {effects} (idempotency_key text NOT NULL, pid int NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
    )
    .await;
    let scope = unique("crash");
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let (mut kills, mut kills_mid_work) = (0u32, 0u32);
    let mut rounds = 0;
    while acked.len() < MESSAGES as usize {
        rounds += 1;
        assert!(
            rounds < KILLS + 20,
            "messages stay unprocessed: {} acked",
            acked.len()
        );
        let kill_this_one = kills < KILLS;
        let pending: Vec<u64> = (0..MESSAGES).filter(|s| !acked.contains(s)).collect();
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "crash_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("IDEMQ_CRASH_WORKER", "1")
            .env("IDEMQ_CRASH_TABLE", store.table().to_string())
            .env("IDEMQ_CRASH_EFFECTS", &effects)
            .env("IDEMQ_CRASH_SCOPE", &scope)
            .env("IDEMQ_TEST_POSTGRES_URL", postgres_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn worker");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        // Redelivery: everything not acked yet, in order.
        let feeder = tokio::spawn(async move {
            for seq in pending {
                let line = format!("{seq} {}\n", key_of(seq));
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = stdin.flush().await;
            // Keep stdin open; the worker exits when killed or when the test closes it.
            std::future::pending::<()>().await;
        });
        let mut lines = BufReader::new(stdout).lines();
        let before = acked.len();
        let deadline = if kill_this_one {
            // A random moment: after 20..300 ms of processing (the pseudo-random spread comes from
            // the clock, which is enough to vary the kill point between rounds).
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            Duration::from_millis(20 + u64::from(nanos % 280))
        } else {
            Duration::from_secs(120)
        };
        let read_acks = async {
            let mut started = false;
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        // libtest may print its own text on the same line before ours.
                        if line.ends_with("ready") {
                            started = true;
                            if kill_this_one {
                                return true;
                            }
                            continue;
                        }
                        if let Some(seq) = parse_ack(&line) {
                            acked.insert(seq);
                        }
                        if acked.len() == MESSAGES as usize {
                            return started;
                        }
                    }
                    _ => return started,
                }
            }
        };
        if kill_this_one {
            // Wait for the worker to start, then let it work for `deadline`, then SIGKILL.
            let _ = tokio::time::timeout(Duration::from_secs(30), read_acks).await;
            // Or after a share of the messages, whichever comes first: a fast worker must not
            // drain the stream before enough kills have hit it mid-work.
            let share = (MESSAGES / u64::from(2 * KILLS)) as usize;
            let more_acks = async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(seq) = parse_ack(&line) {
                        acked.insert(seq);
                    }
                    if acked.len() - before >= share {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(deadline, more_acks).await;
            child.start_kill().expect("SIGKILL");
            let _ = child.wait().await;
            kills += 1;
            if acked.len() < MESSAGES as usize {
                kills_mid_work += 1;
            }
        } else {
            let drained = tokio::time::timeout(deadline, read_acks).await;
            assert!(drained.is_ok(), "final worker did not drain in time");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        feeder.abort();
        eprintln!(
            "round {rounds}: {} acks (+{}), kills {kills}",
            acked.len(),
            acked.len() - before
        );
    }

    assert!(kills >= 10, "only {kills} kills");
    assert!(
        kills_mid_work >= 10,
        "kills must hit running workers: {kills_mid_work}"
    );
    let client = store.pool().get().await.expect("client");
    let rows = client
        .query(
            &format!(
                "SELECT idempotency_key, count(*), count(DISTINCT pid) FROM {effects} \
                 GROUP BY idempotency_key"
            ),
            &[],
        )
        .await
        .expect("effects");
    let per_key: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let pids: i64 = client
        .query_one(&format!("SELECT count(DISTINCT pid) FROM {effects}"), &[])
        .await
        .expect("pids")
        .get(0);
    drop(client);
    let doubled: Vec<_> = per_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "keys with more than one effect: {doubled:?}"
    );
    assert_eq!(
        per_key.len() as u64,
        DISTINCT_KEYS,
        "every key has its effect"
    );
    assert!(pids > 1, "effects come from several worker processes");
    exec(&store, &format!("DROP TABLE {effects}")).await;
}

fn parse_ack(line: &str) -> Option<u64> {
    let at = line.find("ack ")?;
    line[at + 4..].trim().parse().ok()
}

/// The worker process (run by the test above through the test binary itself).
#[test]
#[ignore = "worker process for sigkilled_workers_leave_exactly_one_effect_row_per_key"]
fn crash_worker() {
    if std::env::var("IDEMQ_CRASH_WORKER").is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(worker::run());
}

mod worker {
    use idemq::store::postgres::{PostgresOptions, PostgresStore};
    use idemq::transactional::{from_fn_with, TransactionalEngine};
    use idemq::{
        Backoff, CancellationToken, Disposition, EngineConfig, HandlerError, Message, Source,
    };
    use std::io::Write;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::sync::Semaphore;

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the test"))
    }

    pub async fn run() {
        let options = PostgresOptions::default()
            .with_table(&env("IDEMQ_CRASH_TABLE"))
            .expect("table")
            .with_pool_size(10);
        let store = PostgresStore::connect_with(&env("IDEMQ_TEST_POSTGRES_URL"), options)
            .await
            .expect("connect");
        let insert = format!(
            "INSERT INTO {} (idempotency_key, pid) VALUES ($1, $2)",
            env("IDEMQ_CRASH_EFFECTS")
        );
        let pid = std::process::id() as i32;
        let handler = from_fn_with((insert, pid), async |(insert, pid), ctx, tx| {
            let key = ctx.key.as_ref().map(|k| k.as_str().to_owned());
            tx.execute(insert, &[&key, pid])
                .await
                .map_err(HandlerError::retriable)?;
            // Widen the window between the effect and the commit, where a kill hurts most.
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(true)
        });
        let mut config = EngineConfig::new(env("IDEMQ_CRASH_SCOPE"));
        config.lease = Duration::from_secs(5);
        config.retry_backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(50));
        let engine = Arc::new(TransactionalEngine::new(store, config, handler).expect("engine"));
        let permits = Arc::new(Semaphore::new(8));
        println!("ready");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some((seq, key)) = line.split_once(' ') else {
                continue;
            };
            let (seq, key) = (seq.to_string(), key.to_string());
            let permit = permits.clone().acquire_owned().await.expect("semaphore");
            let engine = engine.clone();
            tokio::spawn(async move {
                let msg = Arc::new(
                    Message::new(format!("payload of {key}"), Source::Other("crash".into()))
                        .with_header("Idempotency-Key", key),
                );
                let stop = CancellationToken::new();
                loop {
                    match engine.process(msg.clone(), &stop).await {
                        Disposition::Processed { .. } | Disposition::Replayed { .. } => break,
                        Disposition::Retry { after, .. } => tokio::time::sleep(after).await,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "ack {seq}");
                let _ = out.flush();
                drop(permit);
            });
        }
    }
}
