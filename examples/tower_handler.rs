//! A handler built as a `tower::Service`, with tower's own middleware around it: a per-call
//! timeout and a concurrency limit, composed with `ServiceBuilder`. In process, over the memory
//! store, no broker needed:
//!
//! ```text
//! cargo run --example tower_handler --features tower
//! ```
//!
//! The handler pretends to call a slow payment provider: the first attempt for a key takes longer
//! than the timeout layer allows, so tower's `Elapsed` error comes back, which idemq treats as a
//! retriable failure (`Disposition::Retry`). The second attempt is fast and its outcome is
//! stored; a duplicate of the message is then replayed from the store without calling the
//! service again.

use idemq::handler;
use idemq::prelude::*;
use idemq::store::MemoryStore;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

#[derive(serde::Deserialize)]
struct Payment {
    amount: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        // At most 4 provider calls at once across all messages; more wait in `poll_ready`.
        .concurrency_limit(4)
        // A provider call longer than 200 ms is abandoned: a retriable failure.
        .timeout(Duration::from_millis(200))
        .service_fn(move |ctx: HandlerContext| {
            let counter = counter.clone();
            async move {
                let payment: Payment = ctx.json()?;
                counter.fetch_add(1, Ordering::SeqCst);
                // The provider is slow on the first attempt only.
                let latency = if ctx.attempt == 1 { 500 } else { 20 };
                tokio::time::sleep(Duration::from_millis(latency)).await;
                Ok::<_, HandlerError>(serde_json::json!({ "charged": payment.amount }))
            }
        });

    let engine = Engine::new(
        Arc::new(MemoryStore::new()),
        EngineConfig::new("payments"),
        handler::service(service),
    )?;
    let stop = CancellationToken::new();
    let message = Arc::new(
        Message::new("{\"amount\":42}", Source::Other("example".into()))
            .with_header("Idempotency-Key", "payment-1"),
    );

    // A broker adapter would redeliver after `after`; here we loop by hand.
    loop {
        match engine.process(message.clone(), &stop).await {
            Disposition::Retry { after, cause } => {
                println!("retry in {after:?}: {cause:?}");
                tokio::time::sleep(after).await;
            }
            Disposition::Processed { outcome } => {
                println!("processed: {}", String::from_utf8_lossy(&outcome.body));
                break;
            }
            other => return Err(format!("unexpected disposition: {other:?}").into()),
        }
    }
    match engine.process(message.clone(), &stop).await {
        Disposition::Replayed { outcome } => {
            println!(
                "duplicate replayed: {}",
                String::from_utf8_lossy(&outcome.body)
            )
        }
        other => return Err(format!("unexpected disposition: {other:?}").into()),
    }
    println!("provider called {} times", calls.load(Ordering::SeqCst));
    Ok(())
}
