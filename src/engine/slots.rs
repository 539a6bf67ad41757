//! Handler slots: how many handlers may run at once, counted apart from how many messages are
//! being processed.
//!
//! A message spends time in the store before its handler (the claim) and after it (storing the
//! outcome). If the concurrency limit covered those round trips too, a consumer with `n` slots
//! would run fewer than `n` handlers at any moment, and a slow store would eat into the handler
//! throughput a hand-written consumer with the same limit gets. So a broker adapter hands the
//! engine a [`HandlerSlots`] ([`Processor::process_with_slots`](crate::Processor::process_with_slots)):
//! the engine claims the key, takes a slot only for the handler run, and gives it back before it
//! stores the outcome. The adapter bounds the messages in process separately (more than the
//! slots, so claims and completes overlap with handler runs).
//!
//! ```
//! # async fn demo() {
//! use idemq::HandlerSlots;
//!
//! // Four handlers per partition, and no more than 64 over all partitions.
//! let all = HandlerSlots::new(64);
//! let partition = HandlerSlots::new(4).within(&all);
//! let slot = partition.acquire().await;
//! assert!(slot.is_some());
//! assert_eq!(partition.available(), 3);
//! # }
//! ```

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages in process per handler slot, when messages may run concurrently: while one message's
/// handler runs, others are being claimed or are storing their outcome, so the handler slots stay
/// busy however long the store takes to answer.
pub(crate) const RECORDS_PER_SLOT: usize = 3;

/// Messages in process at once for `concurrency` handler slots. With one handler at a time the
/// adapter keeps the order of its messages, so one message is in process (claimed) at a time: a
/// message claimed ahead could otherwise win the slot before an earlier one whose claim answered
/// later.
#[cfg_attr(not(any(feature = "kafka", feature = "amqp")), allow(dead_code))]
pub(crate) fn records_in_process(concurrency: usize) -> usize {
    if concurrency <= 1 {
        1
    } else {
        concurrency.saturating_mul(RECORDS_PER_SLOT)
    }
}

/// A limit on handlers running at once, optionally nested in a wider one (a partition's limit
/// within the consumer's). Cheap to clone; clones share the limit.
#[derive(Clone, Debug)]
pub struct HandlerSlots {
    own: Arc<Semaphore>,
    outer: Option<Arc<Semaphore>>,
}

/// A slot held while a handler runs; dropping it frees the slot.
#[derive(Debug)]
pub struct HandlerSlot {
    _own: OwnedSemaphorePermit,
    _outer: Option<OwnedSemaphorePermit>,
}

impl HandlerSlots {
    /// At most `n` handlers at once (`n` is raised to 1: a limit of 0 would never run anything).
    pub fn new(n: usize) -> Self {
        Self {
            own: Arc::new(Semaphore::new(n.max(1))),
            outer: None,
        }
    }

    /// The same limit, also bounded by `outer`'s own limit (shared with `outer` and its other
    /// nested limits). A slot takes this limit's permit first, then `outer`'s, so a message never
    /// holds a slot of the wider limit while it waits for its own.
    pub fn within(mut self, outer: &HandlerSlots) -> Self {
        self.outer = Some(outer.own.clone());
        self
    }

    /// Waits for a free slot; `None` once the limit is [closed](Self::close).
    pub async fn acquire(&self) -> Option<HandlerSlot> {
        let own = self.own.clone().acquire_owned().await.ok()?;
        let outer = match &self.outer {
            Some(outer) => Some(outer.clone().acquire_owned().await.ok()?),
            None => None,
        };
        Some(HandlerSlot {
            _own: own,
            _outer: outer,
        })
    }

    /// A slot if one is free now, without waiting.
    pub fn try_acquire(&self) -> Option<HandlerSlot> {
        let own = self.own.clone().try_acquire_owned().ok()?;
        let outer = match &self.outer {
            Some(outer) => Some(outer.clone().try_acquire_owned().ok()?),
            None => None,
        };
        Some(HandlerSlot {
            _own: own,
            _outer: outer,
        })
    }

    /// Free slots of this limit (not counting the wider one).
    pub fn available(&self) -> usize {
        self.own.available_permits()
    }

    /// Closes this limit (not the wider one): waiting and later [`acquire`](Self::acquire) calls
    /// answer `None`; slots already held stay valid until dropped.
    pub fn close(&self) {
        self.own.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nested_limit_is_bounded_by_both() {
        let all = HandlerSlots::new(2);
        let a = HandlerSlots::new(2).within(&all);
        let b = HandlerSlots::new(2).within(&all);
        let a1 = a.try_acquire().expect("a free");
        let _b1 = b.try_acquire().expect("b free");
        assert!(a.try_acquire().is_none(), "the shared limit is full");
        drop(a1);
        assert!(a.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_failed_try_gives_back_the_own_permit() {
        let all = HandlerSlots::new(1);
        let a = HandlerSlots::new(1).within(&all);
        let _held = all.try_acquire().expect("free");
        assert!(a.try_acquire().is_none());
        assert_eq!(
            a.available(),
            1,
            "own permit returned when the outer one is not free"
        );
    }

    #[tokio::test]
    async fn closing_wakes_waiters_with_none() {
        let slots = HandlerSlots::new(1);
        let _held = slots.acquire().await.expect("free");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.is_none() }
        });
        tokio::task::yield_now().await;
        slots.close();
        assert!(waiter.await.expect("no panic"));
    }

    #[test]
    fn zero_is_raised_to_one() {
        assert_eq!(HandlerSlots::new(0).available(), 1);
    }
}
