//! Split flushes: [`PartitionLog::prepare_flush`](crate::PartitionLog::prepare_flush)
//! under the caller's lock, [`FlushJob::run`] (the slow msync/fdatasync) outside
//! it, [`PartitionLog::complete_flush`](crate::PartitionLog::complete_flush) under
//! the lock again. This lets a broker group-commit many appends per fsync without
//! blocking appends and reads during the sync.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::atomic_file;
use crate::epoch::EpochCache;
use crate::error::{Result, StorageError};
use crate::log::{RECOVERY_POINT_FILE, RECOVERY_POINT_KEY};

/// The recovery-point checkpoint as last written, shared between the log and its
/// flush jobs, with the generation (bumped by truncation and reset) that guards
/// against a late job writing a checkpoint past a truncation; and which version of the
/// leader-epoch cache the `leader-epoch-checkpoint` file holds.
///
/// The epoch file is written by flushes: an append that starts a new epoch changes
/// only the in-memory cache, and the next flush job writes the file (in the sync
/// threads, in parallel with other partitions' syncs) before it can move the
/// recovery point; a truncation writes it at once. That suffices because recovery
/// trusts the file only for the segments below the recovery point and rebuilds every
/// later entry from the batches it scans, and it keeps a new leader's first append
/// (every partition at once after a failover, or the fifty of a new
/// `__consumer_offsets`) free of a file write and three fsyncs on the persist
/// thread, one partition after another.
#[derive(Debug)]
pub(crate) struct SharedCheckpoints {
    state: Mutex<CheckpointState>,
}

#[derive(Debug)]
struct CheckpointState {
    generation: u64,
    recovery_point: u64,
    /// The version of the epoch cache (see `PartitionLog`'s `epochs_version`) that the
    /// epoch file holds.
    epochs_version: u64,
    /// Base offsets of closed segments whose index files a [`DeferredSync`] has yet to
    /// sync (one entry per segment per job; a handful at most). The recovery point
    /// stays at or below the lowest of them, so recovery scans such a segment and
    /// rebuilds its indexes instead of trusting files that may not be on the disk.
    index_syncs_pending: Vec<u64>,
    /// The partition was closed for deletion: deferred work writes no file into its
    /// directory any more (a new partition of the same name may be created there).
    sealed: bool,
}

/// An epoch cache not yet in the epoch file, with its version.
#[derive(Debug, Clone)]
pub(crate) struct UnsavedEpochs {
    pub(crate) cache: EpochCache,
    pub(crate) version: u64,
}

impl CheckpointState {
    /// The highest recovery point that vouches for no segment whose indexes a
    /// deferred sync still has to make durable.
    fn capped(&self, offset: u64) -> u64 {
        self.index_syncs_pending
            .iter()
            .fold(offset, |cap, &base| cap.min(base))
    }

    /// Writes `epochs` to the epoch file unless it already holds that version or a
    /// newer one (a late job must not overwrite what a truncation wrote since).
    fn save_epochs(&mut self, dir: &Path, epochs: Option<&UnsavedEpochs>) -> Result<()> {
        match epochs {
            Some(e) if e.version > self.epochs_version => {
                e.cache.save(dir)?;
                self.epochs_version = e.version;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl SharedCheckpoints {
    pub(crate) fn new(recovery_point: u64) -> SharedCheckpoints {
        SharedCheckpoints {
            state: Mutex::new(CheckpointState {
                generation: 0,
                recovery_point,
                epochs_version: 0,
                index_syncs_pending: Vec::new(),
                sealed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CheckpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The version of the epoch cache the epoch file holds.
    pub(crate) fn epochs_version(&self) -> u64 {
        self.lock().epochs_version
    }

    /// Writes the epoch file now (truncation, reset, retention: the cache shrank).
    pub(crate) fn save_epochs(&self, dir: &Path, epochs: &UnsavedEpochs) -> Result<()> {
        self.lock().save_epochs(dir, Some(epochs))
    }

    /// Truncation: from now on only jobs of `generation` may advance the checkpoint,
    /// and it is lowered (durably) to `offset` if it was above.
    pub(crate) fn lower_recovery_point(
        &self,
        dir: &Path,
        offset: u64,
        generation: u64,
    ) -> Result<()> {
        let mut state = self.lock();
        state.generation = generation;
        if state.recovery_point > offset {
            atomic_file::write_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, offset)?;
            state.recovery_point = offset;
        }
        Ok(())
    }

    /// Reset: the checkpoint moves to the new start offset.
    pub(crate) fn reset(&self, dir: &Path, start_offset: u64, generation: u64) -> Result<()> {
        let mut state = self.lock();
        state.generation = generation;
        atomic_file::write_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, start_offset)?;
        state.recovery_point = start_offset;
        Ok(())
    }

    /// Writes `offset` (and first `epochs`, if not saved yet) if no truncation
    /// happened since `generation`.
    pub(crate) fn write_recovery_point(
        &self,
        dir: &Path,
        offset: u64,
        generation: u64,
        epochs: Option<&UnsavedEpochs>,
    ) -> Result<()> {
        let mut state = self.lock();
        let offset = state.capped(offset);
        if state.generation == generation {
            state.save_epochs(dir, epochs)?;
            atomic_file::write_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, offset)?;
            state.recovery_point = offset;
        }
        Ok(())
    }

    /// After a flush: advance the checkpoint to `offset` only if it still points into
    /// an older segment than `active_base_offset` (so it is written about once per
    /// roll, not once per flush; recovery always scans the active segment anyway).
    /// The epochs must be in their file by then: below the recovery point, recovery
    /// reads them from it.
    fn advance(
        &self,
        dir: &Path,
        offset: u64,
        active_base_offset: u64,
        generation: u64,
        epochs: Option<&UnsavedEpochs>,
    ) -> Result<()> {
        let mut state = self.lock();
        let offset = state.capped(offset);
        if state.generation == generation
            && state.recovery_point < active_base_offset
            && offset > state.recovery_point
        {
            state.save_epochs(dir, epochs)?;
            atomic_file::write_u64(dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, offset)?;
            state.recovery_point = offset;
        }
        Ok(())
    }

    /// The partition is being deleted: no deferred work writes into its directory
    /// from now on (waits for a write in progress).
    pub(crate) fn seal(&self) {
        self.lock().sealed = true;
    }

    /// Writes `epochs` to the epoch file unless it holds that version already.
    fn save_epochs_if_newer(&self, dir: &Path, epochs: Option<&UnsavedEpochs>) -> Result<()> {
        self.lock().save_epochs(dir, epochs)
    }
}

/// One segment file to make durable (fdatasync: only its dirty pages are written).
#[derive(Debug)]
pub(crate) struct FlushRange {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
}

/// A closed segment's housekeeping that no acknowledgement needs: trimming the file
/// to its used length and syncing its freshly written index files.
#[derive(Debug)]
pub(crate) struct ClosedWork {
    pub(crate) base_offset: u64,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// Used bytes: the file is trimmed to this.
    pub(crate) size_bytes: u64,
    pub(crate) index_files: Vec<Arc<File>>,
}

impl ClosedWork {
    /// Trims the (preallocated) file to its used length. Safe for readers: every
    /// handed-out slice of the segment lies below `size_bytes` (a truncation with live
    /// readers rewrites a closed segment into a new file instead of lowering this
    /// one's end). Not needed for durability (recovery stops at the zeros of an
    /// untrimmed tail), so a failure is only logged.
    fn trim(&self) {
        if let Err(e) = self.file.set_len(self.size_bytes) {
            tracing::warn!(file = %self.path.display(), error = %e, "could not trim closed segment");
        }
    }

    fn sync_indexes(&self, dir: &Path) -> Result<()> {
        for f in &self.index_files {
            f.sync_data()
                .map_err(|e| StorageError::io("fdatasync index", dir, e))?;
        }
        Ok(())
    }
}

/// What a flush left for later because no acknowledgement waits for it (see
/// [`FlushJob::run_deferring`]): the trim and index syncs of segments closed by a roll,
/// then the recovery-point checkpoint (and the epoch file before it), and any small
/// files the caller adds ([`DeferredSync::write_file`], e.g. a producer-state
/// snapshot). `Send + 'static`; run it on any thread, after the flush it came from.
///
/// Why deferring is safe after a power loss: the segments' data and the directory
/// entries were synced by the flush; until this job has synced a closed segment's
/// indexes, the recovery point is kept at or below that segment's base offset (so
/// recovery scans it and rebuilds its indexes); a recovery point that was not
/// written only means a longer scan; a producer snapshot that was not written is
/// replaced by an older one and the log after it (or a scan of the whole log).
#[derive(Debug)]
#[must_use = "deferred work does nothing until run"]
pub struct DeferredSync {
    dir: PathBuf,
    checkpoints: Arc<SharedCheckpoints>,
    closed: Vec<ClosedWork>,
    /// The recovery point to advance to once the indexes are durable (as
    /// [`FlushJob::run`] does inline), if the flush it came from may move it.
    advance: Option<(FlushedTo, Option<UnsavedEpochs>)>,
    files: Vec<(String, Vec<u8>)>,
}

impl DeferredSync {
    /// A deferred job that only writes files (see [`DeferredSync::write_file`]).
    pub(crate) fn files_only(dir: PathBuf, checkpoints: Arc<SharedCheckpoints>) -> DeferredSync {
        DeferredSync {
            dir,
            checkpoints,
            closed: Vec::new(),
            advance: None,
            files: Vec::new(),
        }
    }

    /// Adds a small file of the log's directory to replace atomically (write, fsync,
    /// rename, directory fsync) when the job runs, unless the partition was closed
    /// for deletion by then.
    pub fn write_file(&mut self, name: &str, body: Vec<u8>) {
        self.files.push((name.to_string(), body));
    }

    /// How many closed segments' trims and index syncs this job carries.
    pub fn closed_segments(&self) -> usize {
        self.closed.len()
    }

    /// Runs the deferred work: trims and index syncs, then (unless the partition was
    /// closed meanwhile) the files and the recovery point. A failed index sync keeps
    /// the recovery point below that segment for good (its indexes are rebuilt at the
    /// next start) and is returned.
    pub fn run(self) -> Result<()> {
        for c in &self.closed {
            c.trim();
        }
        let mut synced = Ok(());
        for c in &self.closed {
            synced = c.sync_indexes(&self.dir);
            if synced.is_err() {
                break;
            }
        }
        synced?;
        let mut state = self.checkpoints.lock();
        for c in &self.closed {
            if let Some(i) = state
                .index_syncs_pending
                .iter()
                .position(|&b| b == c.base_offset)
            {
                state.index_syncs_pending.swap_remove(i);
            }
        }
        if state.sealed {
            return Ok(());
        }
        for (name, body) in &self.files {
            atomic_file::write(&self.dir.join(name), body)?;
        }
        if let Some((to, epochs)) = &self.advance {
            let offset = state.capped(to.offset);
            if state.generation == to.generation
                && state.recovery_point < to.active_base_offset
                && offset > state.recovery_point
            {
                state.save_epochs(&self.dir, epochs.as_ref())?;
                atomic_file::write_u64(&self.dir, RECOVERY_POINT_FILE, RECOVERY_POINT_KEY, offset)?;
                state.recovery_point = offset;
            }
        }
        Ok(())
    }
}

/// The slow half of a flush, detached from the log: `Send + 'static`, it holds its
/// own references to the maps and files, so it can run on any thread without the
/// log's lock. Created by [`PartitionLog::prepare_flush`](crate::PartitionLog::prepare_flush).
#[derive(Debug)]
#[must_use = "a flush job does nothing until run"]
pub struct FlushJob {
    pub(crate) ranges: Vec<FlushRange>,
    /// Closed segments this flush syncs whole: their trims and index syncs.
    pub(crate) closed: Vec<ClosedWork>,
    pub(crate) dir: PathBuf,
    pub(crate) sync_dir: bool,
    pub(crate) checkpoints: Arc<SharedCheckpoints>,
    /// The epoch cache, when the epoch file lags it (written before the recovery point
    /// moves).
    pub(crate) epochs: Option<UnsavedEpochs>,
    /// What the log may record once the syncs above succeeded; returned by `run`.
    pub(crate) outcome: FlushedTo,
}

/// What a finished [`FlushJob`] made durable; hand it to
/// [`PartitionLog::complete_flush`](crate::PartitionLog::complete_flush).
#[derive(Debug, Clone)]
pub struct FlushedTo {
    /// Every offset below this is durable.
    pub(crate) offset: u64,
    /// The log's truncation/reset generation at prepare time (a mismatch voids it).
    pub(crate) generation: u64,
    /// Directory changes (segment creations/deletions) covered by the directory sync.
    pub(crate) dir_changes: u64,
    /// Base offset of the segment that was active at prepare time.
    pub(crate) active_base_offset: u64,
    /// Bytes of that segment made durable.
    pub(crate) active_position: usize,
    /// Whether that segment had a truncated tail zeroed that this flush makes durable.
    pub(crate) active_needed_sync: bool,
    /// Base offsets of closed segments synced whole.
    pub(crate) closed_synced: Vec<u64>,
}

impl FlushedTo {
    /// Every offset below this is durable (unless a truncation intervened, in which
    /// case `complete_flush` ignores it).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl FlushJob {
    /// The offset everything below which will be durable once the job has run.
    pub fn target_offset(&self) -> u64 {
        self.outcome.offset
    }

    /// Syncs: the epoch file if the cache changed, fdatasync of segments with
    /// unflushed data and of new index files, fsync of the directory if segments were
    /// created or deleted, and (about once per segment) the recovery-point checkpoint.
    pub fn run(self) -> Result<FlushedTo> {
        self.sync_for_ack()?;
        for c in &self.closed {
            c.trim();
            c.sync_indexes(&self.dir)?;
        }
        self.checkpoints.advance(
            &self.dir,
            self.outcome.offset,
            self.outcome.active_base_offset,
            self.outcome.generation,
            self.epochs.as_ref(),
        )?;
        Ok(self.outcome)
    }

    /// Like [`run`](Self::run), but does here only what makes the flushed records
    /// durable: the segments' data and the directory entries of new segments (and the
    /// epoch file, when a new leader epoch began). The rest (closed segments' trims
    /// and index syncs, the recovery-point checkpoint) comes back as a
    /// [`DeferredSync`] to run later, off the acknowledgement path. After a roll this
    /// takes the round from ten fsync calls to four (storage/PERF-NOTES.md).
    pub fn run_deferring(self) -> Result<(FlushedTo, Option<DeferredSync>)> {
        {
            // Before any sync: no other flush may advance the recovery point past
            // these segments until their indexes are durable.
            let mut state = self.checkpoints.lock();
            state
                .index_syncs_pending
                .extend(self.closed.iter().map(|c| c.base_offset));
        }
        // On failure the pending entries stay: the recovery point cannot pass them
        // (and the directory goes offline anyway).
        self.sync_for_ack()?;
        let FlushJob {
            closed,
            dir,
            checkpoints,
            epochs,
            outcome,
            ..
        } = self;
        // Without closed segments, a job only to move the recovery point (rare: after
        // a checkpoint write failed, say); not while a deferred job is pending, which
        // moves it when it runs.
        let advance_due = {
            let state = checkpoints.lock();
            state.recovery_point < outcome.active_base_offset
                && state.index_syncs_pending.is_empty()
        };
        if closed.is_empty() && !advance_due {
            return Ok((outcome, None));
        }
        let job = DeferredSync {
            dir,
            checkpoints,
            closed,
            advance: Some((outcome.clone(), epochs)),
            files: Vec::new(),
        };
        Ok((outcome, Some(job)))
    }

    /// The epoch file if the cache changed, fdatasync of the segments with unflushed
    /// data, fsync of the directory if segments were created or deleted.
    fn sync_for_ack(&self) -> Result<()> {
        // The epoch file first, so a clean stop leaves it current (and a restart on a
        // full disk has nothing to rewrite).
        self.checkpoints
            .save_epochs_if_newer(&self.dir, self.epochs.as_ref())?;
        for r in &self.ranges {
            r.file
                .sync_data()
                .map_err(|e| StorageError::io("fdatasync segment", &r.path, e))?;
        }
        if self.sync_dir {
            atomic_file::sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
