//! Ack coalescing over a real RabbitMQ: a run of ready deliveries is settled by one
//! `basic.ack(multiple)`, a slow handler holds back the acks behind it only for the linger, and
//! the broker ends with nothing unacknowledged either way.
#![cfg(feature = "amqp")]

mod support;

use std::time::Duration;
use support::amqp::{consumer, memory, unacked_at_broker, Rabbit, Recorder, Running};

/// Publishes `slow` (sleeping `slow_ms`) first, so it gets the lowest delivery tag, then `fast`
/// quick keys.
async fn slow_then_fast(rabbit: &Rabbit, queue: &str, slow_ms: u64, fast: usize) {
    let slow = format!("{{\"sleep_ms\":{slow_ms}}}");
    rabbit.publish(queue, Some("slow"), slow.as_bytes()).await;
    for i in 0..fast {
        rabbit
            .publish(queue, Some(&format!("fast-{i}")), b"{}")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_ready_deliveries_is_settled_by_one_ack() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("ack-run").await;
    let rec = Recorder::default();
    slow_then_fast(&rabbit, &queue, 300, 5).await;
    // A linger longer than the slow handler: the fast deliveries wait for it to finish.
    let run = Running::start(consumer(&queue, memory(), &rec).ack_linger(Duration::from_secs(5)));
    run.wait(Duration::from_secs(10), "all six acked", |s| {
        s.processed == 6
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(
        stats.amqp.ack_frames, 1,
        "one multiple ack for the run: {stats:?}"
    );
    assert_eq!(
        stats.amqp.left_unacked + stats.amqp.requeued,
        0,
        "{stats:?}"
    );
    assert_eq!(rec.succeeded("slow"), 1);
    // Had the multiple ack not settled them all, the close would have requeued the rest.
    assert_eq!(
        rabbit.counts(&queue).await,
        (0, 0),
        "nothing left at the broker"
    );
    rabbit.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_handler_holds_back_the_acks_behind_it_only_for_the_linger() {
    let Some(rabbit) = Rabbit::connect().await else {
        return;
    };
    let queue = rabbit.queue("ack-linger").await;
    let rec = Recorder::default();
    slow_then_fast(&rabbit, &queue, 3_000, 5).await;
    let run = Running::start(consumer(&queue, memory(), &rec));
    run.wait(Duration::from_secs(2), "the fast five acked", |s| {
        s.processed == 5
    })
    .await;
    assert_eq!(rec.started("slow"), 1);
    assert_eq!(
        rec.succeeded("slow"),
        0,
        "acked while the slow handler still ran"
    );
    // No multiple ack covered the running delivery: the broker still holds exactly it.
    assert_eq!(unacked_at_broker(&queue).await, 1);
    assert_eq!(
        rec.succeeded("slow"),
        0,
        "still running when the broker was asked"
    );
    run.wait(Duration::from_secs(10), "the slow one acked", |s| {
        s.processed == 6
    })
    .await;
    let stats = run.stop().await;
    assert_eq!(
        stats.amqp.left_unacked + stats.amqp.requeued,
        0,
        "{stats:?}"
    );
    assert_eq!(
        rabbit.counts(&queue).await,
        (0, 0),
        "nothing left at the broker"
    );
    rabbit.cleanup().await;
}
