//! How many handlers run at once, and the most seen: for tests of concurrency limits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts what runs at once; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Peak {
    running: Arc<AtomicU64>,
    most: Arc<AtomicU64>,
}

/// One run counted by [`Peak::enter`], until dropped.
pub struct Running(Arc<AtomicU64>);

impl Peak {
    /// Counts one more running until the returned guard is dropped.
    pub fn enter(&self) -> Running {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Running(self.running.clone())
    }

    /// The most that ran at once so far.
    pub fn most(&self) -> u64 {
        self.most.load(Ordering::SeqCst)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
