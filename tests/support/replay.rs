//! Store fixtures shared by the dead-letter replay tests of both brokers.

use idemq::store::{Claim, ClaimRequest, RecordKey, Release, Store};
use idemq::{Fingerprint, IdempotencyKey, Message, Outcome, Source};
use std::sync::Arc;
use std::time::Duration;

/// Seeds `scope` with "done" (completed for payload `p-done`) and "failed" (released after a
/// failure, payload `p-failed`).
pub async fn seed(store: &Arc<dyn Store>, scope: &str) {
    let lease = Duration::from_secs(30);
    let retention = Duration::from_secs(600);
    for (key, payload, completed) in [("done", "p-done", true), ("failed", "p-failed", false)] {
        let k = RecordKey::new(scope.to_string(), IdempotencyKey::new(key).expect("key"));
        // Exactly as the consumer fingerprints a message: payload only, no chosen headers.
        let f = Fingerprint::of(&Message::new(payload, Source::Other("seed".into())), &[]);
        let Claim::Acquired { token, .. } = store
            .claim(&ClaimRequest::new(&k, &f, lease, retention))
            .await
            .expect("claim")
        else {
            panic!("not acquired")
        };
        if completed {
            store
                .complete(&k, token, &Outcome::succeeded("1"), retention)
                .await
                .expect("complete");
        } else {
            store
                .release(&k, token, Release::Reset)
                .await
                .expect("release");
        }
    }
}
