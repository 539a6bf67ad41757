//! Handler slots (`Processor::process_with_slots`): the handler concurrency a consumer is given
//! counts handler runs only, not the store round trips around them, and a message that waits for
//! a slot keeps its claim.

mod support;

use async_trait::async_trait;
use idemq::store::{Claim, ClaimRequest, MemoryStore, RecordKey, Store};
use idemq::{
    CancellationToken, Disposition, Engine, EngineConfig, Fingerprint, HandlerContext,
    HandlerError, HandlerSlots, IdempotencyKey, Message, Processor, RetryCause, Source,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::faulty::FaultyStore;
use support::peak::Peak;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

const SCOPE: &str = "orders";
const PATIENCE: Duration = Duration::from_secs(10);

fn msg(key: &str) -> Arc<Message> {
    Arc::new(
        Message::new(format!("payload of {key}"), Source::Other("test".into()))
            .with_header("Idempotency-Key", key.to_string()),
    )
}

fn claim_request<'a>(key: &'a RecordKey, fp: &'a Fingerprint) -> ClaimRequest<'a> {
    ClaimRequest::new(key, fp, Duration::from_secs(3), Duration::from_secs(60))
}

fn record_key(key: &str) -> RecordKey {
    RecordKey::new(SCOPE, IdempotencyKey::new(key).expect("key"))
}

fn config() -> EngineConfig {
    let mut c = EngineConfig::new(SCOPE);
    c.lease = Duration::from_secs(3);
    c
}

/// An engine whose handler reports its key on `started`, then waits for a permit of `gate`
/// (given back at once) before it returns.
fn gated_engine(
    store: Arc<dyn Store>,
    gate: Arc<Semaphore>,
) -> (Engine<impl idemq::Handler>, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = Engine::new(store, config(), move |ctx: HandlerContext| {
        let (tx, gate) = (tx.clone(), gate.clone());
        async move {
            let key = ctx.key.map(|k| k.to_string()).unwrap_or_default();
            let _ = tx.send(key);
            drop(gate.acquire().await);
            Ok::<_, HandlerError>("done")
        }
    })
    .expect("engine");
    (engine, rx)
}

async fn next_start(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a handler started in time")
        .expect("channel open")
}

/// Processes the message with key `key` on a task of its own, with `slots`, until `stop`.
fn start(
    processor: &Arc<dyn Processor>,
    slots: &HandlerSlots,
    stop: &CancellationToken,
    key: &str,
) -> JoinHandle<Disposition> {
    let (p, slots, stop, m) = (processor.clone(), slots.clone(), stop.clone(), msg(key));
    tokio::spawn(async move { p.process_with_slots(m, &stop, &slots).await })
}

/// Waits until the record of `key` exists (its message claimed it).
async fn until_claimed(store: &Arc<dyn Store>, key: &RecordKey) {
    tokio::time::timeout(PATIENCE, async {
        while store.get(key).await.expect("get").is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the key was claimed in time")
}

/// One handler slot: `a`'s handler runs (held at `gate`), `b` has claimed its key and waits
/// for the slot. `b` stops waiting when `stop_b` is cancelled.
struct BehindOne {
    store: Arc<dyn Store>,
    gate: Arc<Semaphore>,
    started: mpsc::UnboundedReceiver<String>,
    first: JoinHandle<Disposition>,
    second: JoinHandle<Disposition>,
}

async fn b_waits_behind_a(stop_b: &CancellationToken) -> BehindOne {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let gate = Arc::new(Semaphore::new(0));
    let (engine, mut started) = gated_engine(store.clone(), gate.clone());
    let engine: Arc<dyn Processor> = Arc::new(engine);
    let slots = HandlerSlots::new(1);
    let first = start(&engine, &slots, &CancellationToken::new(), "a");
    assert_eq!(next_start(&mut started).await, "a");
    let second = start(&engine, &slots, stop_b, "b");
    until_claimed(&store, &record_key("b")).await;
    BehindOne {
        store,
        gate,
        started,
        first,
        second,
    }
}

/// With one slot, a second message's handler runs while the first message's outcome is still
/// being stored: the slot covers the handler only.
#[tokio::test]
async fn the_slot_is_free_while_the_outcome_is_stored() {
    let store = FaultyStore::new(Arc::new(MemoryStore::new()));
    store.complete_gate.forget_permits(Semaphore::MAX_PERMITS);
    let open = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    let (engine, mut started) = gated_engine(store.clone(), open);
    let engine: Arc<dyn Processor> = Arc::new(engine);
    let slots = HandlerSlots::new(1);
    let stop = CancellationToken::new();

    let first = start(&engine, &slots, &stop, "a");
    assert_eq!(next_start(&mut started).await, "a");
    let second = start(&engine, &slots, &stop, "b");
    // `a` is blocked in `complete`; `b` must get the only slot anyway.
    assert_eq!(next_start(&mut started).await, "b");
    assert_eq!(
        store.completes.load(Ordering::SeqCst),
        0,
        "no outcome stored yet"
    );

    store.complete_gate.add_permits(Semaphore::MAX_PERMITS);
    for task in [first, second] {
        let d = task.await.expect("no panic");
        assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    }
    assert_eq!(slots.available(), 1, "the slot is given back");
}

/// At most `n` handlers run at once, however many messages are in process.
#[tokio::test]
async fn no_more_handlers_than_slots_run_at_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let peak = Peak::default();
    let engine = Engine::new(store, config(), {
        let peak = peak.clone();
        move |_ctx: HandlerContext| {
            let peak = peak.clone();
            async move {
                let _running = peak.enter();
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, HandlerError>(())
            }
        }
    })
    .expect("engine");
    let engine: Arc<dyn Processor> = Arc::new(engine);
    let all = HandlerSlots::new(3);
    let slots = HandlerSlots::new(8).within(&all);
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..40)
        .map(|i| start(&engine, &slots, &stop, &format!("k{i}")))
        .collect();
    for t in tasks {
        let d = t.await.expect("no panic");
        assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    }
    let peak = peak.most();
    assert!(
        (1..=3).contains(&peak),
        "the wider limit (3) bounds handlers: {peak}"
    );
}

/// A message waiting behind a long handler for longer than its lease still holds its claim:
/// the lease is renewed while it waits, so another consumer cannot take the key over.
#[tokio::test(start_paused = true)]
async fn a_message_waiting_for_a_slot_keeps_its_lease() {
    let BehindOne {
        store,
        gate,
        mut started,
        first,
        second,
    } = b_waits_behind_a(&CancellationToken::new()).await;
    // Three leases long: without renewal the claim of `b` would have expired twice over.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (key, fp) = (record_key("b"), Fingerprint::of(&msg("b"), &[]));
    let other = store.claim(&claim_request(&key, &fp)).await.expect("claim");
    assert!(
        matches!(other, Claim::InFlight { .. }),
        "b is still claimed by the waiting message: {other:?}"
    );

    gate.add_permits(2);
    assert_eq!(next_start(&mut started).await, "b");
    for task in [first, second] {
        let d = task.await.expect("no panic");
        assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
    }
}

/// A message whose lease cannot be renewed while it waits for a slot (here: its record was
/// forgotten, so the renewal finds no claim of its own) does not run its handler: it is a retry
/// with `RetryCause::LeaseLost`.
#[tokio::test(start_paused = true)]
async fn a_lease_lost_while_waiting_for_a_slot_is_a_retry_without_running() {
    let BehindOne {
        store,
        gate,
        mut started,
        first,
        second,
    } = b_waits_behind_a(&CancellationToken::new()).await;
    let key = record_key("b");
    assert!(store.forget(&key).await.expect("forget"));
    // The next renewal (every lease / 3 = 1 s) finds the claim gone.
    let d = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("b stops waiting")
        .expect("no panic");
    assert!(
        matches!(
            d,
            Disposition::Retry {
                cause: RetryCause::LeaseLost,
                ..
            }
        ),
        "{d:?}"
    );
    assert!(started.try_recv().is_err(), "b's handler never ran");
    gate.add_permits(1);
    let d = first.await.expect("no panic");
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
}

/// Shutdown while a message waits for a slot: it is abandoned without running, and its claim is
/// released so the redelivered copy is claimed at once.
#[tokio::test]
async fn shutdown_while_waiting_for_a_slot_releases_the_claim() {
    let stop_b = CancellationToken::new();
    let BehindOne {
        store,
        gate,
        mut started,
        first,
        second,
    } = b_waits_behind_a(&stop_b).await;
    let key = record_key("b");
    stop_b.cancel();
    let d = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("b stops waiting")
        .expect("no panic");
    assert_eq!(d, Disposition::Abandoned);
    let fp = Fingerprint::of(&msg("b"), &[]);
    let again = store.claim(&claim_request(&key, &fp)).await.expect("claim");
    assert!(
        matches!(again, Claim::Acquired { .. }),
        "the claim was released: {again:?}"
    );
    assert!(started.try_recv().is_err(), "b's handler never ran");
    gate.add_permits(1);
    let d = first.await.expect("no panic");
    assert!(matches!(d, Disposition::Processed { .. }), "{d:?}");
}

/// A processor that implements only `process` holds a slot for all of it (the default of
/// `process_with_slots`).
#[tokio::test]
async fn the_default_holds_a_slot_for_the_whole_processing() {
    struct Blocking {
        entered: AtomicU32,
        gate: Semaphore,
    }
    #[async_trait]
    impl Processor for Blocking {
        async fn process(&self, _m: Arc<Message>, _s: &CancellationToken) -> Disposition {
            self.entered.fetch_add(1, Ordering::SeqCst);
            drop(self.gate.acquire().await);
            Disposition::Superseded
        }
        fn scope(&self) -> &str {
            SCOPE
        }
    }
    let p = Arc::new(Blocking {
        entered: AtomicU32::new(0),
        gate: Semaphore::new(0),
    });
    let processor: Arc<dyn Processor> = p.clone();
    let slots = HandlerSlots::new(1);
    let stop = CancellationToken::new();
    let first = start(&processor, &slots, &stop, "x");
    let second = start(&processor, &slots, &stop, "x");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        p.entered.load(Ordering::SeqCst),
        1,
        "the second waits outside"
    );
    p.gate.add_permits(2);
    for t in [first, second] {
        assert_eq!(t.await.expect("no panic"), Disposition::Superseded);
    }
    assert_eq!(p.entered.load(Ordering::SeqCst), 2);
}
