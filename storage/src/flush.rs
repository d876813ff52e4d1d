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
}

/// An epoch cache not yet in the epoch file, with its version.
#[derive(Debug, Clone)]
pub(crate) struct UnsavedEpochs {
    pub(crate) cache: EpochCache,
    pub(crate) version: u64,
}

impl CheckpointState {
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

/// The slow half of a flush, detached from the log: `Send + 'static`, it holds its
/// own references to the maps and files, so it can run on any thread without the
/// log's lock. Created by [`PartitionLog::prepare_flush`](crate::PartitionLog::prepare_flush).
#[derive(Debug)]
#[must_use = "a flush job does nothing until run"]
pub struct FlushJob {
    pub(crate) ranges: Vec<FlushRange>,
    pub(crate) index_files: Vec<Arc<File>>,
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
        // The epoch file first, so a clean stop leaves it current (and a restart on a
        // full disk has nothing to rewrite).
        self.checkpoints
            .save_epochs_if_newer(&self.dir, self.epochs.as_ref())?;
        for r in &self.ranges {
            r.file
                .sync_data()
                .map_err(|e| StorageError::io("fdatasync segment", &r.path, e))?;
        }
        for f in &self.index_files {
            f.sync_data()
                .map_err(|e| StorageError::io("fdatasync index", &self.dir, e))?;
        }
        if self.sync_dir {
            atomic_file::sync_dir(&self.dir)?;
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
}
