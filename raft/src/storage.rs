//! The narrow, read-only view of the log the core needs ([`LogStore`]) and an
//! in-memory implementation for tests, the simulator and benchmarks ([`MemStore`]).
//!
//! Entries are addressed by their end offset (see the crate docs), and the
//! trait is shaped so that a Kafka partition log can implement it directly:
//!
//! | trait method | Kafka partition log |
//! |---|---|
//! | `log_start` | log start offset, plus the leader-epoch cache entry covering it |
//! | `end_offset` | log end offset (LEO) |
//! | `term_of_entry_ending_at(e)` | `term_at(e - 1)` (see the method docs) |
//! | `last_entry_with_term_at_most(t)` | `end_offset_for_epoch(t)` (OffsetForLeaderEpoch) |
//! | `read_entries(from, max, out)` | read whole batches from offset `from` |

use crate::ready::Persist;
use crate::types::{Entry, EntryKind, HardState, LogStart, Membership, Term};

/// Why entries could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogReadError {
    /// The range starts before the log start (retention removed it meanwhile).
    #[error("offset {offset} is below the log start")]
    Compacted {
        /// The requested offset.
        offset: u64,
    },
    /// The storage could not serve the read now (an I/O error, say); the core
    /// retries at the next heartbeat.
    #[error("log read failed: {0}")]
    Unavailable(String),
}

/// What a node recovers from its storage when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootState {
    /// Last durable term, vote and commit hint.
    pub hard_state: HardState,
    /// Membership history: the first element is the membership in effect at
    /// the log start (its offset ≤ the log start offset), followed by every
    /// membership entry in the log, each keyed by its entry's end offset.
    pub memberships: Vec<(u64, Membership)>,
}

/// Read-only access to the durable log. The core never writes: the driver
/// applies each `Ready`'s [`Persist`] and then calls `advance`.
///
/// Terms are non-decreasing along the log, and all entries of one term were
/// created by that term's leader in one sequence; implementations may rely on
/// that (the core checks it for everything it appends).
pub trait LogStore {
    /// Where the log starts; every offset below is gone (and committed).
    fn log_start(&self) -> LogStart;

    /// End offset of the last entry (Kafka's log end offset), or the start
    /// offset of an empty log.
    fn end_offset(&self) -> u64;

    /// Term of the entry that ends exactly at `end_offset`; the start term for
    /// `end_offset == log_start().offset`; `None` outside `[start, end]`.
    ///
    /// The core asks this only about entry ends that a leader claims exist, so
    /// answering with the term of the entry *containing* `end_offset - 1` is
    /// correct: an entry of the same term in another log ending at
    /// `end_offset` means this entry ends there too (log matching).
    fn term_of_entry_ending_at(&self, end_offset: u64) -> Option<Term>;

    /// The last entry whose term is at most `term`, as `(its term, its end
    /// offset)`; the log start counts as an entry. `None` if even the start
    /// term is larger. This is Kafka's OffsetForLeaderEpoch.
    fn last_entry_with_term_at_most(&self, term: Term) -> Option<(Term, u64)>;

    /// Appends to `out` whole entries starting with the one whose base offset
    /// is `from_offset` (an entry boundary), stopping before the entry that
    /// would exceed `bytes_max` — but always at least one entry if any exists.
    fn read_entries(
        &self,
        from_offset: u64,
        bytes_max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogReadError>;

    /// What a restarting node needs; read once, by the constructor.
    fn boot_state(&self) -> BootState;
}

/// An in-memory [`LogStore`] for tests, the simulator and benchmarks.
/// Whatever is in it counts as durable: the simulator applies a `Ready`'s
/// persist only when its simulated fsync completes, so a crash loses the rest.
#[derive(Clone, Debug)]
pub struct MemStore {
    start: LogStart,
    entries: Vec<Entry>,
    hard_state: HardState,
    /// Membership in effect at `start`.
    start_membership: Membership,
}

impl MemStore {
    /// An empty log starting at offset 0 with the group's initial membership.
    pub fn new(initial: Membership) -> MemStore {
        MemStore {
            start: LogStart { offset: 0, term: 0 },
            entries: Vec::new(),
            hard_state: HardState::default(),
            start_membership: initial,
        }
    }

    /// Applies one `Ready`'s persist in the required order: reset, truncate,
    /// append, hard state. Asserts the result is a well-formed log.
    pub fn apply(&mut self, persist: &Persist) {
        if let Some(reset) = &persist.reset_to {
            self.entries.clear();
            self.start = reset.start;
            self.start_membership = reset.membership.clone();
        }
        if let Some(offset) = persist.truncate_to {
            self.truncate_to(offset);
        }
        self.append(&persist.entries);
        if let Some(hs) = persist.hard_state {
            self.hard_state = hs;
        }
    }

    /// Appends entries that continue the log exactly.
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            let end = self.end_offset();
            assert_eq!(e.base_offset, end, "append leaves a gap or overlaps");
            assert!(e.end_offset > e.base_offset, "empty entry");
            assert!(e.term >= self.last_term(), "term goes backwards");
            self.entries.push(e.clone());
        }
    }

    /// Removes every entry that covers an offset ≥ `offset` (an entry boundary).
    pub fn truncate_to(&mut self, offset: u64) {
        assert!(
            offset >= self.start.offset,
            "truncation below the log start"
        );
        let keep = self.entries.partition_point(|e| e.end_offset <= offset);
        self.entries.truncate(keep);
        assert_eq!(self.end_offset(), offset, "truncation inside an entry");
    }

    /// Retention: drops the entries ending at or before `end_offset` (which must
    /// be an entry end) and moves the log start there.
    pub fn compact_to(&mut self, end_offset: u64) {
        let Some(term) = self.term_of_entry_ending_at(end_offset) else {
            panic!("compact_to({end_offset}) is not an entry end");
        };
        let drop = self.entries.partition_point(|e| e.end_offset <= end_offset);
        for e in &self.entries[..drop] {
            if let EntryKind::Membership(m) = &e.kind {
                self.start_membership = m.clone();
            }
        }
        self.entries.drain(..drop);
        self.start = LogStart {
            offset: end_offset,
            term,
        };
    }

    /// The entries currently in the log.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn last_term(&self) -> Term {
        self.entries.last().map_or(self.start.term, |e| e.term)
    }
}

impl LogStore for MemStore {
    fn log_start(&self) -> LogStart {
        self.start
    }

    fn end_offset(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.start.offset, |e| e.end_offset)
    }

    fn term_of_entry_ending_at(&self, end_offset: u64) -> Option<Term> {
        if end_offset == self.start.offset {
            return Some(self.start.term);
        }
        let i = self.entries.partition_point(|e| e.end_offset < end_offset);
        match self.entries.get(i) {
            Some(e) if e.end_offset == end_offset => Some(e.term),
            _ => None,
        }
    }

    fn last_entry_with_term_at_most(&self, term: Term) -> Option<(Term, u64)> {
        let i = self.entries.partition_point(|e| e.term <= term);
        if i > 0 {
            let e = &self.entries[i - 1];
            return Some((e.term, e.end_offset));
        }
        (self.start.term <= term).then_some((self.start.term, self.start.offset))
    }

    fn read_entries(
        &self,
        from_offset: u64,
        bytes_max: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), LogReadError> {
        if from_offset < self.start.offset {
            return Err(LogReadError::Compacted {
                offset: from_offset,
            });
        }
        let i = self
            .entries
            .partition_point(|e| e.base_offset < from_offset);
        let mut bytes = 0;
        for e in &self.entries[i..] {
            if bytes > 0 && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(())
    }

    fn boot_state(&self) -> BootState {
        let mut memberships = vec![(self.start.offset, self.start_membership.clone())];
        for e in &self.entries {
            if let EntryKind::Membership(m) = &e.kind {
                memberships.push((e.end_offset, m.clone()));
            }
        }
        BootState {
            hard_state: self.hard_state,
            memberships,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(term: Term, base: u64, end: u64) -> Entry {
        Entry {
            term,
            base_offset: base,
            end_offset: end,
            kind: EntryKind::Data,
            data: Bytes::from_static(b"abc"),
        }
    }

    #[test]
    fn memstore_answers_by_entry_end_and_term() {
        let mut s = MemStore::new(Membership::with_voters([1]));
        s.append(&[entry(1, 0, 3), entry(1, 3, 5), entry(3, 5, 9)]);
        assert_eq!(s.end_offset(), 9);
        assert_eq!(s.term_of_entry_ending_at(0), Some(0));
        assert_eq!(s.term_of_entry_ending_at(5), Some(1));
        assert_eq!(s.term_of_entry_ending_at(4), None, "mid-entry");
        assert_eq!(s.term_of_entry_ending_at(10), None);
        assert_eq!(s.last_entry_with_term_at_most(2), Some((1, 5)));
        assert_eq!(s.last_entry_with_term_at_most(0), Some((0, 0)));
        assert_eq!(s.last_entry_with_term_at_most(7), Some((3, 9)));
        let mut out = Vec::new();
        s.read_entries(3, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1, "at least one entry even above bytes_max");
        s.compact_to(5);
        assert_eq!(s.log_start(), LogStart { offset: 5, term: 1 });
        assert_eq!(s.last_entry_with_term_at_most(0), None);
        assert_eq!(
            s.read_entries(3, 100, &mut out),
            Err(LogReadError::Compacted { offset: 3 })
        );
        s.truncate_to(5);
        assert_eq!(s.end_offset(), 5);
    }
}
