//! Per-partition offset bookkeeping: which offsets are still unfinished and what may be committed.
//!
//! Kafka commits a single position per partition, meaning "everything before this offset is done".
//! With more than one message of a partition in flight, a later message may finish first, so the
//! committable position is the lowest unfinished offset — or one past the highest offset seen when
//! nothing is unfinished.

use std::collections::BTreeSet;

/// Offsets of one partition that were received and are not finished yet.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    pending: BTreeSet<i64>,
    /// One past the highest offset ever tracked.
    next: Option<i64>,
    /// Last position handed to a commit (successful or still on its way).
    committed: Option<i64>,
    /// Messages finished since the last commit, for count-based batching.
    finished_since_commit: usize,
}

impl OffsetTracker {
    /// Records a received offset. Returns `false` for an offset already tracked or already behind
    /// the tracked range (a duplicate delivery after a librdkafka fetch reset), which must not be
    /// processed a second time by this consumer.
    pub(crate) fn track(&mut self, offset: i64) -> bool {
        if self.pending.contains(&offset) {
            return false;
        }
        if let Some(next) = self.next {
            if offset < next {
                return false;
            }
        }
        self.pending.insert(offset);
        self.next = Some(offset + 1);
        true
    }

    /// Marks an offset finished. Returns the number of messages finished since the last commit.
    pub(crate) fn finish(&mut self, offset: i64) -> usize {
        if self.pending.remove(&offset) {
            self.finished_since_commit += 1;
        }
        self.finished_since_commit
    }

    /// The position to commit (lowest unfinished offset, else one past the highest seen), if it
    /// differs from the last one committed.
    pub(crate) fn committable(&self) -> Option<i64> {
        let position = self.pending.first().copied().or(self.next)?;
        (Some(position) != self.committed).then_some(position)
    }

    /// Records that `position` was handed to a commit.
    pub(crate) fn mark_committed(&mut self, position: i64) {
        self.committed = Some(position);
        self.finished_since_commit = 0;
    }

    /// Forgets the committed position after a failed commit, so the next flush retries it.
    pub(crate) fn commit_failed(&mut self, position: i64) {
        if self.committed == Some(position) {
            self.committed = None;
        }
    }

    /// Number of received messages not finished yet.
    pub(crate) fn unfinished(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_up_to_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.committable(), None);
        for o in 10..15 {
            assert!(t.track(o));
        }
        assert_eq!(t.committable(), Some(10));
        t.finish(11);
        t.finish(12);
        assert_eq!(t.committable(), Some(10), "10 is still unfinished");
        t.finish(10);
        assert_eq!(t.committable(), Some(13));
        t.mark_committed(13);
        assert_eq!(t.committable(), None, "nothing new to commit");
        t.finish(13);
        t.finish(14);
        assert_eq!(
            t.committable(),
            Some(15),
            "one past the highest offset seen"
        );
    }

    #[test]
    fn duplicates_and_old_offsets_are_not_tracked_twice() {
        let mut t = OffsetTracker::default();
        assert!(t.track(5));
        assert!(!t.track(5));
        t.finish(5);
        assert!(!t.track(5), "already finished");
        assert!(!t.track(3), "behind the tracked range");
        assert!(t.track(6));
        assert_eq!(t.unfinished(), 1);
    }

    #[test]
    fn a_failed_commit_is_retried() {
        let mut t = OffsetTracker::default();
        t.track(0);
        t.finish(0);
        t.mark_committed(1);
        assert_eq!(t.committable(), None);
        t.commit_failed(1);
        assert_eq!(t.committable(), Some(1));
        t.commit_failed(7);
        assert_eq!(t.committable(), Some(1), "a stale failure changes nothing");
    }

    #[test]
    fn counts_finished_messages_between_commits() {
        let mut t = OffsetTracker::default();
        for o in 0..3 {
            t.track(o);
        }
        assert_eq!(t.finish(0), 1);
        assert_eq!(t.finish(0), 1, "finishing twice counts once");
        assert_eq!(t.finish(1), 2);
        t.mark_committed(2);
        assert_eq!(t.finish(2), 1);
    }
}
