//! The core's view of its log: the durable [`LogStore`] overlaid with changes
//! made since the last `advance` (appended entries, a pending truncation, a
//! pending reset), which the next `Ready` hands to the driver.

use crate::ready::LogReset;
use crate::storage::{LogReadError, LogStore};
use crate::types::{Entry, LogStart, Term};

pub(crate) struct RaftLog<S: LogStore> {
    pub(crate) store: S,
    /// Entries after `stable_end()` not yet confirmed durable.
    unstable: Vec<Entry>,
    /// How many of `unstable` (from the front) the outstanding `Ready` holds: a
    /// leader may append more while that `Ready` is being persisted, and those
    /// stay unstable after `persisted` (they go into the next `Ready`).
    handed_out: usize,
    /// Durable entries at offsets ≥ this are logically gone.
    truncate_to: Option<u64>,
    /// The whole durable log is logically replaced by an empty one here.
    reset: Option<LogReset>,
    /// Highest end offset known committed (Raft's commitIndex = Kafka's HW).
    pub(crate) commit_offset: u64,
}

impl<S: LogStore> RaftLog<S> {
    pub(crate) fn new(store: S, commit_hint: u64) -> RaftLog<S> {
        let start = store.log_start().offset;
        let end = store.end_offset();
        // The hint may be ahead of what survived a crash; anything at or below the
        // log start is committed by definition.
        let commit_offset = commit_hint.clamp(start, end.max(start));
        let commit_offset = if store.term_of_entry_ending_at(commit_offset).is_some() {
            commit_offset
        } else {
            start
        };
        RaftLog {
            store,
            unstable: Vec::new(),
            handed_out: 0,
            truncate_to: None,
            reset: None,
            commit_offset,
        }
    }

    pub(crate) fn start(&self) -> LogStart {
        match &self.reset {
            Some(r) => r.start,
            None => self.store.log_start(),
        }
    }

    /// End of the part of the durable log that is still logically present.
    fn stable_end(&self) -> u64 {
        match (&self.reset, self.truncate_to) {
            (Some(r), _) => r.start.offset,
            (None, Some(t)) => t,
            (None, None) => self.store.end_offset(),
        }
    }

    pub(crate) fn last_end(&self) -> u64 {
        self.unstable
            .last()
            .map_or_else(|| self.stable_end(), |e| e.end_offset)
    }

    pub(crate) fn last_term(&self) -> Term {
        match self.unstable.last() {
            Some(e) => e.term,
            None => self
                .term_at(self.stable_end())
                .expect("stable end is an entry end"),
        }
    }

    /// Term of the entry ending exactly at `end_offset` (the start counts).
    pub(crate) fn term_at(&self, end_offset: u64) -> Option<Term> {
        let stable_end = self.stable_end();
        if end_offset > stable_end {
            let i = self.unstable.partition_point(|e| e.end_offset < end_offset);
            return match self.unstable.get(i) {
                Some(e) if e.end_offset == end_offset => Some(e.term),
                _ => None,
            };
        }
        match &self.reset {
            Some(r) if end_offset == r.start.offset => Some(r.start.term),
            Some(_) => None,
            None => self.store.term_of_entry_ending_at(end_offset),
        }
    }

    /// The last entry with term ≤ `term` (the start counts as one).
    pub(crate) fn last_entry_with_term_at_most(&self, term: Term) -> Option<(Term, u64)> {
        if let Some(e) = self.unstable.iter().rev().find(|e| e.term <= term) {
            return Some((e.term, e.end_offset));
        }
        if let Some(r) = &self.reset {
            return (r.start.term <= term).then_some((r.start.term, r.start.offset));
        }
        let stable_end = self.stable_end();
        match self.store.last_entry_with_term_at_most(term) {
            // Terms never decrease along a log, so if the answer lies in the
            // logically truncated part, the last visible entry qualifies too.
            Some((_, end)) if end > stable_end => {
                let t = self
                    .store
                    .term_of_entry_ending_at(stable_end)
                    .expect("truncation point is an entry end");
                Some((t, stable_end))
            }
            other => other,
        }
    }

    /// Entries starting at `from_offset` (an entry boundary), within `bytes_max`
    /// but at least one if any exists.
    pub(crate) fn read_entries(
        &self,
        from_offset: u64,
        bytes_max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogReadError> {
        let start = self.start().offset;
        if from_offset < start {
            return Err(LogReadError::Compacted {
                offset: from_offset,
            });
        }
        let stable_end = self.stable_end();
        let mut bytes = 0usize;
        let mut next = from_offset;
        if from_offset < stable_end {
            let before = out.len();
            self.store.read_entries(from_offset, bytes_max, out)?;
            // Hide durable entries that are logically truncated.
            let keep = before + out[before..].partition_point(|e| e.end_offset <= stable_end);
            out.truncate(keep);
            match out[before..].last() {
                Some(last) => next = last.end_offset,
                None => return Ok(()),
            }
            bytes = out[before..].iter().map(Entry::size_bytes).sum();
            if next < stable_end {
                return Ok(());
            }
        }
        let i = self.unstable.partition_point(|e| e.base_offset < next);
        for e in &self.unstable[i..] {
            if bytes > 0 && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(())
    }

    /// Appends `entries`, first removing whatever covers offsets at or after
    /// the first entry's base (which must be an entry end of this log).
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let at = first.base_offset;
        assert!(
            at >= self.commit_offset,
            "truncating committed entries at {at} (commit {})",
            self.commit_offset
        );
        assert!(
            self.term_at(at).is_some(),
            "append at {at} is not after an entry end"
        );
        if at < self.stable_end() {
            self.truncate_to = Some(at);
            self.unstable.clear();
        } else {
            let keep = self.unstable.partition_point(|e| e.end_offset <= at);
            self.unstable.truncate(keep);
        }
        self.unstable.extend_from_slice(entries);
    }

    /// Replaces the whole log by an empty one starting at `reset.start`.
    pub(crate) fn reset(&mut self, reset: LogReset) {
        self.commit_offset = self.commit_offset.max(reset.start.offset);
        self.unstable.clear();
        self.truncate_to = None;
        self.reset = Some(reset);
    }

    pub(crate) fn has_unpersisted(&self) -> bool {
        self.reset.is_some() || self.truncate_to.is_some() || !self.unstable.is_empty()
    }

    /// The pending changes, for a `Ready`; they stay visible until `persisted`.
    pub(crate) fn pending(&mut self) -> (Option<LogReset>, Option<u64>, Vec<Entry>) {
        self.handed_out = self.unstable.len();
        (self.reset.clone(), self.truncate_to, self.unstable.clone())
    }

    /// The driver made the pending changes of the last `pending` durable in the
    /// store; entries appended since stay unstable for the next `Ready`. Returns
    /// the end of the durable log.
    pub(crate) fn persisted(&mut self) -> u64 {
        let expected_end = match self.handed_out {
            0 => self.stable_end(),
            n => self.unstable[n - 1].end_offset,
        };
        self.reset = None;
        self.truncate_to = None;
        self.unstable.drain(..self.handed_out);
        self.handed_out = 0;
        assert_eq!(
            self.store.end_offset(),
            expected_end,
            "the driver did not apply the Ready's persist to the store"
        );
        expected_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStore;
    use crate::types::{EntryKind, Membership};
    use bytes::Bytes;

    fn e(term: Term, base: u64, end: u64) -> Entry {
        Entry {
            term,
            base_offset: base,
            end_offset: end,
            kind: EntryKind::Data,
            data: Bytes::from_static(b"xy"),
        }
    }

    fn durable_log() -> RaftLog<MemStore> {
        let mut store = MemStore::new(Membership::with_voters([1]));
        store.append(&[e(1, 0, 2), e(1, 2, 5), e(2, 5, 6), e(2, 6, 9)]);
        RaftLog::new(store, 2)
    }

    #[test]
    fn a_pending_truncation_hides_the_durable_tail_until_persisted() {
        let mut log = durable_log();
        assert_eq!((log.last_end(), log.last_term()), (9, 2));
        log.append(&[e(3, 5, 7)]);
        assert_eq!(log.last_end(), 7);
        assert_eq!(log.term_at(6), None, "durable t2 entry ending at 6 is gone");
        assert_eq!(log.term_at(7), Some(3));
        assert_eq!(log.term_at(5), Some(1));
        assert_eq!(log.last_entry_with_term_at_most(2), Some((1, 5)));
        let mut out = Vec::new();
        log.read_entries(2, usize::MAX, &mut out).unwrap();
        assert_eq!(out, vec![e(1, 2, 5), e(3, 5, 7)]);
        let (reset, truncate, entries) = log.pending();
        assert_eq!(
            (reset, truncate, entries),
            (None, Some(5), vec![e(3, 5, 7)])
        );
        log.store.truncate_to(5);
        log.store.append(&[e(3, 5, 7)]);
        log.persisted();
        assert!(!log.has_unpersisted());
        assert_eq!(log.term_at(7), Some(3));
    }

    #[test]
    fn appends_within_the_unstable_tail_replace_it() {
        let mut log = durable_log();
        log.append(&[e(3, 9, 10), e(3, 10, 12)]);
        log.append(&[e(4, 10, 11)]);
        let (_, truncate, entries) = log.pending();
        assert_eq!(truncate, None);
        assert_eq!(entries, vec![e(3, 9, 10), e(4, 10, 11)]);
        assert_eq!(log.last_entry_with_term_at_most(3), Some((3, 10)));
    }

    #[test]
    fn a_reset_replaces_the_whole_log_and_raises_the_commit() {
        let mut log = durable_log();
        log.reset(LogReset {
            start: LogStart {
                offset: 20,
                term: 5,
            },
            membership: Membership::with_voters([1]),
        });
        assert_eq!(log.start().offset, 20);
        assert_eq!((log.last_end(), log.last_term()), (20, 5));
        assert_eq!(log.commit_offset, 20);
        assert_eq!(log.term_at(9), None);
        assert_eq!(log.last_entry_with_term_at_most(4), None);
        let mut out = Vec::new();
        assert!(log.read_entries(9, 100, &mut out).is_err());
    }

    #[test]
    fn a_commit_hint_beyond_the_durable_log_is_clamped() {
        let mut store = MemStore::new(Membership::with_voters([1]));
        store.append(&[e(1, 0, 2)]);
        assert_eq!(RaftLog::new(store.clone(), 50).commit_offset, 2);
        assert_eq!(RaftLog::new(store, 1).commit_offset, 0, "not an entry end");
    }
}
