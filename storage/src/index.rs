//! Sparse per-segment indexes, one entry per `index_interval_bytes` of log:
//! * `.index`: relative offset (u32) → file position (u32) of a batch start;
//! * `.timeindex`: timestamp (i64) → relative offset (u32): the largest timestamp of
//!   all batches up to and including the batch at that offset; entries only grow.
//!
//! Both are kept in memory for the active segment and for closed segments that are
//! currently mapped; on disk they are written whole when a segment closes. Entries
//! are big-endian, 8 and 12 bytes.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes of one `.index` entry.
pub(crate) const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one `.timeindex` entry.
pub(crate) const TIME_ENTRY_BYTES: usize = 12;

/// `.index` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

/// `.timeindex` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp_ms: i64,
    pub(crate) relative_offset: u32,
}

/// Both sparse indexes of one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIndex {
    pub(crate) offsets: Vec<OffsetEntry>,
    pub(crate) times: Vec<TimeEntry>,
    /// Log bytes appended since the last offset entry.
    bytes_since_entry: u64,
    /// Largest timestamp of all batches indexed so far (-1 if none).
    max_timestamp_ms: i64,
}

impl SegmentIndex {
    pub(crate) fn new() -> SegmentIndex {
        SegmentIndex {
            max_timestamp_ms: -1,
            ..SegmentIndex::default()
        }
    }

    /// Records one appended batch (in log order).
    pub(crate) fn on_batch(
        &mut self,
        interval_bytes: u32,
        relative_offset: u32,
        position: u32,
        batch_bytes: u32,
        batch_max_timestamp_ms: i64,
    ) {
        self.max_timestamp_ms = self.max_timestamp_ms.max(batch_max_timestamp_ms);
        if self.bytes_since_entry >= u64::from(interval_bytes) {
            self.offsets.push(OffsetEntry {
                relative_offset,
                position,
            });
            self.push_time(self.max_timestamp_ms, relative_offset);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += u64::from(batch_bytes);
    }

    fn push_time(&mut self, timestamp_ms: i64, relative_offset: u32) {
        if timestamp_ms >= 0
            && self
                .times
                .last()
                .is_none_or(|t| timestamp_ms > t.timestamp_ms)
        {
            self.times.push(TimeEntry {
                timestamp_ms,
                relative_offset,
            });
        }
    }

    /// Before closing: make the last time entry carry the segment's maximum, so a
    /// reopen learns it from the file's last entry.
    pub(crate) fn seal(&mut self, last_batch_relative_offset: u32) {
        self.push_time(self.max_timestamp_ms, last_batch_relative_offset);
    }

    /// File position to start scanning from to find `relative_offset`: the position
    /// of the last indexed batch starting at or before it (0 if none).
    pub(crate) fn position_for(&self, relative_offset: u32) -> usize {
        let idx = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        idx.checked_sub(1)
            .map_or(0, |i| self.offsets[i].position as usize)
    }

    /// File position to start scanning from to find the first batch whose max
    /// timestamp is >= `timestamp_ms`.
    pub(crate) fn position_for_timestamp(&self, timestamp_ms: i64) -> usize {
        let idx = self
            .times
            .partition_point(|t| t.timestamp_ms < timestamp_ms);
        idx.checked_sub(1)
            .map_or(0, |i| self.position_for(self.times[i].relative_offset))
    }

    /// Writes both index files whole (not synced; the caller syncs before relying on them).
    pub(crate) fn write_files(
        &self,
        offset_path: &Path,
        time_path: &Path,
    ) -> io::Result<(File, File)> {
        let mut buf = Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES);
        for e in &self.offsets {
            buf.extend_from_slice(&e.relative_offset.to_be_bytes());
            buf.extend_from_slice(&e.position.to_be_bytes());
        }
        let offsets = write_whole(offset_path, &buf)?;
        buf.clear();
        for t in &self.times {
            buf.extend_from_slice(&t.timestamp_ms.to_be_bytes());
            buf.extend_from_slice(&t.relative_offset.to_be_bytes());
        }
        let times = write_whole(time_path, &buf)?;
        Ok((offsets, times))
    }

    /// Loads both files of a closed segment of `segment_bytes`; `None` if either is
    /// missing or inconsistent (the caller then rebuilds by scanning the log).
    pub(crate) fn load(
        offset_path: &Path,
        time_path: &Path,
        segment_bytes: usize,
    ) -> Option<SegmentIndex> {
        let raw = read_whole(offset_path)?;
        if raw.len() % OFFSET_ENTRY_BYTES != 0 {
            return None;
        }
        let mut index = SegmentIndex::new();
        for chunk in raw.chunks_exact(OFFSET_ENTRY_BYTES) {
            let e = OffsetEntry {
                relative_offset: u32::from_be_bytes(chunk[0..4].try_into().ok()?),
                position: u32::from_be_bytes(chunk[4..8].try_into().ok()?),
            };
            if e.position as usize >= segment_bytes {
                return None;
            }
            if let Some(last) = index.offsets.last() {
                if e.relative_offset <= last.relative_offset || e.position <= last.position {
                    return None;
                }
            }
            index.offsets.push(e);
        }
        let raw = read_whole(time_path)?;
        if raw.len() % TIME_ENTRY_BYTES != 0 {
            return None;
        }
        for chunk in raw.chunks_exact(TIME_ENTRY_BYTES) {
            let t = TimeEntry {
                timestamp_ms: i64::from_be_bytes(chunk[0..8].try_into().ok()?),
                relative_offset: u32::from_be_bytes(chunk[8..12].try_into().ok()?),
            };
            if let Some(last) = index.times.last() {
                if t.timestamp_ms <= last.timestamp_ms || t.relative_offset < last.relative_offset {
                    return None;
                }
            }
            index.times.push(t);
        }
        index.max_timestamp_ms = index.times.last().map_or(-1, |t| t.timestamp_ms);
        Some(index)
    }
}

fn write_whole(path: &Path, data: &[u8]) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all_at(data, 0)?;
    Ok(f)
}

fn read_whole(path: &Path) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Reads the last entry of each index file (without loading them whole), for
/// learning a closed segment's shape on open. Any inconsistency gives `None`.
pub(crate) fn last_entries(
    offset_path: &Path,
    time_path: &Path,
) -> Option<(Option<OffsetEntry>, Option<TimeEntry>)> {
    let read_last = |path: &Path, entry_bytes: usize| -> Option<Option<Vec<u8>>> {
        let f = File::open(path).ok()?;
        let len = f.metadata().ok()?.len() as usize;
        if len % entry_bytes != 0 {
            return None;
        }
        if len == 0 {
            return Some(None);
        }
        let mut buf = vec![0u8; entry_bytes];
        f.read_exact_at(&mut buf, (len - entry_bytes) as u64).ok()?;
        Some(Some(buf))
    };
    let offset = read_last(offset_path, OFFSET_ENTRY_BYTES)?.map(|b| OffsetEntry {
        relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    });
    let time = read_last(time_path, TIME_ENTRY_BYTES)?.map(|b| TimeEntry {
        timestamp_ms: i64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
        relative_offset: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
    });
    Some((offset, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_every_interval_and_lookups() {
        let mut idx = SegmentIndex::new();
        // ten batches of 1000 bytes, 5 offsets each, timestamps 100, 200, ...
        for i in 0..10u32 {
            idx.on_batch(2500, i * 5, i * 1000, 1000, i64::from(i + 1) * 100);
        }
        // entries at batches 3, 6, 9 (after 3000 bytes each time)
        assert_eq!(
            idx.offsets
                .iter()
                .map(|e| e.relative_offset)
                .collect::<Vec<_>>(),
            vec![15, 30, 45]
        );
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(14), 0);
        assert_eq!(idx.position_for(16), 3000);
        assert_eq!(idx.position_for(100), 9000);
        assert_eq!(idx.position_for_timestamp(50), 0);
        assert_eq!(idx.position_for_timestamp(400), 0);
        assert_eq!(idx.position_for_timestamp(401), 3000);
        assert_eq!(idx.position_for_timestamp(701), 6000);
        let dir = tempfile::tempdir().unwrap();
        let (o, t) = (dir.path().join("i"), dir.path().join("t"));
        idx.seal(45);
        idx.write_files(&o, &t).unwrap();
        let loaded = SegmentIndex::load(&o, &t, 10_000).unwrap();
        assert_eq!(loaded.offsets, idx.offsets);
        assert_eq!(loaded.times, idx.times);
        let (lo, lt) = last_entries(&o, &t).unwrap();
        assert_eq!(lo, idx.offsets.last().copied());
        assert_eq!(lt.unwrap().timestamp_ms, 1000);
        assert!(
            SegmentIndex::load(&o, &t, 5000).is_none(),
            "positions past the segment"
        );
    }
}
