//! The intake gate: while any delivery is held because the store is unavailable, no new deliveries
//! are taken from the broker.
//!
//! It counts holders rather than being a flag so it cannot stay closed with nobody probing the
//! store: a holder that gives up (channel gone, shutdown) leaves, and intake resumes.

use tokio::sync::watch;

/// Number of deliveries currently held for the store; intake waits for zero.
#[derive(Clone, Debug)]
pub(crate) struct Gate(watch::Sender<usize>);

/// One held delivery; leaving (drop) may reopen the gate.
pub(crate) struct Hold(watch::Sender<usize>);

impl Gate {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(0))
    }

    /// Registers a held delivery; returns the guard and whether intake was open until now.
    pub(crate) fn hold(&self) -> (Hold, bool) {
        let mut was_open = false;
        self.0.send_modify(|n| {
            was_open = *n == 0;
            *n += 1;
        });
        (Hold(self.0.clone()), was_open)
    }

    /// Resolves once no delivery is held.
    pub(crate) async fn opened(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    pub(crate) fn is_open(&self) -> bool {
        *self.0.borrow() == 0
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_when_the_last_holder_leaves() {
        let gate = Gate::new();
        let (a, first) = gate.hold();
        let (b, second) = gate.hold();
        assert!(first && !second && !gate.is_open());
        drop(a);
        assert!(!gate.is_open());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), gate.opened())
            .await
            .unwrap();
    }
}
