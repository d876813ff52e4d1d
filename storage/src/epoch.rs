//! The leader-epoch file: for each leader epoch (Raft term) present in the log, the
//! offset of its first batch. Kafka's OffsetForLeaderEpoch and Raft's divergence
//! search both answer from it without reading the log.

use std::path::Path;

use crate::atomic_file;
use crate::error::{Result, StorageError};

/// File name of the leader-epoch checkpoint inside a partition directory.
pub(crate) const EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// One entry: batches from `start_offset` on (up to the next entry) have `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// Offset of the first batch with this epoch.
    pub start_offset: u64,
}

/// In-memory copy of the leader-epoch file; strictly increasing in both fields.
#[derive(Debug, Default, Clone)]
pub(crate) struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub(crate) fn load(dir: &Path) -> Result<EpochCache> {
        let Some(body) = atomic_file::read_text(dir, EPOCH_FILE)? else {
            return Ok(EpochCache::default());
        };
        let file = dir.join(EPOCH_FILE);
        let malformed = |reason: String| StorageError::MalformedFile {
            file: file.clone(),
            reason,
        };
        let mut entries: Vec<EpochEntry> = Vec::new();
        for line in body.lines() {
            let mut parts = line.split(' ');
            let (Some(epoch), Some(start), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(malformed(format!("bad line `{line}`")));
            };
            let entry = EpochEntry {
                epoch: epoch
                    .parse()
                    .map_err(|_| malformed(format!("bad epoch `{epoch}`")))?,
                start_offset: start
                    .parse()
                    .map_err(|_| malformed(format!("bad offset `{start}`")))?,
            };
            if let Some(last) = entries.last() {
                if entry.epoch <= last.epoch || entry.start_offset <= last.start_offset {
                    return Err(malformed("entries are not strictly increasing".into()));
                }
            }
            entries.push(entry);
        }
        Ok(EpochCache { entries })
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let mut body = String::new();
        for e in &self.entries {
            body.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        atomic_file::write_text(dir, EPOCH_FILE, &body)
    }

    pub(crate) fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub(crate) fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Whether appending a batch of `epoch` at `offset` needs a new entry.
    /// Negative epochs (unset) never do.
    pub(crate) fn needs_entry(&self, epoch: i32) -> bool {
        epoch >= 0 && self.latest_epoch().is_none_or(|latest| epoch > latest)
    }

    pub(crate) fn push(&mut self, epoch: i32, start_offset: u64) {
        debug_assert!(self.needs_entry(epoch));
        if let Some(last) = self.entries.last() {
            assert!(start_offset > last.start_offset || self.entries.is_empty());
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }

    /// The epoch of the batch containing `offset` (caller checks the log range).
    pub(crate) fn epoch_for_offset(&self, offset: u64) -> Option<i32> {
        let idx = self.entries.partition_point(|e| e.start_offset <= offset);
        idx.checked_sub(1).map(|i| self.entries[i].epoch)
    }

    /// Kafka's OffsetForLeaderEpoch: the largest epoch <= `epoch` and the offset where
    /// it ends (start of the next epoch, or `log_end_offset` for the latest).
    pub(crate) fn end_offset_for_epoch(
        &self,
        epoch: i32,
        log_end_offset: u64,
    ) -> Option<(i32, u64)> {
        let idx = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(idx.checked_sub(1)?)?;
        let end = self
            .entries
            .get(idx)
            .map_or(log_end_offset, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Drops entries starting at or after `offset`; returns whether anything changed.
    pub(crate) fn truncate_from(&mut self, offset: u64) -> bool {
        let keep = self.entries.partition_point(|e| e.start_offset < offset);
        let changed = keep != self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Forgets epochs that ended before `log_start_offset`; the entry covering it now
    /// starts there. Returns whether anything changed.
    pub(crate) fn truncate_prefix(&mut self, log_start_offset: u64) -> bool {
        let covering = self
            .entries
            .partition_point(|e| e.start_offset <= log_start_offset);
        if covering == 0 {
            return false;
        }
        let first = covering - 1;
        let changed = first > 0 || self.entries[first].start_offset != log_start_offset;
        self.entries.drain(..first);
        self.entries[0].start_offset = log_start_offset;
        changed
    }

    pub(crate) fn clear(&mut self) -> bool {
        let changed = !self.entries.is_empty();
        self.entries.clear();
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, u64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for &(e, s) in entries {
            c.push(e, s);
        }
        c
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(c.end_offset_for_epoch(0, 40), None);
        assert_eq!(c.end_offset_for_epoch(1, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for_epoch(2, 40), Some((1, 10)));
        assert_eq!(c.end_offset_for_epoch(3, 40), Some((3, 25)));
        assert_eq!(c.end_offset_for_epoch(9, 40), Some((4, 40)));
        assert_eq!(c.epoch_for_offset(9), Some(1));
        assert_eq!(c.epoch_for_offset(10), Some(3));
    }

    #[test]
    fn saves_loads_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(&[(1, 0), (3, 10), (4, 25)]);
        c.save(dir.path()).unwrap();
        assert_eq!(EpochCache::load(dir.path()).unwrap().entries(), c.entries());
        assert!(c.truncate_prefix(12));
        assert_eq!(
            c.entries()[0],
            EpochEntry {
                epoch: 3,
                start_offset: 12
            }
        );
        assert!(c.truncate_from(25));
        assert_eq!(c.entries().len(), 1);
    }
}
