//! Log compaction (`cleanup.policy=compact`): keeps, below a cleanable point, only the
//! last record of every key, and drops tombstones (null values) some time after they
//! were first cleaned.
//!
//! # The three steps
//!
//! Like a flush, a cleaning is split so that nothing slow runs under the caller's lock:
//! [`PartitionLog::prepare_clean`] (cheap, under the lock: picks the segments and opens
//! them) → [`CleanJob::run`] (no lock, rate-limited by the caller's throttle: builds the
//! key → last offset map, writes the cleaned segments to `<base>.log.cleaned` files and
//! fsyncs them) → [`PartitionLog::complete_clean`] (under the lock: swaps the new
//! segments in, a few renames and two directory fsyncs).
//!
//! # What a pass does
//!
//! * Only closed segments whose every offset lies below both the caller's
//!   `cleanable_below_offset` (pass the high watermark = Raft commit index) and the
//!   flushed offset, and whose newest timestamp is at least `min_compaction_lag_ms`
//!   old, are cleaned; never the active segment.
//! * The *dirty* section starts at the cleaned offset remembered in
//!   [`CLEANER_CHECKPOINT_FILE`]. A map of key → last offset is built over the dirty
//!   section, batch by batch, until the map's memory budget (`dedupe_buffer_bytes`,
//!   Kafka's `log.cleaner.dedupe.buffer.size`) would be exceeded; it ends at `map_end`.
//!   Offsets past `map_end` are simply not cleaned this pass.
//! * Every segment from the log start up to the one holding `map_end - 1` is rewritten:
//!   a keyed record is dropped when the map holds a later offset for its key; a
//!   tombstone that is the last record of its key below `map_end` (in the map, or in
//!   the clean section with its key absent from the map: earlier passes left the
//!   clean section's keys unique) is dropped once `delete_retention_ms` have passed
//!   since the pass that first cleaned its offset (those times are kept, bounded, in
//!   the checkpoint file), unless a batch the cleaner cannot read lies before it;
//!   records without a key are kept. Compressed, transactional and control batches are kept unchanged
//!   (the storage crate has no codecs; their keys stay out of the map, which only keeps
//!   more than necessary, never less).
//! * Consecutive rewritten segments are grouped into one output segment while their
//!   original sizes add up to at most `segment_bytes`, like Kafka.
//!
//! # Offsets and batches: the rule replication depends on
//!
//! **Every batch keeps its base offset, last offset delta, partition leader epoch,
//! attributes, timestamps and producer id/epoch/base sequence. A batch whose records
//! are all removed stays as an empty batch (a 61-byte header, recordsCount 0).** So the
//! batch boundaries of a compacted log are exactly those of the log that was appended:
//! batches stay contiguous (each base offset is the previous last offset + 1), Raft
//! entries (index = batch last offset, term = batch epoch) keep their indexes and
//! terms, the leader-epoch file stays valid unchanged, recovery's contiguity check
//! holds, and a follower that fetches a compacted range from its leader appends it
//! through the ordinary contiguous follower append, wherever its log ends. Replicas
//! compact independently and hold the same records at the same offsets, with the same
//! batch boundaries; their bytes may differ (each compacts at its own pace). The cost
//! against Kafka (which drops empty batches unless they carry a producer id, leaving
//! offset gaps between batches) is 61 bytes per appended batch that stay forever.
//!
//! # Swap and crash recovery
//!
//! 1. `run` writes `<base>.log.cleaned` per output segment, and its indexes as
//!    `<base>.index.cleaned` and `<base>.timeindex.cleaned`, and fsyncs them.
//! 2. `complete_clean` renames every `.log.cleaned` to `.log.swapped` and fsyncs the
//!    directory: the commit point.
//! 3. It renames the replaced segments' files (`.log`, `.index`, `.timeindex`) to
//!    `<name>.deleted`; the caller unlinks them after releasing its lock.
//! 4. It renames each `.log.swapped` to `.log`, then the index files into place, and
//!    fsyncs the directory. Under the lock: renames, unlinks and two or three
//!    directory fsyncs, no data written.
//!
//! On open ([`recover_swaps`]), `.cleaned` and `.deleted` files are deleted (the swap never
//! started; the old segments are whole) and each `.log.swapped` file finishes its swap:
//! it is scanned for the offset range it covers, every old segment starting in that
//! range is deleted, and it is renamed into place. A crash at any step leaves the old
//! segments or the new ones, never neither, never both. (`.swap` alone is taken: a
//! truncation's and a reset's temporary file, deleted on open.)
//!
//! Readers keep what they hold: the old maps are reference-counted by their `Bytes`,
//! and unlinking a mapped file is safe.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rill_record::layout::{ATTR_COMPRESSION_MASK, HEADER_BYTES};
use rill_record::varint::{read_varint, read_varlong};
use rill_record::write::{finish_batch, BatchFields};

use crate::atomic_file;
use crate::batch::BatchView;
use crate::error::{Result, StorageError};
use crate::index::SegmentIndex;
use crate::log::PartitionLog;
use crate::mmap::MapFile;
use crate::segment::{
    self, delete_files, segment_path, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX,
};

/// The cleaner's per-partition checkpoint: the cleaned offset and when offsets were
/// first cleaned.
pub const CLEANER_CHECKPOINT_FILE: &str = "cleaner-offset-checkpoint";
/// Suffix of a cleaned segment not yet committed (deleted on open).
pub(crate) const CLEANED_SUFFIX: &str = ".log.cleaned";
/// Suffix of a cleaned segment whose swap is committed (finished on open).
pub(crate) const SWAPPED_SUFFIX: &str = ".log.swapped";
/// Suffix of a replaced segment file awaiting its unlink (deleted on open).
const DELETED_SUFFIX: &str = ".deleted";
/// Suffixes of a cleaned segment's index files until the swap renames them.
const CLEANED_INDEX_SUFFIX: &str = ".index.cleaned";
const CLEANED_TIME_INDEX_SUFFIX: &str = ".timeindex.cleaned";
/// Most `(offset, first cleaned at)` entries kept; older ones merge, which only keeps
/// tombstones longer.
const CLEANED_AT_ENTRIES_MAX: usize = 64;
/// What one map entry costs beyond its key bytes (hash table slot, boxed key, offset),
/// for the `dedupe_buffer_bytes` budget.
const MAP_ENTRY_OVERHEAD_BYTES: usize = 48;
/// Default `dedupe_buffer_bytes`: Kafka's `log.cleaner.dedupe.buffer.size` is 128 MiB
/// shared by its cleaner threads; one pass here gets 32 MiB.
pub const DEDUPE_BUFFER_BYTES_DEFAULT: usize = 32 * 1024 * 1024;

/// What a cleaning pass may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanOptions {
    /// Only offsets below this are cleaned: pass the high watermark (commit index).
    pub cleanable_below_offset: u64,
    /// Wall-clock now.
    pub now_ms: i64,
    /// A segment whose newest timestamp is younger than this is not cleaned
    /// (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: i64,
    /// Tombstones stay this long after their offset was first cleaned
    /// (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Memory budget of the key → offset map.
    pub dedupe_buffer_bytes: usize,
}

/// How much of a log is clean and how much dirty-and-cleanable, for choosing which log
/// to clean ([`PartitionLog::clean_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanStats {
    /// Bytes of cleanable segments below the cleaned offset.
    pub clean_bytes: u64,
    /// Bytes of cleanable segments at or above the cleaned offset.
    pub dirty_bytes: u64,
    /// Oldest newest-timestamp among the dirty cleanable segments (-1 if none), for
    /// `max.compaction.lag.ms`.
    pub oldest_dirty_timestamp_ms: i64,
}

impl CleanStats {
    /// `dirty / (clean + dirty)`, Kafka's dirty ratio (0 for an empty section).
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// What a completed pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CleanOutcome {
    /// Whether the cleaned segments were swapped in (false: the log changed under the
    /// job, which was discarded).
    pub swapped: bool,
    /// Segments replaced and segments written.
    pub segments_in: usize,
    /// Segments written.
    pub segments_out: usize,
    /// Bytes before and after.
    pub bytes_in: u64,
    /// Bytes after.
    pub bytes_out: u64,
    /// Records dropped because a later record has the same key.
    pub records_removed: u64,
    /// Tombstones dropped after `delete_retention_ms`.
    pub tombstones_removed: u64,
    /// The cleaned offset afterwards (the next pass's dirty section starts here).
    pub cleaned_offset: u64,
}

/// Where a test stops [`PartitionLog::complete_clean_until`], as a crash would.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SwapStep {
    /// After the `.log.cleaned` → `.log.swapped` renames and the directory fsync.
    Committed,
    /// After the replaced segments' files are deleted.
    OldDeleted,
    /// After the `.log.swapped` → `.log` renames (index files not yet written).
    Renamed,
    /// Everything done.
    Done,
}

/// The cleaner checkpoint: the cleaned offset and, per pass, the offset it cleaned to
/// and when (so a tombstone's age since it was first cleaned is known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CleanerCheckpoint {
    pub(crate) cleaned_offset: u64,
    /// `(end offset exclusive, first cleaned at ms)`, ascending by offset.
    pub(crate) cleaned_at: Vec<(u64, i64)>,
}

impl CleanerCheckpoint {
    pub(crate) fn load(dir: &Path) -> Result<CleanerCheckpoint> {
        let Some(body) = atomic_file::read_text(dir, CLEANER_CHECKPOINT_FILE)? else {
            return Ok(CleanerCheckpoint::default());
        };
        let malformed = |reason: &str| StorageError::MalformedFile {
            file: dir.join(CLEANER_CHECKPOINT_FILE),
            reason: reason.to_string(),
        };
        let mut ck = CleanerCheckpoint::default();
        for line in body.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("cleaned_offset") => {
                    ck.cleaned_offset = words
                        .next()
                        .and_then(|w| w.parse().ok())
                        .ok_or_else(|| malformed("bad cleaned_offset line"))?;
                }
                Some("cleaned_at") => {
                    let offset = words.next().and_then(|w| w.parse().ok());
                    let ms = words.next().and_then(|w| w.parse().ok());
                    match (offset, ms) {
                        (Some(o), Some(ms)) => ck.cleaned_at.push((o, ms)),
                        _ => return Err(malformed("bad cleaned_at line")),
                    }
                }
                _ => return Err(malformed("unknown line")),
            }
        }
        Ok(ck)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let mut body = format!("cleaned_offset {}\n", self.cleaned_offset);
        for (offset, ms) in &self.cleaned_at {
            body.push_str(&format!("cleaned_at {offset} {ms}\n"));
        }
        atomic_file::write_text(dir, CLEANER_CHECKPOINT_FILE, &body)
    }

    /// When the pass that first cleaned `offset` ran, if one did.
    fn first_cleaned_ms(&self, offset: u64) -> Option<i64> {
        let i = self.cleaned_at.partition_point(|&(end, _)| end <= offset);
        self.cleaned_at.get(i).map(|&(_, ms)| ms)
    }

    fn record_pass(&mut self, end_offset: u64, now_ms: i64) {
        if end_offset > self.cleaned_at.last().map_or(0, |&(end, _)| end) {
            self.cleaned_at.push((end_offset, now_ms));
        }
        while self.cleaned_at.len() > CLEANED_AT_ENTRIES_MAX {
            // Merge the two oldest: the later time covers both (tombstones wait longer).
            let (_, ms) = self.cleaned_at.remove(0);
            self.cleaned_at[0].1 = self.cleaned_at[0].1.max(ms);
        }
        self.cleaned_offset = self.cleaned_offset.max(end_offset);
    }
}

/// One segment a job reads.
#[derive(Debug)]
struct InputSegment {
    base_offset: u64,
    next_offset: u64,
    size_bytes: usize,
    file: File,
    path: PathBuf,
}

/// The slow part of a cleaning pass: run it without holding the log's lock, then pass
/// its result to [`PartitionLog::complete_clean`].
#[derive(Debug)]
pub struct CleanJob {
    dir: PathBuf,
    inputs: Vec<InputSegment>,
    first_dirty_offset: u64,
    options: CleanOptions,
    checkpoint: CleanerCheckpoint,
    segment_bytes: u64,
    index_interval_bytes: u32,
    generation: u64,
}

/// One output segment of a job.
#[derive(Debug)]
struct OutputSegment {
    base_offset: u64,
    next_offset: u64,
    size_bytes: usize,
    max_timestamp_ms: i64,
    /// Base offsets of the segments it replaces.
    replaces: Vec<(u64, u64, usize)>,
}

/// A finished [`CleanJob`]: cleaned segments written and synced, not yet swapped in.
#[derive(Debug)]
pub struct CleanedSegments {
    dir: PathBuf,
    outputs: Vec<OutputSegment>,
    map_end_offset: u64,
    now_ms: i64,
    generation: u64,
    records_removed: u64,
    tombstones_removed: u64,
}

impl CleanedSegments {
    /// Deletes the written files (a job that will not be completed).
    pub fn discard(self) {
        for out in &self.outputs {
            for suffix in [
                CLEANED_SUFFIX,
                CLEANED_INDEX_SUFFIX,
                CLEANED_TIME_INDEX_SUFFIX,
            ] {
                let _ = fs::remove_file(segment_path(&self.dir, out.base_offset, suffix));
            }
        }
    }
}

/// One record's place in a batch's records section, and what the cleaner needs of it.
struct RecordSpan<'a> {
    start: usize,
    end: usize,
    offset_delta: i32,
    key: Option<&'a [u8]>,
    is_tombstone: bool,
}

/// The records of an uncompressed batch with their byte spans; `None` if they do not
/// parse (the batch is then kept unchanged and left out of the map).
fn record_spans<'a>(batch: &BatchView<'a>) -> Option<Vec<RecordSpan<'a>>> {
    let section = batch.records_bytes();
    let count = usize::try_from(batch.records_count()).ok()?;
    // Each record takes at least 7 bytes: a count beyond that is corrupt, not allocated.
    if count > section.len() / rill_record::layout::RECORD_BYTES_MIN + 1 {
        return None;
    }
    let mut spans = Vec::with_capacity(count);
    let mut rest = section;
    for _ in 0..count {
        let start = section.len() - rest.len();
        let len = usize::try_from(read_varint(&mut rest).ok()?).ok()?;
        if rest.len() < len {
            return None;
        }
        let (mut body, after) = rest.split_at(len);
        rest = after;
        let end = section.len() - rest.len();
        body = body.get(1..)?; // attributes
        read_varlong(&mut body).ok()?; // timestamp delta
        let offset_delta = read_varint(&mut body).ok()?;
        let key = nullable(&mut body)?;
        let value = nullable(&mut body)?;
        spans.push(RecordSpan {
            start,
            end,
            offset_delta,
            key,
            is_tombstone: value.is_none(),
        });
    }
    rest.is_empty().then_some(spans)
}

fn nullable<'a>(buf: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    match read_varint(buf).ok()? {
        -1 => Some(None),
        n if n < -1 => None,
        n => {
            let n = n as usize;
            if buf.len() < n {
                return None;
            }
            let (v, rest) = buf.split_at(n);
            *buf = rest;
            Some(Some(v))
        }
    }
}

/// Whether the cleaner reads the batch's records (uncompressed, not transactional, not
/// control); others are kept as they are.
fn cleanable_batch(b: &BatchView<'_>) -> bool {
    b.attributes() & ATTR_COMPRESSION_MASK == 0 && !b.is_transactional() && !b.is_control()
}

impl CleanJob {
    /// Builds the key → last offset map, writes the cleaned segments and syncs them.
    /// `throttle` is called with the bytes read or written so far in each step; it may
    /// sleep to bound the I/O rate.
    pub fn run(self, throttle: &mut dyn FnMut(u64)) -> Result<CleanedSegments> {
        let maps = self
            .inputs
            .iter()
            .map(|s| {
                MapFile::read_only(&s.file, s.size_bytes)
                    .map_err(|e| StorageError::io("map segment", &s.path, e))
            })
            .collect::<Result<Vec<_>>>()?;

        // 1. The map, over the dirty section, until its budget is spent.
        let mut map: HashMap<Box<[u8]>, u64> = HashMap::new();
        let mut map_bytes = 0usize;
        let mut map_end = self.first_dirty_offset;
        'segments: for (input, map_file) in self.inputs.iter().zip(&maps) {
            if input.next_offset <= self.first_dirty_offset {
                continue;
            }
            let view = map_file.view();
            let data = &view[..input.size_bytes];
            let mut pos = 0;
            while pos < data.len() {
                let b = segment::parse_stored(data, pos, &input.path)?;
                pos += b.size_bytes();
                throttle(b.size_bytes() as u64);
                if (b.base_offset() as u64) < self.first_dirty_offset {
                    continue;
                }
                if cleanable_batch(&b) {
                    if let Some(spans) = record_spans(&b) {
                        // Worst case: every record a new key.
                        let worst =
                            b.records_bytes().len() + spans.len() * MAP_ENTRY_OVERHEAD_BYTES;
                        if map_bytes + worst > self.options.dedupe_buffer_bytes {
                            break 'segments;
                        }
                        for r in &spans {
                            let Some(key) = r.key else { continue };
                            let offset = b.base_offset() as u64 + r.offset_delta as u64;
                            match map.get_mut(key) {
                                Some(o) => *o = (*o).max(offset),
                                None => {
                                    map_bytes += key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                                    map.insert(key.into(), offset);
                                }
                            }
                        }
                    }
                }
                map_end = b.last_offset() as u64 + 1;
            }
        }
        if map_end == self.first_dirty_offset {
            return Err(StorageError::CleanerBufferTooSmall {
                dir: self.dir.clone(),
                dedupe_buffer_bytes: self.options.dedupe_buffer_bytes,
            });
        }

        // 2. Rewrite every segment up to the one holding map_end - 1, grouped by size.
        let rewrite = self
            .inputs
            .iter()
            .position(|s| s.next_offset >= map_end)
            .map_or(self.inputs.len(), |i| i + 1);
        let mut outputs: Vec<OutputSegment> = Vec::new();
        let mut records_removed = 0u64;
        let mut tombstones_removed = 0u64;
        let mut group_start = 0;
        let now_ms = self.options.now_ms;
        let keep_tombstone = |offset: u64| -> bool {
            self.checkpoint
                .first_cleaned_ms(offset)
                .is_none_or(|ms| ms.saturating_add(self.options.delete_retention_ms) > now_ms)
        };
        let mut scratch = Vec::new();
        // A compressed or transactional batch (records the cleaner cannot read) was
        // seen: a later tombstone may be the only thing hiding an older value in it.
        let mut opaque_seen = false;
        while group_start < rewrite {
            let mut group_end = group_start + 1;
            let mut group_bytes = self.inputs[group_start].size_bytes as u64;
            let base = self.inputs[group_start].base_offset;
            while group_end < rewrite {
                let next = &self.inputs[group_end];
                if group_bytes + next.size_bytes as u64 > self.segment_bytes
                    || next.next_offset - 1 - base > u64::from(u32::MAX)
                {
                    break;
                }
                group_bytes += next.size_bytes as u64;
                group_end += 1;
            }
            let path = segment_path(&self.dir, base, CLEANED_SUFFIX);
            let _ = fs::remove_file(&path);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StorageError::io("create cleaned segment", &path, e))?;
            let mut out = BufWriter::with_capacity(256 * 1024, file);
            let mut written = 0usize;
            let mut index = SegmentIndex::new();
            let mut max_ts = -1i64;
            let mut last_batch = None;
            let mut replaces = Vec::new();
            for (input, map_file) in self.inputs[group_start..group_end]
                .iter()
                .zip(&maps[group_start..group_end])
            {
                replaces.push((input.base_offset, input.next_offset, input.size_bytes));
                let view = map_file.view();
                let data = &view[..input.size_bytes];
                let mut pos = 0;
                while pos < data.len() {
                    let b = segment::parse_stored(data, pos, &input.path)?;
                    pos += b.size_bytes();
                    let spans = cleanable_batch(&b).then(|| record_spans(&b)).flatten();
                    if spans.is_none() && !b.is_control() && b.records_count() > 0 {
                        opaque_seen = true;
                    }
                    let bytes: &[u8] = match spans {
                        None => b.as_bytes(),
                        Some(spans) => {
                            let base_offset = b.base_offset() as u64;
                            let mut kept = 0usize;
                            scratch.clear();
                            scratch.resize(HEADER_BYTES, 0);
                            for r in &spans {
                                let offset = base_offset + r.offset_delta as u64;
                                let last = r.key.and_then(|key| map.get(key)).copied();
                                // The key's last record below map_end: it is in the map
                                // (dirty section), or the key is not (clean section,
                                // whose keys earlier passes left unique).
                                let is_last = match last {
                                    Some(last) => last == offset,
                                    None => r.key.is_some() && offset < self.first_dirty_offset,
                                };
                                let keep = if last.is_some_and(|last| last > offset) {
                                    records_removed += 1;
                                    false
                                } else if r.is_tombstone && is_last && !opaque_seen {
                                    // Dropping it is safe: no older record of its key is
                                    // left below it (and no batch the cleaner cannot
                                    // read might hold one).
                                    let keep = keep_tombstone(offset);
                                    if !keep {
                                        tombstones_removed += 1;
                                    }
                                    keep
                                } else {
                                    true
                                };
                                if keep {
                                    kept += 1;
                                    scratch.extend_from_slice(&b.records_bytes()[r.start..r.end]);
                                }
                            }
                            if kept == spans.len() {
                                b.as_bytes()
                            } else {
                                let fields = BatchFields {
                                    base_offset: b.base_offset(),
                                    partition_leader_epoch: b.partition_leader_epoch(),
                                    attributes: b.attributes(),
                                    last_offset_delta: b.last_offset_delta(),
                                    base_timestamp: b.base_timestamp(),
                                    max_timestamp: b.max_timestamp(),
                                    producer_id: b.producer_id(),
                                    producer_epoch: b.producer_epoch(),
                                    base_sequence: b.base_sequence(),
                                    records_count: kept as i32,
                                };
                                finish_batch(&mut scratch, &fields).map_err(|e| {
                                    StorageError::CorruptLog {
                                        file: input.path.clone(),
                                        position: pos,
                                        reason: e.reason(),
                                    }
                                })?;
                                &scratch
                            }
                        }
                    };
                    let batch_offset = b.base_offset() as u64;
                    index.on_batch(
                        self.index_interval_bytes,
                        (batch_offset - base) as u32,
                        written as u32,
                        bytes.len() as u32,
                        b.max_timestamp(),
                    );
                    out.write_all(bytes)
                        .map_err(|e| StorageError::io("write cleaned segment", &path, e))?;
                    throttle(bytes.len() as u64);
                    written += bytes.len();
                    max_ts = max_ts.max(b.max_timestamp());
                    last_batch = Some(batch_offset);
                }
            }
            let file = out
                .into_inner()
                .map_err(|e| StorageError::io("write cleaned segment", &path, e.into_error()))?;
            file.sync_data()
                .map_err(|e| StorageError::io("fdatasync cleaned segment", &path, e))?;
            if let Some(last) = last_batch {
                index.seal((last - base) as u32);
            }
            // The indexes too are written and synced here, off the lock; the swap
            // only renames them.
            let (o, t) = index
                .write_files(
                    &segment_path(&self.dir, base, CLEANED_INDEX_SUFFIX),
                    &segment_path(&self.dir, base, CLEANED_TIME_INDEX_SUFFIX),
                )
                .map_err(|e| StorageError::io("write index", &path, e))?;
            for f in [o, t] {
                f.sync_data()
                    .map_err(|e| StorageError::io("fdatasync index", &path, e))?;
            }
            outputs.push(OutputSegment {
                base_offset: base,
                next_offset: self.inputs[group_end - 1].next_offset,
                size_bytes: written,
                max_timestamp_ms: max_ts,
                replaces,
            });
            group_start = group_end;
        }
        Ok(CleanedSegments {
            dir: self.dir,
            outputs,
            map_end_offset: map_end,
            now_ms,
            generation: self.generation,
            records_removed,
            tombstones_removed,
        })
    }
}

impl PartitionLog {
    /// How many closed segments may be cleaned now: a prefix of the closed segments
    /// that lie below `cleanable_below_offset` and the flushed offset, are synced, and
    /// whose newest timestamp is older than `min_compaction_lag_ms`.
    fn cleanable_count(&self, cleanable_below_offset: u64, now_ms: i64, lag_ms: i64) -> usize {
        let closed = &self.segments[..self.segments.len() - 1];
        let below = cleanable_below_offset.min(self.flushed_offset);
        closed
            .iter()
            .take_while(|s| {
                s.next_offset <= below
                    && s.unsynced.is_none()
                    && (lag_ms <= 0 || s.max_timestamp_ms <= now_ms.saturating_sub(lag_ms))
            })
            .count()
    }

    fn first_dirty_offset(&self) -> u64 {
        self.cleaner
            .cleaned_offset
            .clamp(self.log_start_offset, self.log_end_offset())
    }

    /// Clean and dirty bytes of the cleanable part of the log, for choosing the log
    /// to clean (see [`CleanStats::dirty_ratio`]).
    pub fn clean_stats(
        &self,
        cleanable_below_offset: u64,
        now_ms: i64,
        min_compaction_lag_ms: i64,
    ) -> CleanStats {
        let n = self.cleanable_count(cleanable_below_offset, now_ms, min_compaction_lag_ms);
        let first_dirty = self.first_dirty_offset();
        let mut stats = CleanStats {
            oldest_dirty_timestamp_ms: -1,
            ..CleanStats::default()
        };
        for s in &self.segments[..n] {
            if s.next_offset <= first_dirty {
                stats.clean_bytes += s.size_bytes as u64;
            } else {
                stats.dirty_bytes += s.size_bytes as u64;
                if stats.oldest_dirty_timestamp_ms < 0 {
                    stats.oldest_dirty_timestamp_ms = s.max_timestamp_ms;
                }
            }
        }
        stats
    }

    /// Files of segments a cleaning pass replaced, renamed out of the way: unlink them
    /// ([`remove_deleted_files`]) after releasing the lock around the log (unlinking a
    /// large file takes tens of milliseconds). Left alone, they go at the next open.
    pub fn take_deleted_files(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.deleted_files)
    }

    /// The offset below which the log has been cleaned (the dirty section starts here).
    pub fn cleaned_offset(&self) -> u64 {
        self.first_dirty_offset()
    }

    /// First step of a cleaning pass, cheap, under the caller's lock: picks the
    /// segments to read and opens them. `None` when nothing dirty is cleanable.
    pub fn prepare_clean(&self, options: CleanOptions) -> Result<Option<CleanJob>> {
        let n = self.cleanable_count(
            options.cleanable_below_offset,
            options.now_ms,
            options.min_compaction_lag_ms,
        );
        let first_dirty = self.first_dirty_offset();
        if n == 0 || self.segments[n - 1].next_offset <= first_dirty {
            return Ok(None);
        }
        let mut inputs = Vec::with_capacity(n);
        for s in &self.segments[..n] {
            let path = segment_path(&self.dir, s.base_offset, LOG_SUFFIX);
            let file = File::open(&path).map_err(|e| StorageError::io("open segment", &path, e))?;
            inputs.push(InputSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size_bytes: s.size_bytes,
                file,
                path,
            });
        }
        Ok(Some(CleanJob {
            dir: self.dir.clone(),
            inputs,
            first_dirty_offset: first_dirty,
            options,
            checkpoint: self.cleaner.clone(),
            segment_bytes: self.config.segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes,
            generation: self.generation,
        }))
    }

    /// Last step of a cleaning pass, under the caller's lock: swaps the cleaned
    /// segments in (see the module docs for the crash-safe order) and advances the
    /// cleaned offset. If the log changed under the job (truncation, reset, retention
    /// of the segments it read), the job is discarded and `swapped` is false.
    pub fn complete_clean(&mut self, done: CleanedSegments) -> Result<CleanOutcome> {
        self.complete_clean_until(done, SwapStep::Done)
    }

    /// [`complete_clean`](Self::complete_clean), stopping after `step` as a crash
    /// would (for crash tests: drop the log afterwards and reopen it).
    #[doc(hidden)]
    pub fn complete_clean_until(
        &mut self,
        done: CleanedSegments,
        step: SwapStep,
    ) -> Result<CleanOutcome> {
        let mut outcome = CleanOutcome {
            cleaned_offset: self.first_dirty_offset(),
            ..CleanOutcome::default()
        };
        // The inputs must still be the log's first segments, unchanged.
        let expected: Vec<(u64, u64, usize)> = done
            .outputs
            .iter()
            .flat_map(|o| o.replaces.iter().copied())
            .collect();
        let unchanged = done.generation == self.generation
            && expected.len() < self.segments.len()
            && self
                .segments
                .iter()
                .zip(&expected)
                .all(|(s, &(b, n, size))| {
                    (s.base_offset, s.next_offset, s.size_bytes) == (b, n, size)
                });
        if !unchanged || done.outputs.is_empty() {
            done.discard();
            return Ok(outcome);
        }
        let dir = self.dir.clone();
        // 2. Commit: every cleaned file becomes a swapped file.
        for out in &done.outputs {
            let from = segment_path(&dir, out.base_offset, CLEANED_SUFFIX);
            let to = segment_path(&dir, out.base_offset, SWAPPED_SUFFIX);
            if let Err(e) = fs::rename(&from, &to) {
                // Not committed yet: undo what was renamed so far.
                for o in &done.outputs {
                    let _ = fs::remove_file(segment_path(&dir, o.base_offset, SWAPPED_SUFFIX));
                }
                done.discard();
                return Err(StorageError::io("rename cleaned segment", to, e));
            }
        }
        atomic_file::sync_dir(&dir)?;
        if step == SwapStep::Committed {
            return Ok(outcome);
        }
        // 3. The replaced segments go (their maps stay alive for readers holding them):
        // renamed to `.deleted` here, unlinked by the caller after it releases its lock
        // (`take_deleted_files`), because unlinking a large file takes tens of ms.
        for &(base, _, _) in &expected {
            self.cache_remove(base);
            for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                let from = segment_path(&dir, base, suffix);
                let mut to = from.clone().into_os_string();
                to.push(DELETED_SUFFIX);
                match fs::rename(&from, &to) {
                    Ok(()) => self.deleted_files.push(to.into()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("rename replaced segment", from, e)),
                }
            }
        }
        if step == SwapStep::OldDeleted {
            return Ok(outcome);
        }
        // 4. The new segments take their names, then their indexes do (after the log:
        // recovery of a swap deletes whatever index files the segment's base has).
        for out in &done.outputs {
            let from = segment_path(&dir, out.base_offset, SWAPPED_SUFFIX);
            let to = segment_path(&dir, out.base_offset, LOG_SUFFIX);
            fs::rename(&from, &to).map_err(|e| StorageError::io("rename segment", to, e))?;
        }
        if step == SwapStep::Renamed {
            atomic_file::sync_dir(&dir)?;
        } else {
            for out in &done.outputs {
                for (from, to) in [
                    (CLEANED_INDEX_SUFFIX, INDEX_SUFFIX),
                    (CLEANED_TIME_INDEX_SUFFIX, TIME_INDEX_SUFFIX),
                ] {
                    let from = segment_path(&dir, out.base_offset, from);
                    let to = segment_path(&dir, out.base_offset, to);
                    // A missing index is rebuilt from the log when the segment is read.
                    if let Err(e) = fs::rename(&from, &to) {
                        tracing::warn!(file = %to.display(), error = %e, "cleaned index not renamed; it will be rebuilt");
                    }
                }
            }
            atomic_file::sync_dir(&dir)?;
        }
        let mut new_segments = Vec::with_capacity(done.outputs.len());
        for out in &done.outputs {
            outcome.bytes_out += out.size_bytes as u64;
            new_segments.push(Segment {
                base_offset: out.base_offset,
                next_offset: out.next_offset,
                size_bytes: out.size_bytes,
                max_timestamp_ms: out.max_timestamp_ms,
                flushed_bytes: out.size_bytes,
                unsynced: None,
            });
        }
        outcome.bytes_in = expected.iter().map(|&(_, _, size)| size as u64).sum();
        outcome.segments_in = expected.len();
        outcome.segments_out = done.outputs.len();
        outcome.records_removed = done.records_removed;
        outcome.tombstones_removed = done.tombstones_removed;
        self.segments.splice(..expected.len(), new_segments);
        if step == SwapStep::Renamed {
            return Ok(outcome);
        }
        self.cleaner.record_pass(done.map_end_offset, done.now_ms);
        self.cleaner.save(&dir)?;
        outcome.swapped = true;
        outcome.cleaned_offset = self.first_dirty_offset();
        Ok(outcome)
    }
}

/// On open, before segments are listed: deletes uncommitted cleaned segments and
/// finishes committed swaps (see the module docs). Returns how many swaps it finished.
pub(crate) fn recover_swaps(dir: &Path) -> Result<usize> {
    let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list log directory", dir, e))?;
    let mut swapped = Vec::new();
    let mut logs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".cleaned") || name.ends_with(DELETED_SUFFIX) {
            let path = entry.path();
            fs::remove_file(&path)
                .map_err(|e| StorageError::io("remove cleaned segment", path, e))?;
        } else if let Some(stem) = name.strip_suffix(SWAPPED_SUFFIX) {
            if let Some(base) = segment::parse_log_name(&format!("{stem}{LOG_SUFFIX}")) {
                swapped.push(base);
            }
        } else if let Some(base) = segment::parse_log_name(name) {
            logs.push(base);
        }
    }
    if swapped.is_empty() {
        return Ok(0);
    }
    swapped.sort_unstable();
    for &base in &swapped {
        let path = segment_path(dir, base, SWAPPED_SUFFIX);
        let file = File::open(&path).map_err(|e| StorageError::io("open segment", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("stat segment", &path, e))?
            .len() as usize;
        let next_offset = if len == 0 {
            base
        } else {
            let map = MapFile::read_only(&file, len)
                .map_err(|e| StorageError::io("map segment", &path, e))?;
            let view = map.view();
            let mut index = SegmentIndex::new();
            let scanned = segment::scan(&view, base, 0, base, true, u32::MAX, &mut index, None);
            if scanned.corrupt.is_some() {
                // Synced before the commit rename: this cannot happen unless the disk
                // lied. Keep whichever side is whole.
                tracing::warn!(file = %path.display(), "corrupt swapped segment; keeping the old segments");
                fs::remove_file(&path).map_err(|e| StorageError::io("remove segment", &path, e))?;
                continue;
            }
            scanned.next_offset
        };
        for &old in logs
            .iter()
            .filter(|&&b| b >= base && b < next_offset.max(base + 1))
        {
            delete_files(dir, old)?;
        }
        let to = segment_path(dir, base, LOG_SUFFIX);
        fs::rename(&path, &to).map_err(|e| StorageError::io("rename segment", to, e))?;
        tracing::info!(dir = %dir.display(), base, next_offset, "finished an interrupted cleaner swap");
    }
    atomic_file::sync_dir(dir)?;
    Ok(swapped.len())
}

/// Unlinks files from [`PartitionLog::take_deleted_files`]; failures are logged (the
/// next open removes leftovers).
pub fn remove_deleted_files(files: Vec<PathBuf>) {
    for file in files {
        if let Err(e) = fs::remove_file(&file) {
            tracing::warn!(file = %file.display(), error = %e, "could not remove a replaced segment file");
        }
    }
}
