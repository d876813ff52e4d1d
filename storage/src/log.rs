//! [`PartitionLog`]: one partition replica's log, a sequence of segments with a
//! start offset, an end offset, a leader-epoch file and a durable flush point.

use std::fs;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::atomic_file;
use crate::batch::{self, BatchView};
use crate::clean::{self, CleanerCheckpoint};
use crate::config::LogConfig;
use crate::epoch::{EpochCache, EpochEntry};
use crate::error::{Result, StorageError};
use crate::flush::{
    ClosedWork, DeferredSync, FlushJob, FlushRange, FlushedTo, SharedCheckpoints, UnsavedEpochs,
};
use crate::index::SegmentIndex;
use crate::journal::JournalWrite;
use crate::mmap::{self, MapFile, MapWriter};
use crate::segment::{
    self, create_active, delete_files, segment_path, Active, Loaded, Segment, Unsynced,
    INDEX_SUFFIX, LOG_SUFFIX, SWAP_SUFFIX, TIME_INDEX_SUFFIX,
};

/// File name of the recovery-point checkpoint: recovery on open scans from the
/// segment holding this offset.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
/// File name of the log-start checkpoint.
pub const LOG_START_FILE: &str = "log-start-offset-checkpoint";
pub(crate) const RECOVERY_POINT_KEY: &str = "recovery_point";
const LOG_START_KEY: &str = "log_start_offset";
/// File that keeps the records start offset (DeleteRecords), see
/// [`PartitionLog::delete_records_below`].
pub const RECORDS_START_FILE: &str = "records-start-offset-checkpoint";
const RECORDS_START_KEY: &str = "records_start_offset";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: u64,
    /// Offset of the last record appended.
    pub last_offset: u64,
    /// Largest record timestamp among the appended batches (-1 if none).
    pub max_timestamp_ms: i64,
    /// Number of batches appended.
    pub batch_count: usize,
    /// Bytes appended.
    pub bytes: usize,
    /// Log end offset after the append (`last_offset + 1`).
    pub log_end_offset: u64,
}

/// What [`PartitionLog::apply_retention`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    /// Whole segments deleted.
    pub segments_deleted: usize,
    /// Bytes of log deleted.
    pub bytes_deleted: u64,
    /// Log start offset afterwards.
    pub log_start_offset: u64,
}

#[derive(Debug, Default)]
struct MapCache {
    entries: Vec<CacheEntry>,
    tick: u64,
}

#[derive(Debug)]
struct CacheEntry {
    base_offset: u64,
    loaded: Arc<Loaded>,
    last_used: u64,
}

/// One partition replica's log.
///
/// Thread-safety: writes take `&mut self`, reads take `&self` (a closed segment's
/// map cache sits behind an internal mutex), so a `Mutex<PartitionLog>` or
/// `RwLock<PartitionLog>` around it is enough. `Bytes` returned by [`read`] stay
/// valid after any later append, truncation, reset, retention or close.
///
/// [`read`]: PartitionLog::read
#[derive(Debug)]
pub struct PartitionLog {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Ordered by base offset, contiguous; the last one is the active segment.
    pub(crate) segments: Vec<Segment>,
    active: Active,
    pub(crate) log_start_offset: u64,
    /// Records below this were deleted by DeleteRecords (Kafka's log start offset may lie
    /// inside a segment, or inside a batch); consumers see
    /// `max(log_start_offset, records_start_offset)`. Segments, Raft and retention keep
    /// working on `log_start_offset`, which is always a segment's base offset.
    records_start_offset: u64,
    epochs: EpochCache,
    /// Bumped by every change of `epochs`; the epoch file holds the version
    /// `checkpoints` names (see [`SharedCheckpoints`] for why it may lag).
    epochs_version: u64,
    /// Every offset below this is durable.
    pub(crate) flushed_offset: u64,
    /// Bumped by truncation and reset; flush completions from an older generation are ignored.
    pub(crate) generation: u64,
    checkpoints: Arc<SharedCheckpoints>,
    cache: Mutex<MapCache>,
    /// Directory entries created or removed (monotonic), and how many are known durable.
    dir_changes: u64,
    dir_changes_synced: u64,
    /// The journal epoch in which bytes of this log were last made durable through the
    /// data directory's journal rather than in place (see `journal`): while that
    /// epoch is current, a truncation, reset or deletion must checkpoint it first.
    journal_epoch: Option<u64>,
    /// The cleaner's checkpoint (cleaned offset, when offsets were first cleaned).
    pub(crate) cleaner: CleanerCheckpoint,
    /// Replaced segment files awaiting their unlink (`take_deleted_files`).
    pub(crate) deleted_files: Vec<PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering it: segments from the
    /// one holding the recovery checkpoint on are scanned batch by batch (length,
    /// magic, CRC32C, offset contiguity, epoch order); the first bad batch and
    /// everything after it is truncated (reported with `tracing::warn!`), indexes are
    /// rebuilt for the scanned part, and the result is synced before the checkpoint
    /// moves to the log end.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog> {
        config.validate()?;
        if !dir.exists() {
            fs::create_dir_all(dir)
                .map_err(|e| StorageError::io("create log directory", dir, e))?;
            // The new directory's own entry must be durable before anything in it is
            // acknowledged (a power loss would take the directory and its data).
            if let Some(parent) = dir.parent() {
                atomic_file::sync_dir(parent)?;
            }
        }
        // A cleaner swap interrupted by a crash is finished (or undone) first.
        clean::recover_swaps(dir)?;
        let cleaner = CleanerCheckpoint::load(dir)?;
        let mut bases = Vec::new();
        let mut index_bases = Vec::new();
        let entries =
            fs::read_dir(dir).map_err(|e| StorageError::io("list log directory", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("list log directory", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(atomic_file::TMP_SUFFIX) || name.ends_with(SWAP_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path)
                    .map_err(|e| StorageError::io("remove temp file", path, e))?;
            } else if let Some(base) = segment::parse_log_name(name) {
                bases.push(base);
            } else if let Some(stem) = name
                .strip_suffix(INDEX_SUFFIX)
                .or_else(|| name.strip_suffix(TIME_INDEX_SUFFIX))
            {
                if let Some(base) = segment::parse_log_name(&format!("{stem}{LOG_SUFFIX}")) {
                    index_bases.push(base);
                }
            }
        }
        bases.sort_unstable();
        for base in index_bases {
            if bases.binary_search(&base).is_err() {
                delete_files(dir, base)?;
            }
        }

        let mut epochs = EpochCache::load(dir)?;
        let epochs_on_disk = epochs.clone();
        let log_start_ck = atomic_file::read_u64(dir, LOG_START_FILE, LOG_START_KEY)?;
        let recovery_ck = atomic_file::read_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY)?;
        let log_start = log_start_ck.unwrap_or_else(|| bases.first().copied().unwrap_or(0));

        // Segments wholly below the log start are leftovers of retention or reset.
        let below = bases.partition_point(|&b| b < log_start);
        for &base in &bases[..below] {
            delete_files(dir, base)?;
        }
        bases.drain(..below);
        if bases.first().is_some_and(|&b| b != log_start) {
            // Only an interrupted reset leaves segments that start past the log start.
            tracing::warn!(
                dir = %dir.display(),
                log_start,
                first_segment = bases[0],
                "segments do not start at the log start offset (interrupted reset); removing them"
            );
            for &base in &bases {
                delete_files(dir, base)?;
            }
            bases.clear();
        }

        let mut log = if bases.is_empty() {
            epochs.clear();
            let capacity = config.segment_bytes as usize;
            let writer = create_active(
                &segment_path(dir, log_start, LOG_SUFFIX),
                capacity,
                &[],
                false,
            )?;
            PartitionLog::assemble(
                dir,
                config,
                vec![empty_segment(log_start)],
                new_active(writer, capacity, 0),
                log_start,
                epochs,
            )
        } else {
            Self::recover(dir, config, bases, log_start, recovery_ck, epochs)?
        };
        // Rewrite only what changed: a clean reopen costs one directory fsync.
        atomic_file::sync_dir(dir)?;
        let mut epochs_saved = true;
        if log.epochs.entries() != epochs_on_disk.entries() {
            match log.epochs.save(dir) {
                Ok(()) => {}
                // Recovery rebuilt them from the batches (a crash came before the
                // flush that writes them): on a full disk the log still opens and serves
                // reads; the epochs stay unsaved, and the recovery point stays where it
                // was until a flush has written them.
                Err(e) if is_no_space(&e) => {
                    tracing::warn!(dir = %dir.display(), "no space to update the leader-epoch checkpoint; it is written by the next flush");
                    log.epochs_version = 1;
                    epochs_saved = false;
                }
                Err(e) => return Err(e),
            }
        }
        // An absent checkpoint means what a new log would write (log start = the first
        // segment's base, recovery point = the log start), so a new partition is
        // created without two checkpoint files and their four fsyncs (fifty of them
        // for `__consumer_offsets`).
        let first_base = log.segments[0].base_offset;
        if log_start_ck.unwrap_or(first_base) != log.log_start_offset {
            atomic_file::write_u64(dir, LOG_START_FILE, LOG_START_KEY, log.log_start_offset)?;
        }
        log.records_start_offset =
            atomic_file::read_u64(dir, RECORDS_START_FILE, RECORDS_START_KEY)?.unwrap_or(0);
        let end = log.log_end_offset();
        let mut recovery_point = end;
        if !epochs_saved {
            recovery_point = recovery_ck.unwrap_or(0).min(end);
        } else if recovery_ck.unwrap_or(log.log_start_offset) != end {
            match atomic_file::write_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, end) {
                Ok(()) => {}
                // The checkpoint only shortens the next recovery; a full disk must not
                // stop a broker from opening its logs and serving reads.
                Err(e) if is_no_space(&e) => {
                    tracing::warn!(dir = %dir.display(), "no space to update the recovery checkpoint; the next start scans more");
                    recovery_point = recovery_ck.unwrap_or(0).min(end);
                }
                Err(e) => return Err(e),
            }
        }
        log.checkpoints = Arc::new(SharedCheckpoints::new(recovery_point));
        log.cleaner = cleaner;
        log.flushed_offset = end;
        Ok(log)
    }

    fn assemble(
        dir: &Path,
        config: LogConfig,
        segments: Vec<Segment>,
        active: Active,
        log_start_offset: u64,
        epochs: EpochCache,
    ) -> PartitionLog {
        PartitionLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            active,
            log_start_offset,
            records_start_offset: 0,
            epochs,
            epochs_version: 0,
            flushed_offset: log_start_offset,
            generation: 0,
            checkpoints: Arc::new(SharedCheckpoints::new(log_start_offset)),
            cache: Mutex::new(MapCache::default()),
            dir_changes: 0,
            dir_changes_synced: 0,
            journal_epoch: None,
            cleaner: CleanerCheckpoint::default(),
            deleted_files: Vec::new(),
        }
    }

    fn recover(
        dir: &Path,
        config: LogConfig,
        bases: Vec<u64>,
        log_start: u64,
        recovery_ck: Option<u64>,
        mut epochs: EpochCache,
    ) -> Result<PartitionLog> {
        let recovery_point = recovery_ck.unwrap_or(0).max(log_start);
        let recover_from = bases
            .partition_point(|&b| b <= recovery_point)
            .saturating_sub(1);
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let mut expected_next = bases[0];
        // Closed segments below the recovery point were flushed: trust their shape.
        for &base in &bases[..recover_from] {
            match segment::load_trusted(dir, base) {
                Some(seg) if seg.base_offset == expected_next && seg.next_offset > base => {
                    expected_next = seg.next_offset;
                    segments.push(seg);
                }
                _ => break,
            }
        }
        let scan_from = segments.len();
        epochs.truncate_from(expected_next);
        let mut active_index = SegmentIndex::new();
        let mut active_last_batch = None;
        let mut active_file = None;
        for (k, &base) in bases.iter().enumerate().skip(scan_from) {
            let path = segment_path(dir, base, LOG_SUFFIX);
            if base != expected_next {
                tracing::warn!(
                    file = %path.display(),
                    expected_base = expected_next,
                    "segment does not follow the previous one; truncating the log here"
                );
                for &later in &bases[k..] {
                    delete_files(dir, later)?;
                }
                break;
            }
            let file = segment::open_rw(&path)?;
            let file_len = file
                .metadata()
                .map_err(|e| StorageError::io("stat segment", &path, e))?
                .len() as usize;
            let mut index = SegmentIndex::new();
            let outcome = if file_len == 0 {
                segment::scan(
                    &[],
                    base,
                    0,
                    base,
                    true,
                    config.index_interval_bytes,
                    &mut index,
                    None,
                )
            } else {
                let map = MapFile::read_only(&file, file_len)
                    .map_err(|e| StorageError::io("map segment", &path, e))?;
                let view = map.view();
                segment::scan(
                    &view,
                    base,
                    0,
                    base,
                    true,
                    config.index_interval_bytes,
                    &mut index,
                    Some(&mut epochs),
                )
            };
            let is_last = k + 1 == bases.len() || outcome.corrupt.is_some();
            if let Some((position, reason)) = outcome.corrupt {
                tracing::warn!(
                    file = %path.display(),
                    position,
                    reason,
                    truncated_bytes = file_len - position,
                    kept_offsets_below = outcome.next_offset,
                    later_segments_removed = bases.len() - k - 1,
                    "recovery truncated the log at a torn or corrupt batch"
                );
                for &later in &bases[k + 1..] {
                    delete_files(dir, later)?;
                }
                // Zero the garbage so a later recovery cannot mistake it for batches
                // that follow whatever is appended next.
                mmap::zero_range(&file, position as u64, file_len as u64)
                    .map_err(|e| StorageError::io("zero torn tail", &path, e))?;
            }
            let mut tail_zeroed = false;
            if !is_last && file_len > outcome.end_pos {
                file.set_len(outcome.end_pos as u64)
                    .map_err(|e| StorageError::io("trim segment", &path, e))?;
            } else if is_last && outcome.corrupt.is_none() {
                // The scan stopped at zeros. Anything written after them (a lost page
                // in the middle of unflushed data, say) must not come back as batches
                // following whatever is appended next: zero it too.
                let page_end = outcome.end_pos.next_multiple_of(4096).min(file_len);
                let mut partial = [0u8; 4096];
                let partial = &mut partial[..page_end - outcome.end_pos];
                std::os::unix::fs::FileExt::read_exact_at(&file, partial, outcome.end_pos as u64)
                    .map_err(|e| StorageError::io("read segment tail", &path, e))?;
                let stale = if segment::all_zero(partial) {
                    mmap::data_after(&file, page_end as u64)
                        .map_err(|e| StorageError::io("look for data", &path, e))?
                } else {
                    Some(outcome.end_pos as u64)
                };
                if let Some(at) = stale.filter(|&at| (at as usize) < file_len) {
                    tracing::warn!(
                        file = %path.display(),
                        log_end = outcome.end_pos,
                        stale_data_at = at,
                        "data found after the end of the log; zeroing it"
                    );
                    mmap::zero_range(&file, outcome.end_pos as u64, file_len as u64)
                        .map_err(|e| StorageError::io("zero stale tail", &path, e))?;
                    tail_zeroed = true;
                }
            }
            // What recovery kept must be durable before the checkpoint vouches for
            // it (after a process crash it may sit only in the page cache); below a
            // recovery point it already is.
            if recovery_ck.is_none_or(|rp| rp < outcome.next_offset)
                || outcome.corrupt.is_some()
                || tail_zeroed
            {
                file.sync_data()
                    .map_err(|e| StorageError::io("fdatasync segment", &path, e))?;
            }
            let mut seg = Segment {
                base_offset: base,
                next_offset: outcome.next_offset,
                size_bytes: outcome.end_pos,
                max_timestamp_ms: outcome.max_timestamp_ms,
                flushed_bytes: outcome.end_pos,
                unsynced: None,
            };
            expected_next = seg.next_offset;
            if is_last {
                active_index = index;
                active_last_batch = outcome.last_batch_offset;
                active_file = Some((file, file_len));
                seg.flushed_bytes = seg.size_bytes;
                segments.push(seg);
                break;
            }
            if let Some(last) = outcome.last_batch_offset {
                index.seal((last - base) as u32);
            }
            let (o, t) = index
                .write_files(
                    &segment_path(dir, base, INDEX_SUFFIX),
                    &segment_path(dir, base, TIME_INDEX_SUFFIX),
                )
                .map_err(|e| StorageError::io("write index", &path, e))?;
            for f in [o, t] {
                f.sync_data()
                    .map_err(|e| StorageError::io("fdatasync index", &path, e))?;
            }
            segments.push(seg);
        }
        // If the scan stopped at a gap, the last kept segment was closed: reopen it
        // as the active one, rebuilding its in-memory index from its batches.
        let (file, file_len) = match active_file {
            Some(f) => f,
            None => {
                let seg = segments.last().expect("the first segment is always kept");
                let path = segment_path(dir, seg.base_offset, LOG_SUFFIX);
                let file = segment::open_rw(&path)?;
                let len = file
                    .metadata()
                    .map_err(|e| StorageError::io("stat segment", &path, e))?
                    .len() as usize;
                if seg.size_bytes > 0 {
                    let map = MapFile::read_only(&file, seg.size_bytes)
                        .map_err(|e| StorageError::io("map segment", &path, e))?;
                    let view = map.view();
                    let mut index = SegmentIndex::new();
                    let out = segment::scan(
                        &view,
                        seg.base_offset,
                        0,
                        seg.base_offset,
                        false,
                        config.index_interval_bytes,
                        &mut index,
                        None,
                    );
                    active_index = index;
                    active_last_batch = out.last_batch_offset;
                }
                (file, len)
            }
        };
        let seg = segments.last().expect("at least one segment");
        let path = segment_path(dir, seg.base_offset, LOG_SUFFIX);
        let capacity = (config.segment_bytes as usize)
            .max(file_len)
            .max(seg.size_bytes);
        // The file keeps its length (a segment made before growth in steps stays
        // fully allocated); appends grow it from there.
        let (_, writer) =
            MapFile::for_appending(Arc::new(file), capacity, file_len, seg.size_bytes)
                .map_err(|e| StorageError::io("map segment", &path, e))?;
        // Stale index files of the active segment are rewritten when it closes.
        let _ = fs::remove_file(segment_path(dir, seg.base_offset, INDEX_SUFFIX));
        let _ = fs::remove_file(segment_path(dir, seg.base_offset, TIME_INDEX_SUFFIX));
        let mut active = new_active(writer, capacity, seg.size_bytes);
        active.index = active_index;
        active.last_batch_offset = active_last_batch;
        active.created_ms = now_ms();
        let log_end = seg.next_offset;
        epochs.truncate_from(log_end);
        Ok(PartitionLog::assemble(
            dir, config, segments, active, log_start, epochs,
        ))
    }

    // ----- accessors -------------------------------------------------------------

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the configuration of an open log (a topic's configs altered): retention,
    /// `segment_ms` and the index interval apply from the next call that reads them; a
    /// smaller `segment_bytes` also caps the active segment, so it rolls at the new size
    /// (or at once, if it is already larger); a larger one applies from the next segment.
    pub fn set_config(&mut self, config: LogConfig) -> Result<()> {
        config.validate()?;
        let segment_bytes = config.segment_bytes as usize;
        if segment_bytes < self.active.capacity {
            let used = self.active_segment().size_bytes;
            self.active.capacity = segment_bytes.max(used);
        }
        self.config = config;
        Ok(())
    }

    /// First offset consumers may read (Kafka's log start offset, ListOffsets
    /// earliest): the first offset of the first segment, or the records start set by
    /// [`PartitionLog::delete_records_below`] if later (capped at the log end).
    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
            .max(self.records_start_offset.min(self.log_end_offset()))
    }

    /// First offset of the first segment: where the log's entries start for
    /// replication (a Raft log starts at a batch boundary).
    pub fn segment_start_offset(&self) -> u64 {
        self.log_start_offset
    }

    /// DeleteRecords: records below `offset` are gone for consumers from now on (the
    /// log start offset becomes `offset`, capped at the log end); closed segments wholly
    /// below it are deleted at once, the rest of the segment holding `offset` when that
    /// segment goes. Recorded durably first, so a restart keeps it. Never moves back.
    /// Returns the new log start offset.
    pub fn delete_records_below(&mut self, offset: u64) -> Result<u64> {
        let offset = offset.min(self.log_end_offset());
        if offset <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        atomic_file::write_u64(&self.dir, RECORDS_START_FILE, RECORDS_START_KEY, offset)?;
        self.records_start_offset = offset;
        self.delete_segments_below(offset)?;
        Ok(self.log_start_offset())
    }

    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> u64 {
        self.active_segment().next_offset
    }

    /// Every offset below this is durable (survives a crash of process or machine).
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    /// Total bytes of all segments' batches.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes as u64).sum()
    }

    /// Number of segments (closed ones plus the active one).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.base_offset).collect()
    }

    /// The leader-epoch entries (epoch, first offset), oldest first.
    pub fn epoch_entries(&self) -> &[EpochEntry] {
        self.epochs.entries()
    }

    /// The latest leader epoch in the log, if any batch carried one.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// The leader epoch (Raft term) of the batch holding `offset`; `None` outside
    /// `[log_start_offset, log_end_offset)` or for batches without an epoch.
    pub fn term_at(&self, offset: u64) -> Option<i32> {
        if offset < self.log_start_offset || offset >= self.log_end_offset() {
            return None;
        }
        self.epochs.epoch_for_offset(offset)
    }

    /// Same as [`term_at`](Self::term_at), Kafka's name.
    pub fn epoch_for_offset(&self, offset: u64) -> Option<i32> {
        self.term_at(offset)
    }

    /// Kafka's OffsetForLeaderEpoch (and Raft's divergence search): the largest epoch
    /// in the log that is <= `epoch`, with the offset where it ends (the start of the
    /// next epoch, or the log end offset). `None` if every epoch is larger.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, u64)> {
        self.epochs
            .end_offset_for_epoch(epoch, self.log_end_offset())
    }

    fn active_segment(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn active_segment_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
    }

    fn segment_index_for(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    fn out_of_range(&self, offset: u64) -> StorageError {
        StorageError::OffsetOutOfRange {
            offset,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset(),
        }
    }

    // ----- append ----------------------------------------------------------------

    /// Leader append: validates `batches` (one or more whole RecordBatch v2: length,
    /// magic, CRC32C), copies them once into the active segment, and stamps each
    /// batch's baseOffset (from the log end offset on) and partitionLeaderEpoch in
    /// place. Fails without changing the log.
    pub fn append_as_leader(&mut self, batches: &[u8], leader_epoch: i32) -> Result<AppendInfo> {
        self.append_inner(batches, Some(leader_epoch))
    }

    /// Follower (replication) append: batches keep their offsets and epochs; the
    /// first must start at the log end offset and the rest follow contiguously, and
    /// epochs may not decrease. Fails without changing the log.
    pub fn append(&mut self, batches: &[u8]) -> Result<AppendInfo> {
        self.append_inner(batches, None)
    }

    fn append_inner(&mut self, input: &[u8], leader_epoch: Option<i32>) -> Result<AppendInfo> {
        let log_end = self.log_end_offset();
        if input.is_empty() {
            return Err(StorageError::CorruptBatch {
                position: 0,
                reason: "empty append",
            });
        }
        // Pass 1: validate everything before touching the log.
        let mut pos = 0;
        let mut next = log_end;
        let mut max_ts = -1i64;
        let mut batch_count = 0usize;
        let mut epoch_floor = self.epochs.latest_epoch().unwrap_or(-1);
        let mut new_epochs = false;
        if let Some(epoch) = leader_epoch {
            if epoch >= 0 && epoch < epoch_floor {
                return Err(StorageError::EpochRegression {
                    epoch,
                    latest_epoch: epoch_floor,
                });
            }
            new_epochs = self.epochs.needs_entry(epoch);
        }
        while pos < input.len() {
            let header =
                batch::parse_and_verify(&input[pos..]).map_err(|e| StorageError::CorruptBatch {
                    position: pos,
                    reason: e.reason(),
                })?;
            if leader_epoch.is_none() {
                if header.base_offset() != next as i64 {
                    return Err(StorageError::NonContiguous {
                        expected: next,
                        actual: header.base_offset(),
                    });
                }
                if header.partition_leader_epoch() >= 0 {
                    if header.partition_leader_epoch() < epoch_floor {
                        return Err(StorageError::EpochRegression {
                            epoch: header.partition_leader_epoch(),
                            latest_epoch: epoch_floor,
                        });
                    }
                    if header.partition_leader_epoch() > epoch_floor {
                        new_epochs = true;
                        epoch_floor = header.partition_leader_epoch();
                    }
                }
            }
            next += u64::from(header.last_offset_delta() as u32) + 1;
            max_ts = max_ts.max(header.max_timestamp());
            batch_count += 1;
            pos += header.size_bytes();
        }
        let total = input.len();
        if total as u64 > self.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                batch_bytes: total,
                segment_bytes: self.config.segment_bytes,
            });
        }
        let last_offset = next - 1;
        // Roll first if the append does not fit (by bytes or by relative offsets).
        {
            let seg = self.active_segment();
            let fits_bytes = seg.size_bytes + total <= self.active.capacity;
            let fits_offsets = last_offset - seg.base_offset <= u64::from(u32::MAX);
            if !(fits_bytes && fits_offsets) {
                self.roll()?;
            }
        }
        // Reserve the space before anything else changes, so a full disk fails the
        // append with the log untouched.
        self.reserve_active(self.active_segment().size_bytes + total)?;
        // New epochs change the cache only; the epoch file follows before the recovery
        // point passes them (see `SharedCheckpoints`).
        let mut saved_epochs = None;
        if new_epochs {
            saved_epochs = Some(self.epochs.clone());
            match leader_epoch {
                Some(epoch) => self.epochs.push(epoch, log_end),
                None => {
                    let mut p = 0;
                    while p < input.len() {
                        let h = batch::parse(&input[p..]).expect("validated above");
                        if self.epochs.needs_entry(h.partition_leader_epoch()) {
                            self.epochs
                                .push(h.partition_leader_epoch(), h.base_offset() as u64);
                        }
                        p += h.size_bytes();
                    }
                }
            }
            self.epochs_version += 1;
        }
        // Pass 2: one copy into the file (pwritev; the map shows the same page-cache
        // pages), with the leader's stamped headers swapped in through the iovecs.
        let seg_base = self.active_segment().base_offset;
        let start_pos = self.active_segment().size_bytes;
        let end_pos = start_pos + total;
        let written = match leader_epoch {
            None => self
                .active
                .writer
                .write_at(start_pos, &mut [IoSlice::new(input)]),
            Some(epoch) => write_stamped(&mut self.active.writer, start_pos, input, log_end, epoch),
        };
        if let Err(e) = written {
            // Leave nothing behind that recovery could take for batches.
            let _ = self.active.writer.zero(start_pos, end_pos);
            if let Some(saved) = saved_epochs {
                self.epochs = saved;
                self.epochs_version += 1;
            }
            let path = segment_path(&self.dir, seg_base, LOG_SUFFIX);
            return Err(StorageError::io("write segment", path, e));
        }
        let interval = self.config.index_interval_bytes;
        let active = &mut self.active;
        if start_pos == 0 {
            active.created_ms = now_ms();
        }
        let mut p = 0;
        let mut offset = log_end;
        let mut last_batch = None;
        while p < total {
            let h = batch::parse(&input[p..]).expect("validated above");
            active.index.on_batch(
                interval,
                (offset - seg_base) as u32,
                (start_pos + p) as u32,
                h.size_bytes() as u32,
                h.max_timestamp(),
            );
            last_batch = Some(offset);
            offset += u64::from(h.last_offset_delta() as u32) + 1;
            p += h.size_bytes();
        }
        debug_assert_eq!(offset, next);
        active.writer.publish(end_pos);
        active.high_written = active.high_written.max(end_pos);
        active.last_batch_offset = last_batch;
        let seg = self.active_segment_mut();
        seg.size_bytes = end_pos;
        seg.next_offset = next;
        seg.max_timestamp_ms = seg.max_timestamp_ms.max(max_ts);
        Ok(AppendInfo {
            base_offset: log_end,
            last_offset,
            max_timestamp_ms: max_ts,
            batch_count,
            bytes: total,
            log_end_offset: next,
        })
    }

    /// Grows the active segment file (by the next step, see
    /// [`segment::grown_len`]) if `end_pos` lies past its end.
    fn reserve_active(&mut self, end_pos: usize) -> Result<()> {
        let file_len = self.active.writer.file_len();
        if end_pos <= file_len {
            return Ok(());
        }
        let len = segment::grown_len(file_len, end_pos, self.active.capacity);
        self.active.writer.grow_file(len).map_err(|e| {
            let base = self.active_segment().base_offset;
            StorageError::io("grow segment", segment_path(&self.dir, base, LOG_SUFFIX), e)
        })
    }

    // ----- roll ------------------------------------------------------------------

    /// Closes the active segment and starts a new one at the log end offset (no-op
    /// if the active segment is empty). On error the log is unchanged.
    pub fn roll(&mut self) -> Result<()> {
        let seg = self.active_segment();
        if seg.size_bytes == 0 {
            return Ok(());
        }
        let (old_base, new_base, size) = (seg.base_offset, seg.next_offset, seg.size_bytes);
        let capacity = self.config.segment_bytes as usize;
        let writer = create_active(
            &segment_path(&self.dir, new_base, LOG_SUFFIX),
            capacity,
            &[],
            false,
        )?;
        let new_path = segment_path(&self.dir, new_base, LOG_SUFFIX);
        let old_path = segment_path(&self.dir, old_base, LOG_SUFFIX);
        if let Some(last) = self.active.last_batch_offset {
            self.active.index.seal((last - old_base) as u32);
        }
        let index_files = match self.active.index.write_files(
            &segment_path(&self.dir, old_base, INDEX_SUFFIX),
            &segment_path(&self.dir, old_base, TIME_INDEX_SUFFIX),
        ) {
            Ok((o, t)) => vec![Arc::new(o), Arc::new(t)],
            Err(e) => {
                drop(writer);
                let _ = fs::remove_file(&new_path);
                return Err(StorageError::io("write index", old_path, e));
            }
        };
        // The trim to the used length (`size`) is left to the flush that syncs this
        // segment (`ClosedWork`): here, under the caller's lock on the append path, an
        // ftruncate waited for the persist thread's fdatasync of the same file
        // (0.06-18 ms, storage/PERF-NOTES.md).
        let old = std::mem::replace(&mut self.active, new_active(writer, capacity, 0));
        let old_map = old.writer.map().clone();
        // Kept until a flush has synced the tail of its data and its index files.
        self.segments.last_mut().expect("active segment").unsynced = Some(Unsynced {
            file: old.writer.file().clone(),
            size_bytes: size as u64,
            index_files,
        });
        self.segments.push(empty_segment(new_base));
        self.dir_changes += 1;
        self.cache_insert(
            old_base,
            Arc::new(Loaded {
                map: Some(old_map),
                index: old.index,
            }),
        );
        Ok(())
    }

    /// Rolls if the active segment is older than `segment_ms` (measured from its
    /// first append, or from opening the log). Returns whether it rolled.
    pub fn maybe_roll(&mut self, now_ms: i64) -> Result<bool> {
        let Some(segment_ms) = self.config.segment_ms else {
            return Ok(false);
        };
        if self.active_segment().size_bytes == 0
            || now_ms.saturating_sub(self.active.created_ms) < segment_ms as i64
        {
            return Ok(false);
        }
        self.roll()?;
        Ok(true)
    }

    /// Grows the active segment file so that at least `bytes` more (within the
    /// segment's capacity) can be appended without growing it: a persist thread calls
    /// this ahead of a write stream, so the appends themselves stay plain copies.
    /// Returns whether the file grew.
    pub fn reserve_ahead(&mut self, bytes: usize) -> Result<bool> {
        let want = (self.active_segment().size_bytes + bytes).min(self.active.capacity);
        if want <= self.active.writer.file_len() {
            return Ok(false);
        }
        self.reserve_active(want)?;
        Ok(true)
    }

    /// Whether appending `bytes` now would create, grow or roll a segment file
    /// (`fallocate`, file creation, index writes, directory fsync: system calls that
    /// can block on a busy disk), so a caller on an async runtime can step off it
    /// first. Plain appends into room already allocated answer `false`.
    pub fn append_needs_file_io(&self, bytes: usize, now_ms: i64) -> bool {
        let seg = self.active_segment();
        let end_pos = seg.size_bytes + bytes;
        let rolls_by_time = self.config.segment_ms.is_some_and(|ms| {
            seg.size_bytes > 0 && now_ms.saturating_sub(self.active.created_ms) >= ms as i64
        });
        rolls_by_time || end_pos > self.active.capacity || end_pos > self.active.writer.file_len()
    }

    // ----- read ------------------------------------------------------------------

    /// Whole batches starting with the one that holds `start_offset`, from one
    /// segment, as a zero-copy slice of the mapped file: at most `bytes_max` bytes
    /// unless the first batch alone is larger (so a reader always progresses), and
    /// never a batch whose last offset is >= `end_offset_exclusive` (pass the high
    /// watermark). Empty when there is nothing to return; `OffsetOutOfRange` when
    /// `start_offset` is below the log start or above the log end.
    pub fn read(
        &self,
        start_offset: u64,
        bytes_max: usize,
        end_offset_exclusive: u64,
    ) -> Result<Bytes> {
        let log_end = self.log_end_offset();
        if start_offset < self.log_start_offset || start_offset > log_end {
            return Err(self.out_of_range(start_offset));
        }
        if start_offset == log_end || start_offset >= end_offset_exclusive {
            return Ok(Bytes::new());
        }
        let i = self.segment_index_for(start_offset);
        let seg = &self.segments[i];
        let path = segment_path(&self.dir, seg.base_offset, LOG_SUFFIX);
        if i + 1 == self.segments.len() {
            return segment::slice_batches(
                self.active.writer.map(),
                &self.active.index,
                seg.base_offset,
                seg.size_bytes,
                start_offset,
                bytes_max,
                end_offset_exclusive,
                &path,
            );
        }
        let loaded = self.load_closed(i)?;
        let Some(map) = &loaded.map else {
            return Ok(Bytes::new());
        };
        segment::slice_batches(
            map,
            &loaded.index,
            seg.base_offset,
            seg.size_bytes,
            start_offset,
            bytes_max,
            end_offset_exclusive,
            &path,
        )
    }

    fn lock_cache(&self) -> MutexGuard<'_, MapCache> {
        // A panic while holding the lock leaves the cache consistent (entries are
        // whole), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The map and indexes of closed segment `i`, mapping it if needed.
    fn load_closed(&self, i: usize) -> Result<Arc<Loaded>> {
        let seg = &self.segments[i];
        {
            let mut cache = self.lock_cache();
            cache.tick += 1;
            let tick = cache.tick;
            if let Some(e) = cache
                .entries
                .iter_mut()
                .find(|e| e.base_offset == seg.base_offset)
            {
                e.last_used = tick;
                return Ok(e.loaded.clone());
            }
        }
        let path = segment_path(&self.dir, seg.base_offset, LOG_SUFFIX);
        let map = if seg.size_bytes == 0 {
            None
        } else {
            let file =
                fs::File::open(&path).map_err(|e| StorageError::io("open segment", &path, e))?;
            Some(
                MapFile::read_only(&file, seg.size_bytes)
                    .map_err(|e| StorageError::io("map segment", &path, e))?,
            )
        };
        let index = SegmentIndex::load(
            &segment_path(&self.dir, seg.base_offset, INDEX_SUFFIX),
            &segment_path(&self.dir, seg.base_offset, TIME_INDEX_SUFFIX),
            seg.size_bytes,
        )
        .unwrap_or_else(|| {
            let mut index = SegmentIndex::new();
            if let Some(map) = &map {
                let view = map.view();
                segment::scan(
                    &view[..seg.size_bytes],
                    seg.base_offset,
                    0,
                    seg.base_offset,
                    false,
                    self.config.index_interval_bytes,
                    &mut index,
                    None,
                );
            }
            index
        });
        let loaded = Arc::new(Loaded { map, index });
        self.cache_insert(seg.base_offset, loaded.clone());
        Ok(loaded)
    }

    fn cache_insert(&self, base_offset: u64, loaded: Arc<Loaded>) {
        let mut cache = self.lock_cache();
        cache.tick += 1;
        let tick = cache.tick;
        cache.entries.retain(|e| e.base_offset != base_offset);
        cache.entries.push(CacheEntry {
            base_offset,
            loaded,
            last_used: tick,
        });
        while cache.entries.len() > self.config.open_maps_max {
            let oldest = cache
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .expect("non-empty");
            cache.entries.swap_remove(oldest);
        }
    }

    pub(crate) fn cache_remove(&mut self, base_offset: u64) {
        self.cache
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .retain(|e| e.base_offset != base_offset);
    }

    /// How many closed segments are currently mapped by the cache.
    pub fn open_maps(&self) -> usize {
        self.lock_cache().entries.len()
    }

    // ----- timestamps ------------------------------------------------------------

    /// The first record whose timestamp is >= `timestamp_ms`, as (offset, timestamp).
    /// Exact per record for uncompressed CreateTime batches; for compressed or
    /// LogAppendTime batches, the batch's base offset and max timestamp.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(u64, i64)>> {
        let Some(i) = self
            .segments
            .iter()
            .position(|s| s.max_timestamp_ms >= timestamp_ms && s.size_bytes > 0)
        else {
            return Ok(None);
        };
        self.find_by_timestamp(i, timestamp_ms, |h| h.max_timestamp() >= timestamp_ms)
    }

    /// The largest timestamp in the log and the offset of the first record carrying
    /// it (batch base offset for compressed batches); `None` for an empty log or one
    /// without timestamps.
    pub fn max_timestamp(&self) -> Result<Option<(i64, u64)>> {
        let Some((i, seg)) = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.size_bytes > 0 && s.max_timestamp_ms >= 0)
            .max_by_key(|(i, s)| (s.max_timestamp_ms, std::cmp::Reverse(*i)))
        else {
            return Ok(None);
        };
        let ts = seg.max_timestamp_ms;
        Ok(self
            .find_by_timestamp(i, ts, |h| h.max_timestamp() == ts)?
            .map(|(offset, t)| (t, offset)))
    }

    fn find_by_timestamp(
        &self,
        i: usize,
        timestamp_ms: i64,
        matches: impl Fn(&BatchView<'_>) -> bool,
    ) -> Result<Option<(u64, i64)>> {
        let seg = &self.segments[i];
        let path = segment_path(&self.dir, seg.base_offset, LOG_SUFFIX);
        let loaded;
        let (map, index) = if i + 1 == self.segments.len() {
            (self.active.writer.map(), &self.active.index)
        } else {
            loaded = self.load_closed(i)?;
            match &loaded.map {
                Some(m) => (m, &loaded.index),
                None => return Ok(None),
            }
        };
        let view = map.view();
        let data = &view[..seg.size_bytes];
        let mut pos = index.position_for_timestamp(timestamp_ms);
        while pos < data.len() {
            let h = segment::parse_stored(data, pos, &path)?;
            if matches(&h) {
                return Ok(Some(
                    batch::first_record_at_or_after(&h, timestamp_ms)
                        .unwrap_or((h.base_offset() as u64, h.max_timestamp())),
                ));
            }
            pos += h.size_bytes();
        }
        Ok(None)
    }

    // ----- truncation, reset, retention ------------------------------------------

    /// Removes every batch holding an offset >= `offset` (a batch straddling it goes
    /// whole, as in Kafka), returning the new log end offset. Handed-out `Bytes`
    /// stay valid: if any reader holds a slice of the active segment, the kept prefix
    /// is copied into a fresh file instead of being cut in place.
    pub fn truncate_suffix(&mut self, offset: u64) -> Result<u64> {
        let log_end = self.log_end_offset();
        if offset >= log_end {
            return Ok(log_end);
        }
        if offset < self.log_start_offset {
            return Err(self.out_of_range(offset));
        }
        let i = self.segment_index_for(offset);
        let base = self.segments[i].base_offset;
        let is_active = i + 1 == self.segments.len();
        let path = segment_path(&self.dir, base, LOG_SUFFIX);

        // Where the cut falls inside segment i.
        let loaded;
        let (source_map, source_index) = if is_active {
            (Some(self.active.writer.map().clone()), &self.active.index)
        } else {
            loaded = self.load_closed(i)?;
            (loaded.map.clone(), &loaded.index)
        };
        let (cut_pos, cut_offset) = match &source_map {
            None => (0, base),
            Some(map) => {
                let view = map.view();
                let data = &view[..self.segments[i].size_bytes];
                let rel = (offset - base) as u32;
                match segment::find_batch(data, source_index.position_for(rel), offset, &path)? {
                    Some((pos, header)) => (pos, header.base_offset() as u64),
                    None => (data.len(), self.segments[i].next_offset),
                }
            }
        };
        self.generation += 1;
        // The recovery point must not vouch for data we are about to cut.
        self.checkpoints
            .lower_recovery_point(&self.dir, cut_offset, self.generation)?;

        // Drop later segments (newest first) and their cache entries.
        while self.segments.len() > i + 1 {
            let later = self.segments.pop().expect("len > i + 1");
            self.cache_remove(later.base_offset);
            delete_files(&self.dir, later.base_offset)?;
            self.dir_changes += 1;
        }
        self.cache_remove(base);

        let capacity = self.config.segment_bytes as usize;
        let in_place = is_active && {
            let old_high = self.active.high_written;
            if self.active.writer.try_unpublish(cut_pos) {
                // No reader holds any slice of this map: zero the cut tail in place.
                let zero_to = old_high.max(cut_pos);
                self.active
                    .writer
                    .zero(cut_pos, zero_to)
                    .map_err(|e| StorageError::io("zero truncated tail", &path, e))?;
                self.active.high_written = cut_pos;
                self.active.needs_sync = true;
                true
            } else {
                false
            }
        };
        if !in_place {
            // Copy the kept prefix into a fresh file and swap it in: the old inode
            // stays mapped for whoever still reads it.
            let swap_path = segment_path(&self.dir, base, SWAP_SUFFIX);
            let map = source_map.clone();
            let view = map.as_ref().map(|m| m.view());
            let prefix: &[u8] = view.as_ref().map_or(&[], |v| &v[..cut_pos]);
            let writer = create_active(&swap_path, capacity.max(cut_pos), prefix, true)?;
            drop(view);
            fs::rename(&swap_path, &path)
                .map_err(|e| StorageError::io("rename segment", &path, e))?;
            atomic_file::sync_dir(&self.dir)?;
            let _ = fs::remove_file(segment_path(&self.dir, base, INDEX_SUFFIX));
            let _ = fs::remove_file(segment_path(&self.dir, base, TIME_INDEX_SUFFIX));
            self.active = new_active(writer, capacity.max(cut_pos), cut_pos);
            self.active.created_ms = now_ms();
        }

        // Rebuild the active segment's index and shape over the kept prefix.
        let mut index = SegmentIndex::new();
        let outcome = {
            let map = self.active.writer.map().clone();
            let view = map.view();
            segment::scan(
                &view[..cut_pos],
                base,
                0,
                base,
                false,
                self.config.index_interval_bytes,
                &mut index,
                None,
            )
        };
        self.active.index = index;
        self.active.last_batch_offset = outcome.last_batch_offset;
        let seg = &mut self.segments[i];
        seg.next_offset = outcome.next_offset;
        seg.size_bytes = cut_pos;
        seg.max_timestamp_ms = outcome.max_timestamp_ms;
        seg.flushed_bytes = seg.flushed_bytes.min(cut_pos);
        seg.unsynced = None;
        let new_end = seg.next_offset;
        self.flushed_offset = self.flushed_offset.min(new_end);
        if self.epochs.truncate_from(new_end) {
            self.save_epochs_now()?;
        }
        Ok(new_end)
    }

    /// Empties the log and restarts it at `start_offset` (a Raft follower too far
    /// behind the leader's log start). The leader-epoch file is cleared.
    pub fn reset_to(&mut self, start_offset: u64) -> Result<()> {
        self.generation += 1;
        let capacity = self.config.segment_bytes as usize;
        let swap_path = segment_path(&self.dir, start_offset, SWAP_SUFFIX);
        let writer = create_active(&swap_path, capacity, &[], false)?;
        // From here on the old content is gone logically: record that first, so an
        // interrupted reset recovers to the new start.
        self.checkpoints
            .reset(&self.dir, start_offset, self.generation)
            .inspect_err(|_| {
                let _ = fs::remove_file(&swap_path);
            })?;
        atomic_file::write_u64(&self.dir, LOG_START_FILE, LOG_START_KEY, start_offset)?;
        for seg in std::mem::take(&mut self.segments) {
            delete_files(&self.dir, seg.base_offset)?;
        }
        let path = segment_path(&self.dir, start_offset, LOG_SUFFIX);
        fs::rename(&swap_path, &path).map_err(|e| StorageError::io("rename segment", &path, e))?;
        atomic_file::sync_dir(&self.dir)?;
        self.cache
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clear();
        self.segments.push(empty_segment(start_offset));
        self.active = new_active(writer, capacity, 0);
        self.log_start_offset = start_offset;
        self.flushed_offset = start_offset;
        self.dir_changes_synced = self.dir_changes;
        if self.epochs.clear() {
            self.save_epochs_now()?;
        }
        Ok(())
    }

    /// Deletes whole closed segments, oldest first, while they are past
    /// `retention_ms` (their newest timestamp is older than `now_ms - retention_ms`)
    /// or the log without them is still at least `retention_bytes`; never the active
    /// segment, and only segments wholly below `deletable_below_offset` (pass the
    /// high watermark, so uncommitted data is never deleted). Advances the log start.
    pub fn apply_retention(
        &mut self,
        now_ms: i64,
        deletable_below_offset: u64,
    ) -> Result<RetentionOutcome> {
        let mut total = self.size_bytes();
        let mut delete = 0;
        let mut bytes_deleted = 0u64;
        for seg in &self.segments[..self.segments.len() - 1] {
            if seg.next_offset > deletable_below_offset {
                break;
            }
            let expired = self.config.retention_ms.is_some_and(|ms| {
                seg.max_timestamp_ms >= 0 && seg.max_timestamp_ms < now_ms.saturating_sub(ms)
            });
            let oversize = self
                .config
                .retention_bytes
                .is_some_and(|limit| total - seg.size_bytes as u64 >= limit);
            if !(expired || oversize) {
                break;
            }
            total -= seg.size_bytes as u64;
            bytes_deleted += seg.size_bytes as u64;
            delete += 1;
        }
        if delete == 0 {
            return Ok(RetentionOutcome {
                log_start_offset: self.log_start_offset,
                ..RetentionOutcome::default()
            });
        }
        self.delete_oldest_segments(delete, bytes_deleted)
    }

    /// Deletes the closed segments that lie wholly below `offset` (never the active
    /// segment) and advances the log start to the first one kept: what a log whose
    /// prefix below `offset` is no longer needed (a metadata log below a checkpoint)
    /// does. Offsets in the segment holding `offset` stay, so the log start ends at or
    /// below `offset`.
    pub fn delete_segments_below(&mut self, offset: u64) -> Result<RetentionOutcome> {
        let mut delete = 0;
        let mut bytes_deleted = 0u64;
        for seg in &self.segments[..self.segments.len() - 1] {
            if seg.next_offset > offset {
                break;
            }
            bytes_deleted += seg.size_bytes as u64;
            delete += 1;
        }
        if delete == 0 {
            return Ok(RetentionOutcome {
                log_start_offset: self.log_start_offset,
                ..RetentionOutcome::default()
            });
        }
        self.delete_oldest_segments(delete, bytes_deleted)
    }

    /// Deletes the `delete` oldest segments (closed ones; `bytes_deleted` is their size)
    /// and advances the log start to the next segment's base offset.
    fn delete_oldest_segments(
        &mut self,
        delete: usize,
        bytes_deleted: u64,
    ) -> Result<RetentionOutcome> {
        let new_start = self.segments[delete].base_offset;
        // Record the new start before deleting, so a crash in between recovers to it.
        atomic_file::write_u64(&self.dir, LOG_START_FILE, LOG_START_KEY, new_start)?;
        self.log_start_offset = new_start;
        for seg in self.segments.drain(..delete).collect::<Vec<_>>() {
            self.cache_remove(seg.base_offset);
            delete_files(&self.dir, seg.base_offset)?;
        }
        self.dir_changes += 1;
        if self.epochs.truncate_prefix(new_start) {
            self.save_epochs_now()?;
        }
        Ok(RetentionOutcome {
            segments_deleted: delete,
            bytes_deleted,
            log_start_offset: new_start,
        })
    }

    // ----- durability ------------------------------------------------------------

    /// Makes everything appended so far durable; returns the flushed offset.
    pub fn flush(&mut self) -> Result<u64> {
        let job = self.prepare_flush();
        let done = job.run()?;
        self.complete_flush(done);
        Ok(self.flushed_offset)
    }

    /// First half of a flush, cheap, under the caller's lock: collects what must be
    /// synced. Run the returned job outside the lock, then pass its result to
    /// [`complete_flush`](Self::complete_flush).
    pub fn prepare_flush(&self) -> FlushJob {
        let epochs = self.unsaved_epochs();
        let mut ranges = Vec::new();
        let mut closed_synced = Vec::new();
        let mut closed = Vec::new();
        let n = self.segments.len();
        let active_seg = &self.segments[n - 1];
        if active_seg.flushed_bytes < active_seg.size_bytes || self.active.needs_sync {
            ranges.push(FlushRange {
                file: self.active.writer.file().clone(),
                path: segment_path(&self.dir, active_seg.base_offset, LOG_SUFFIX),
            });
        }
        for seg in self.segments[..n - 1].iter().rev() {
            let Some(unsynced) = &seg.unsynced else { break };
            ranges.push(FlushRange {
                file: unsynced.file.clone(),
                path: segment_path(&self.dir, seg.base_offset, LOG_SUFFIX),
            });
            closed.push(ClosedWork {
                base_offset: seg.base_offset,
                file: unsynced.file.clone(),
                path: segment_path(&self.dir, seg.base_offset, LOG_SUFFIX),
                size_bytes: unsynced.size_bytes,
                index_files: unsynced.index_files.clone(),
            });
            closed_synced.push(seg.base_offset);
        }
        FlushJob {
            ranges,
            closed,
            dir: self.dir.clone(),
            sync_dir: self.dir_changes > self.dir_changes_synced,
            checkpoints: self.checkpoints.clone(),
            epochs,
            outcome: self.flushed_to_end(self.active.needs_sync, closed_synced),
        }
    }

    /// The active segment's bytes not yet durable, as a write for the data directory's
    /// journal (`data_dir` is the root its path is named from), when they are all
    /// this log needs to be durable: no closed segment, index file, directory entry
    /// or zeroed tail waits for a sync. `None` when there is nothing to write or
    /// something else must be synced in place ([`prepare_flush`](Self::prepare_flush)).
    pub fn journal_write(&self, data_dir: &Path) -> Option<JournalWrite> {
        let n = self.segments.len();
        let active_seg = &self.segments[n - 1];
        let closed_unsynced = self.segments[..n - 1]
            .last()
            .is_some_and(|s| s.unsynced.is_some());
        if active_seg.flushed_bytes >= active_seg.size_bytes
            || self.active.needs_sync
            || closed_unsynced
            || self.dir_changes > self.dir_changes_synced
            || self.active.writer.map().published() < active_seg.size_bytes
        {
            return None;
        }
        let path = segment_path(&self.dir, active_seg.base_offset, LOG_SUFFIX);
        let relative_path = path.strip_prefix(data_dir).ok()?.to_str()?.to_string();
        Some(JournalWrite {
            file: self.active.writer.file().clone(),
            relative_path,
            position: active_seg.flushed_bytes as u64,
            data: self
                .active
                .writer
                .map()
                .bytes(active_seg.flushed_bytes, active_seg.size_bytes),
            outcome: self.flushed_to_end(false, Vec::new()),
        })
    }

    /// What a sync of everything written so far makes durable.
    fn flushed_to_end(&self, active_needed_sync: bool, closed_synced: Vec<u64>) -> FlushedTo {
        let active_seg = self.active_segment();
        FlushedTo {
            offset: self.log_end_offset(),
            generation: self.generation,
            dir_changes: self.dir_changes,
            active_base_offset: active_seg.base_offset,
            active_position: active_seg.size_bytes,
            active_needed_sync,
            closed_synced,
        }
    }

    /// Records that a [`JournalWrite`] is durable in journal epoch `epoch` (like
    /// [`complete_flush`](Self::complete_flush), and ignored the same way after a
    /// truncation or reset).
    pub fn complete_journaled(&mut self, done: FlushedTo, epoch: u64) {
        if done.generation != self.generation {
            return;
        }
        self.journal_epoch = Some(epoch);
        self.complete_flush(done);
    }

    /// The journal epoch holding this log's latest journalled bytes, if any: before a
    /// truncation, reset or deletion, the journal must checkpoint it
    /// ([`Journal::checkpoint_epoch`](crate::Journal::checkpoint_epoch)) and then
    /// [`clear_journal_epoch`](Self::clear_journal_epoch) be called.
    pub fn journal_epoch(&self) -> Option<u64> {
        self.journal_epoch
    }

    /// The journal checkpointed this log's epoch: its bytes are durable in place.
    pub fn clear_journal_epoch(&mut self) {
        self.journal_epoch = None;
    }

    /// Second half of a flush: records what the job made durable. Ignored if a
    /// truncation or reset happened since [`prepare_flush`](Self::prepare_flush).
    pub fn complete_flush(&mut self, done: FlushedTo) {
        if done.generation != self.generation {
            return;
        }
        self.flushed_offset = self.flushed_offset.max(done.offset);
        self.dir_changes_synced = self.dir_changes_synced.max(done.dir_changes);
        let n = self.segments.len();
        for seg in &mut self.segments[..n - 1] {
            if done.closed_synced.contains(&seg.base_offset) {
                seg.flushed_bytes = seg.size_bytes;
                seg.unsynced = None;
            }
        }
        // The segment that was active at prepare time (maybe closed since).
        if let Some(seg) = self
            .segments
            .iter_mut()
            .find(|s| s.base_offset == done.active_base_offset)
        {
            seg.flushed_bytes = seg.flushed_bytes.max(done.active_position);
        }
        let active_base = self.active_segment().base_offset;
        if active_base == done.active_base_offset && done.active_needed_sync {
            self.active.needs_sync = false;
        }
    }

    /// A [`DeferredSync`] that only writes files into this log's directory (add them
    /// with [`DeferredSync::write_file`]): small files no acknowledgement needs,
    /// written off the caller's path and never after [`seal`](Self::seal).
    pub fn deferred_writes(&self) -> DeferredSync {
        DeferredSync::files_only(self.dir.clone(), self.checkpoints.clone())
    }

    /// The partition is being deleted (its directory may be removed and a new one
    /// created under its name): no [`DeferredSync`] of this log writes a file from
    /// now on. Waits for one that is writing.
    pub fn seal(&self) {
        self.checkpoints.seal();
    }

    /// Flushes, records the log end as the recovery point, and closes the log.
    pub fn close(mut self) -> Result<()> {
        self.flush()?;
        let epochs = self.unsaved_epochs();
        self.checkpoints.write_recovery_point(
            &self.dir,
            self.log_end_offset(),
            self.generation,
            epochs.as_ref(),
        )
    }

    /// The epoch cache, if the epoch file does not hold its current version.
    fn unsaved_epochs(&self) -> Option<UnsavedEpochs> {
        (self.epochs_version > self.checkpoints.epochs_version()).then(|| UnsavedEpochs {
            cache: self.epochs.clone(),
            version: self.epochs_version,
        })
    }

    /// Writes the epoch cache to its file now, after a change that removed entries (a
    /// stale file could name epochs the log no longer holds).
    fn save_epochs_now(&mut self) -> Result<()> {
        self.epochs_version += 1;
        let epochs = UnsavedEpochs {
            cache: self.epochs.clone(),
            version: self.epochs_version,
        };
        self.checkpoints.save_epochs(&self.dir, &epochs)
    }
}

/// Writes leader batches with baseOffset (from `base_offset` on) and
/// partitionLeaderEpoch stamped: each batch goes out as its stamped first 16 bytes
/// (from a stack buffer) plus the rest of the caller's bytes, so the data is copied
/// exactly once, by the kernel, and nothing is allocated.
fn write_stamped(
    writer: &mut MapWriter,
    pos: usize,
    input: &[u8],
    base_offset: u64,
    leader_epoch: i32,
) -> std::io::Result<()> {
    const GROUP_BATCHES: usize = 64;
    const STAMPED_BYTES: usize = batch::LEADER_EPOCH_POS + 4;
    let mut stamps = [[0u8; STAMPED_BYTES]; GROUP_BATCHES];
    let mut p = 0;
    let mut offset = base_offset;
    while p < input.len() {
        // Fill the stamps of up to GROUP_BATCHES batches, then write them in one call.
        let group_start = p;
        let mut ends = [0usize; GROUP_BATCHES];
        let mut n = 0;
        while p < input.len() && n < GROUP_BATCHES {
            let h = batch::parse(&input[p..]).expect("validated by the caller");
            stamps[n].copy_from_slice(&input[p..p + STAMPED_BYTES]);
            batch::stamp(&mut stamps[n], offset, leader_epoch)
                .expect("a stamp buffer holds the 16 stamped bytes");
            offset += u64::from(h.last_offset_delta() as u32) + 1;
            p += h.size_bytes();
            ends[n] = p;
            n += 1;
        }
        let mut iov = [IoSlice::new(&[]); 2 * GROUP_BATCHES];
        let mut start = group_start;
        for k in 0..n {
            iov[2 * k] = IoSlice::new(&stamps[k]);
            iov[2 * k + 1] = IoSlice::new(&input[start + STAMPED_BYTES..ends[k]]);
            start = ends[k];
        }
        writer.write_at(pos + group_start, &mut iov[..2 * n])?;
    }
    Ok(())
}

fn empty_segment(base_offset: u64) -> Segment {
    Segment {
        base_offset,
        next_offset: base_offset,
        size_bytes: 0,
        max_timestamp_ms: -1,
        flushed_bytes: 0,
        unsynced: None,
    }
}

fn new_active(writer: MapWriter, capacity: usize, size_bytes: usize) -> Active {
    Active {
        writer,
        capacity,
        index: SegmentIndex::new(),
        high_written: size_bytes,
        needs_sync: false,
        created_ms: now_ms(),
        last_batch_offset: None,
    }
}

/// Whether `e` is a write that failed for lack of space.
fn is_no_space(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { source, .. } if source.raw_os_error() == Some(28 /* ENOSPC */))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send_static<T: Send + 'static>() {}

    #[test]
    fn log_is_shareable_and_flush_jobs_are_detachable() {
        assert_send_sync::<PartitionLog>();
        assert_send_static::<FlushJob>();
        assert_send_static::<FlushedTo>();
    }
}
