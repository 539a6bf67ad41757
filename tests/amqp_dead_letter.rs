//! Dead-lettering over a real RabbitMQ: reasons and headers, the queue's own DLX, replaying a DLQ,
//! retriable failures.
#![cfg(feature = "amqp")]

mod support;

use idemq::headers;
use idemq::{KeySource, Store};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Duration;
use support::amqp::{consumer, memory, redis, Rabbit, Recorder, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_missing_and_invalid_keys_are_dead_lettered_with_reasons() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("dl").await;
    let (dlx, dlq) = rabbit.dead_letter_pair("dl").await;
    let rec = Recorder::default();
    let run = Running::start(consumer(&queue, memory(), &rec).dead_letter_exchange(&dlx, None));

    rabbit
        .publish(&queue, Some("pay-1"), b"{\"amount\":1}")
        .await;
    run.wait(Duration::from_secs(10), "first", |s| s.processed == 1)
        .await;
    // Same key, different payload: a producer bug that must not be acked silently.
    rabbit
        .publish(&queue, Some("pay-1"), b"{\"amount\":999}")
        .await;
    // No key at all, with properties that must survive dead-lettering.
    rabbit
        .publish_props(
            "",
            &queue,
            b"no key",
            BasicProperties::default()
                .with_message_id("m-missing".into())
                .with_content_type("text/plain".into()),
        )
        .await;
    // A key with a control character.
    rabbit.publish(&queue, Some("bad\nkey"), b"invalid").await;

    let dead = rabbit.wait_drain(&dlq, 3, Duration::from_secs(10)).await;
    let stats = run.stop().await;
    assert_eq!(dead.len(), 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(rec.started("pay-1"), 1, "the conflicting copy did not run");

    let by_reason = |reason: &str| {
        dead.iter()
            .find(|m| m.header(headers::REASON).as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}"))
    };
    let conflict = by_reason("idempotency-key-conflict");
    assert_eq!(conflict.body, b"{\"amount\":999}");
    assert_eq!(conflict.header("Idempotency-Key").as_deref(), Some("pay-1"));
    assert!(conflict
        .header(headers::ERROR)
        .is_some_and(|e| e.contains("fingerprint")));
    let missing = by_reason("missing-idempotency-key");
    assert_eq!(missing.body, b"no key");
    assert_eq!(
        missing.props.message_id().as_ref().map(|m| m.as_str()),
        Some("m-missing")
    );
    assert_eq!(
        missing.props.content_type().as_ref().map(|m| m.as_str()),
        Some("text/plain")
    );
    let invalid = by_reason("invalid-idempotency-key");
    assert_eq!(invalid.body, b"invalid");
    for m in &dead {
        assert_eq!(
            m.header(headers::SOURCE_QUEUE).as_deref(),
            Some(queue.as_str())
        );
        assert_eq!(
            m.header(headers::SOURCE_ROUTING_KEY).as_deref(),
            Some(queue.as_str())
        );
        assert_eq!(m.header(headers::SOURCE_EXCHANGE).as_deref(), Some(""));
    }
    assert_eq!(rabbit.counts(&queue).await.0, 0, "originals acked");
    rabbit.cleanup().await;
}

with_stores!(dlq_replay_skips_completed_and_processes_failed);

/// With no dead-letter exchange of ours, a rejected message goes through the queue's own
/// `x-dead-letter-exchange`. Moving the DLQ back replays it: keys completed meanwhile are skipped,
/// keys whose earlier attempt failed run now.
async fn dlq_replay_skips_completed_and_processes_failed(store: Arc<dyn Store>) {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let (dlx, dlq) = rabbit.dead_letter_pair("replay").await;
    let queue = rabbit.queue_with_dlx("replay", &dlx).await;
    let rec = Recorder::default();
    let run = Running::start(consumer(&queue, store, &rec));

    // An incident: the handler fails permanently for a while.
    rec.set_broken(true);
    rabbit.publish(&queue, Some("inv-1"), b"{\"n\":1}").await;
    rabbit.publish(&queue, Some("inv-2"), b"{\"n\":2}").await;
    let parked = rabbit.wait_drain(&dlq, 2, Duration::from_secs(10)).await;
    assert_eq!(parked.len(), 2, "both rejected into the queue's DLX");
    assert!(parked.iter().all(|m| m.header("x-death").is_some()));
    run.wait(Duration::from_secs(5), "rejects", |s| s.amqp.rejected == 2)
        .await;
    // Fixed. The producer re-sends inv-1 on its own, so it completes before the DLQ replay.
    rec.set_broken(false);
    rabbit.publish(&queue, Some("inv-1"), b"{\"n\":1}").await;
    run.wait(Duration::from_secs(10), "inv-1 done", |s| s.processed == 1)
        .await;
    // Operator moves the parked messages back (they keep their headers, including x-death).
    for m in &parked {
        rabbit
            .publish_props("", &queue, &m.body, m.props.clone())
            .await;
    }
    run.wait(Duration::from_secs(10), "replayed DLQ", |s| {
        s.processed == 2 && s.replayed == 1
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(rec.succeeded("inv-1"), 1, "completed key skipped on replay");
    assert_eq!(rec.succeeded("inv-2"), 1, "failed key processed on replay");
    assert_eq!(
        rec.started("inv-1"),
        2,
        "one failed run + one success, none on replay"
    );
    assert_eq!(stats.amqp.rejected, 2, "{stats:?}");
    assert_eq!(rabbit.counts(&queue).await.0, 0);
    assert_eq!(rabbit.counts(&dlq).await.0, 0);
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retriable_failures_are_requeued_then_dead_lettered_when_exhausted() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("retry").await;
    let (dlx, dlq) = rabbit.dead_letter_pair("retry").await;
    let rec = Recorder::default();
    let run = Running::start(consumer(&queue, memory(), &rec).dead_letter_exchange(&dlx, None));
    rabbit
        .publish(&queue, Some("flaky"), br#"{"fail":"retriable-once"}"#)
        .await;
    rabbit
        .publish(&queue, Some("down"), br#"{"fail":"retriable"}"#)
        .await;
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(15)).await;
    run.wait(Duration::from_secs(10), "flaky done", |s| s.processed == 1)
        .await;
    let stats = run.stop().await;
    assert_eq!(rec.succeeded("flaky"), 1);
    assert_eq!(rec.started("flaky"), 2, "requeued once, then succeeded");
    assert_eq!(rec.started("down"), 3, "max_attempts = 3");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header(headers::REASON).as_deref(),
        Some("retries-exhausted")
    );
    assert!(stats.amqp.requeued >= 3, "{stats:?}");
    assert_eq!(rabbit.counts(&queue).await.0, 0);
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn message_id_is_the_key_fallback_and_numeric_headers_work() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("mid").await;
    let rec = Recorder::default();
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .key_source(KeySource::header("Idempotency-Key"))
            .key_source(KeySource::MessageId),
    );
    for _ in 0..2 {
        rabbit
            .publish_props(
                "",
                &queue,
                b"{}",
                BasicProperties::default().with_message_id("mid-7".into()),
            )
            .await;
        let mut h = FieldTable::default();
        h.insert("Idempotency-Key".into(), AMQPValue::LongLongInt(42));
        rabbit
            .publish_props(
                "",
                &queue,
                b"{}",
                BasicProperties::default().with_headers(h),
            )
            .await;
    }
    run.wait(Duration::from_secs(10), "4 settled", |s| s.finished() == 4)
        .await;
    let stats = run.stop().await;
    assert_eq!((stats.processed, stats.replayed), (2, 2));
    assert_eq!(rec.succeeded("mid-7"), 1);
    assert_eq!(rec.succeeded("42"), 1);
    rabbit.cleanup().await;
}

/// A dead-letter exchange that does not exist makes the broker close the publishing channel; the
/// delivery must then be requeued, never acked, and the consumer must keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconfirmed_dead_letter_is_requeued_not_lost() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("nodlx").await;
    let rec = Recorder::default();
    let missing = support::services::unique("no-such-exchange");
    let run = Running::start(
        consumer(&queue, memory(), &rec)
            .dead_letter_exchange(&missing, None)
            .publish_retries(
                2,
                idemq::Backoff::new(Duration::from_millis(20), Duration::from_millis(50)),
                Duration::from_secs(2),
            ),
    );
    rabbit.publish(&queue, None, b"no key").await;
    run.wait(Duration::from_secs(10), "requeued", |s| {
        s.amqp.requeued >= 1
    })
    .await;
    // The consumer still processes good messages on the same session.
    rabbit.publish(&queue, Some("good"), b"{}").await;
    run.wait(Duration::from_secs(10), "good processed", |s| {
        s.processed == 1
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(
        stats.amqp.reconnects, 0,
        "a closed publishing channel is reopened in place"
    );
    assert_eq!(
        rabbit.counts(&queue).await.0,
        1,
        "the keyless message is still queued"
    );
    rabbit.cleanup().await;
}

/// `amqp_orders --dead-letter-exchange X` declares `X` and `<queue>.dlq` when they are missing, so
/// the very first dead letter lands in the DLQ (publishing to a missing exchange would fail with
/// 404 and the delivery would be requeued over and over).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_orders_declares_its_dead_letter_exchange_and_queue() {
    use support::services::{amqp_url, example_binary, unique};
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let Some(bin) = example_binary("amqp_orders") else {
        return;
    };
    let queue = rabbit.queue("orders-ex").await;
    let (dlx, dlq) = (unique("orders-ex-dlx"), format!("{queue}.dlq"));
    // No key header and no message_id: dead-lettered as `missing-idempotency-key`.
    rabbit.publish(&queue, None, b"{\"order\":1}").await;
    let mut child = tokio::process::Command::new(bin)
        .args(["--amqp-url", &amqp_url(), "--queue", &queue])
        .args(["--dead-letter-exchange", &dlx, "--store", "memory"])
        .args(["--exit-when-idle", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start amqp_orders");
    // The DLQ appears when the example has declared it.
    let exists = || async {
        let conn = lapin::Connection::connect(&amqp_url(), Default::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        let passive = lapin::options::QueueDeclareOptions::default().passive();
        let found = ch
            .queue_declare(dlq.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = conn.close(200, "ok".into()).await;
        found
    };
    let start = std::time::Instant::now();
    while !exists().await {
        assert!(start.elapsed() < Duration::from_secs(30), "{dlq} declared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = rabbit.wait_drain(&dlq, 1, Duration::from_secs(30)).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits when idle")
        .expect("wait");
    assert!(status.success(), "amqp_orders exit status {status:?}");
    assert_eq!(dead.len(), 1, "the first dead letter is in the DLQ");
    assert_eq!(
        dead[0].header(headers::REASON).as_deref(),
        Some("missing-idempotency-key")
    );
    assert_eq!(rabbit.counts(&queue).await.0, 0, "not requeued");
    rabbit.delete_at_cleanup(&[&dlq], &[&dlx]);
    rabbit.cleanup().await;
}
