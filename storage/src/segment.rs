//! One segment: a `.log` file of whole batches plus its sparse indexes. This module
//! holds the per-segment state, file naming, creation, and the batch scanners used by
//! recovery, reads, truncation and index rebuilds.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchView, HEADER_BYTES, LOG_OVERHEAD_BYTES};
use crate::config::{SEGMENT_GROWTH_STEP_BYTES_MAX, SEGMENT_GROWTH_STEP_BYTES_MIN};
use crate::epoch::EpochCache;
use crate::error::{Result, StorageError};
use crate::index::{self, SegmentIndex};
use crate::mmap::{self, MapFile, MapWriter};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Suffix of a segment being rewritten (truncation with live readers, reset).
pub(crate) const SWAP_SUFFIX: &str = ".swap";

/// `<dir>/<base offset, 20 digits><suffix>`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// Parses a segment file name back into its base offset.
pub(crate) fn parse_log_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(LOG_SUFFIX)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What the log knows about every segment, mapped or not.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    /// Offset after the segment's last record.
    pub(crate) next_offset: u64,
    /// Used bytes of the `.log` file (whole batches).
    pub(crate) size_bytes: usize,
    /// Largest batch max timestamp in the segment (-1 if none).
    pub(crate) max_timestamp_ms: i64,
    /// Bytes known to be durable.
    pub(crate) flushed_bytes: usize,
    /// For a closed segment not yet flushed: its file and freshly written index
    /// files, kept open so a flush can sync them.
    pub(crate) unsynced: Option<Unsynced>,
}

#[derive(Debug)]
pub(crate) struct Unsynced {
    pub(crate) file: Arc<File>,
    /// Used bytes, to trim the file to once it is synced.
    pub(crate) size_bytes: u64,
    pub(crate) index_files: Vec<Arc<File>>,
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) writer: MapWriter,
    /// Length of the map: the most the file may grow to (`segment_bytes`, or more
    /// for a recovered file that was already longer).
    pub(crate) capacity: usize,
    pub(crate) index: SegmentIndex,
    /// Highest byte ever written to this file (truncation zeroes up to here).
    pub(crate) high_written: usize,
    /// A truncation zeroed part of the file: the next flush must sync it even if no
    /// data was appended since.
    pub(crate) needs_sync: bool,
    /// Wall-clock time of the first append (or of opening), for `segment_ms`.
    pub(crate) created_ms: i64,
    /// Base offset of the last batch (for sealing the time index).
    pub(crate) last_batch_offset: Option<u64>,
}

/// A closed segment's map and indexes, loaded on demand and cached.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) map: Option<Arc<MapFile>>,
    pub(crate) index: SegmentIndex,
}

pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("open segment", path, e))
}

/// The length an active segment file grows to so that `[0, needed_bytes)` lies in
/// it: one step past `current_bytes`, the step being the current length clamped to
/// [`SEGMENT_GROWTH_STEP_BYTES_MIN`]..=[`SEGMENT_GROWTH_STEP_BYTES_MAX`] (so the
/// length doubles, then grows linearly), more if one append needs it, rounded up to
/// a page, and never past `capacity_bytes` (which must hold `needed_bytes`).
pub(crate) fn grown_len(current_bytes: usize, needed_bytes: usize, capacity_bytes: usize) -> usize {
    assert!(needed_bytes <= capacity_bytes);
    let step_bytes =
        current_bytes.clamp(SEGMENT_GROWTH_STEP_BYTES_MIN, SEGMENT_GROWTH_STEP_BYTES_MAX);
    (current_bytes + step_bytes)
        .max(needed_bytes)
        .next_multiple_of(PAGE_BYTES)
        .min(capacity_bytes)
}

const PAGE_BYTES: usize = 4096;

/// Creates (replacing any stale file of that name) a segment file at `path` with
/// room for `capacity` bytes, of which only the first growth step (or `prefix`, if
/// longer) is allocated, writes `prefix` at its start, and maps it for appending.
pub(crate) fn create_active(
    path: &Path,
    capacity: usize,
    prefix: &[u8],
    sync_prefix: bool,
) -> Result<MapWriter> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io("remove stale segment", path, e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StorageError::io("create segment", path, e))?;
    let file_len = grown_len(0, prefix.len(), capacity);
    let result = (|| {
        mmap::allocate(&file, file_len as u64)
            .map_err(|e| StorageError::io("allocate segment", path, e))?;
        if !prefix.is_empty() {
            file.write_all_at(prefix, 0)
                .map_err(|e| StorageError::io("write segment", path, e))?;
            if sync_prefix {
                file.sync_data()
                    .map_err(|e| StorageError::io("fdatasync segment", path, e))?;
            }
        }
        Ok(())
    })();
    let result = result.and_then(|()| {
        MapFile::for_appending(Arc::new(file), capacity, file_len, prefix.len())
            .map(|(_, writer)| writer)
            .map_err(|e| StorageError::io("map segment", path, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Removes a segment's three files; missing ones are fine.
pub(crate) fn delete_files(dir: &Path, base_offset: u64) -> Result<()> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment_path(dir, base_offset, suffix);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete segment", path, e)),
        }
    }
    Ok(())
}

/// Whether `bytes` are all zero (preallocated space past the last batch).
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Result of scanning a segment's batches.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Position after the last good batch.
    pub(crate) end_pos: usize,
    /// Offset after the last good batch.
    pub(crate) next_offset: u64,
    pub(crate) max_timestamp_ms: i64,
    pub(crate) last_batch_offset: Option<u64>,
    /// Set when scanning stopped at a bad batch rather than at zeros or the end.
    pub(crate) corrupt: Option<(usize, &'static str)>,
}

/// Scans whole batches in `data` from `from_pos` (which must start a batch with base
/// offset `expected_offset`), stopping at zeros (preallocated space), the end, or
/// the first batch that is torn, fails its CRC (when `verify_crc`), is not
/// contiguous, or lowers the leader epoch. Feeds every good batch to `index` and, if
/// given, to `epochs`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan(
    data: &[u8],
    base_offset: u64,
    from_pos: usize,
    expected_offset: u64,
    verify_crc: bool,
    interval_bytes: u32,
    index: &mut SegmentIndex,
    mut epochs: Option<&mut EpochCache>,
) -> ScanOutcome {
    let mut pos = from_pos;
    let mut expected = expected_offset;
    let mut out = ScanOutcome {
        end_pos: pos,
        next_offset: expected,
        max_timestamp_ms: -1,
        last_batch_offset: None,
        corrupt: None,
    };
    loop {
        let rest = &data[pos..];
        if rest.is_empty() || all_zero(&rest[..rest.len().min(LOG_OVERHEAD_BYTES)]) {
            break;
        }
        let parsed = if verify_crc {
            batch::parse_and_verify(rest)
        } else {
            batch::parse(rest)
        };
        let header = match parsed {
            Ok(h) => h,
            Err(e) => {
                out.corrupt = Some((pos, e.reason()));
                break;
            }
        };
        if header.base_offset() != expected as i64 {
            out.corrupt = Some((pos, "batch offsets are not contiguous"));
            break;
        }
        let last = header.last_offset() as u64;
        if last - base_offset > u64::from(u32::MAX) {
            out.corrupt = Some((pos, "batch offset too far from the segment base"));
            break;
        }
        if let Some(epochs) = epochs.as_deref_mut() {
            if header.partition_leader_epoch() >= 0 {
                match epochs.latest_epoch() {
                    Some(latest) if header.partition_leader_epoch() < latest => {
                        out.corrupt = Some((pos, "leader epoch decreases"));
                        break;
                    }
                    _ => {
                        if epochs.needs_entry(header.partition_leader_epoch()) {
                            epochs.push(header.partition_leader_epoch(), expected);
                        }
                    }
                }
            }
        }
        index.on_batch(
            interval_bytes,
            (expected - base_offset) as u32,
            pos as u32,
            header.size_bytes() as u32,
            header.max_timestamp(),
        );
        out.max_timestamp_ms = out.max_timestamp_ms.max(header.max_timestamp());
        out.last_batch_offset = Some(expected);
        pos += header.size_bytes();
        expected = last + 1;
        out.end_pos = pos;
        out.next_offset = expected;
    }
    out
}

/// Learns a trusted closed segment's shape from the last entries of its index files
/// plus a header walk (pread, no CRC) over the batches after them. `None` if
/// anything is inconsistent; the caller then recovers the segment by a full scan.
pub(crate) fn load_trusted(dir: &Path, base_offset: u64) -> Option<Segment> {
    let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
    let file = File::open(&log_path).ok()?;
    let len = file.metadata().ok()?.len() as usize;
    let (last_offset_entry, last_time_entry) = index::last_entries(
        &segment_path(dir, base_offset, INDEX_SUFFIX),
        &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
    )?;
    let (mut pos, mut expected) = last_offset_entry.map_or((0, base_offset), |e| {
        (
            e.position as usize,
            base_offset + u64::from(e.relative_offset),
        )
    });
    if pos > len {
        return None;
    }
    let mut max_ts = last_time_entry.map_or(-1, |t| t.timestamp_ms);
    let mut header = [0u8; HEADER_BYTES];
    while pos < len {
        let n = (len - pos).min(HEADER_BYTES);
        file.read_exact_at(&mut header[..n], pos as u64).ok()?;
        if all_zero(&header[..n.min(LOG_OVERHEAD_BYTES)]) {
            break;
        }
        if n < HEADER_BYTES {
            return None;
        }
        let batch_len = i32::from_be_bytes(header[8..12].try_into().ok()?);
        let total = usize::try_from(batch_len).ok()? + LOG_OVERHEAD_BYTES;
        if total < HEADER_BYTES || pos + total > len {
            return None;
        }
        let h = batch::parse_header(&header).ok()?;
        if h.base_offset() != expected as i64 {
            return None;
        }
        max_ts = max_ts.max(h.max_timestamp());
        expected = h.last_offset() as u64 + 1;
        pos += total;
    }
    Some(Segment {
        base_offset,
        next_offset: expected,
        size_bytes: pos,
        max_timestamp_ms: max_ts,
        flushed_bytes: pos,
        unsynced: None,
    })
}

/// Finds the first batch at or after `from_pos` whose last offset is >= `offset`;
/// returns its position and header (`None` at the end of the data).
pub(crate) fn find_batch<'a>(
    data: &'a [u8],
    from_pos: usize,
    offset: u64,
    file: &Path,
) -> Result<Option<(usize, BatchView<'a>)>> {
    let mut pos = from_pos;
    while pos < data.len() {
        let header = parse_stored(data, pos, file)?;
        if header.last_offset() as u64 >= offset {
            return Ok(Some((pos, header)));
        }
        pos += header.size_bytes();
    }
    Ok(None)
}

/// Parses a stored batch header at `pos` of published data; stored data was validated
/// when written, so a failure means the file changed under us.
pub(crate) fn parse_stored<'a>(data: &'a [u8], pos: usize, file: &Path) -> Result<BatchView<'a>> {
    batch::parse(&data[pos..]).map_err(|e| StorageError::CorruptLog {
        file: file.to_path_buf(),
        position: pos,
        reason: e.reason(),
    })
}

/// Whole batches of one segment's published data, starting with the batch that
/// contains `start_offset`: never one whose last offset is >= `end_offset_exclusive`,
/// at most `bytes_max` bytes unless the first batch alone is larger.
#[allow(clippy::too_many_arguments)]
pub(crate) fn slice_batches(
    map: &Arc<MapFile>,
    index: &SegmentIndex,
    base_offset: u64,
    size_bytes: usize,
    start_offset: u64,
    bytes_max: usize,
    end_offset_exclusive: u64,
    file: &Path,
) -> Result<Bytes> {
    let view = map.view();
    let data = &view[..size_bytes.min(view.len())];
    let relative = u32::try_from(start_offset - base_offset).unwrap_or(u32::MAX);
    let Some((first_pos, first)) =
        find_batch(data, index.position_for(relative), start_offset, file)?
    else {
        return Ok(Bytes::new());
    };
    if first.last_offset() as u64 >= end_offset_exclusive {
        return Ok(Bytes::new());
    }
    let mut end = first_pos + first.size_bytes();
    while end < data.len() {
        let h = parse_stored(data, end, file)?;
        if h.last_offset() as u64 >= end_offset_exclusive
            || end + h.size_bytes() - first_pos > bytes_max
        {
            break;
        }
        end += h.size_bytes();
    }
    drop(view);
    Ok(map.bytes(first_pos, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn growth_starts_at_one_step_then_doubles_up_to_the_cap_and_stops_at_capacity() {
        let capacity = 128 * MIB;
        let mut len = grown_len(0, 0, capacity);
        let mut lengths = vec![len];
        while len < capacity {
            len = grown_len(len, len + 1, capacity);
            lengths.push(len);
        }
        const KIB: usize = 1024;
        assert_eq!(
            &lengths[..11],
            &[
                64 * KIB,
                128 * KIB,
                256 * KIB,
                512 * KIB,
                MIB,
                2 * MIB,
                4 * MIB,
                8 * MIB,
                16 * MIB,
                32 * MIB,
                48 * MIB
            ]
        );
        assert_eq!(*lengths.last().unwrap(), capacity);
        assert!(lengths.windows(2).all(|w| w[1] - w[0] <= 16 * MIB));
    }

    #[test]
    fn growth_covers_a_large_append_and_never_passes_capacity() {
        assert_eq!(grown_len(MIB, 10 * MIB + 1, 128 * MIB), 10 * MIB + 4096);
        assert_eq!(grown_len(0, 0, 64 * 1024), 64 * 1024);
        assert_eq!(grown_len(0, 5000, 5001), 5001);
        assert_eq!(grown_len(0, 3 * MIB, 128 * MIB), 3 * MIB);
    }
}
