//! # Layout
//!
//! `rill-storage` keeps one partition replica as a segmented, append-only log of
//! Kafka RecordBatch v2 bytes in memory-mapped files. It knows nothing of networks
//! or Raft.
//!
//! | module | what it holds |
//! |---|---|
//! | [`log`](crate::PartitionLog) | [`PartitionLog`]: open/recovery, append, read, roll, truncation, reset, retention, timestamps, leader epochs |
//! | `journal` | [`Journal`]: one data directory's shared journal, so one fdatasync makes many partitions' new bytes durable (group commit across partitions); replayed before logs open |
//! | `clean` | log compaction: [`CleanJob`] (key → last offset map, rewrite, `.log.cleaned` → `.log.swapped` → `.log` swap with crash recovery), [`CleanStats`] for choosing a log |
//! | `flush` | [`FlushJob`]/[`FlushedTo`]: durability split so the fsync runs outside the caller's lock |
//! | `segment` | one segment: file naming and creation, batch scanners for recovery, reads and index rebuilds |
//! | `index` | sparse `.index` (relative offset u32 → position u32) and `.timeindex` (timestamp i64 → relative offset u32) |
//! | `epoch` | the leader-epoch file (epoch → first offset) |
//! | [`atomic_file`] | Rill's small files (checkpoints here; topic/cluster metadata in the broker): one CRC'd format, replaced atomically (temp, fsync, rename, fsync dir) |
//! | [`batch`] | storage's rules over `rill-record`'s RecordBatch v2 layout (non-negative offsets, CRC32C on append and recovery), stamping, a small encoder |
//! | `mmap` | the only `unsafe`: mappings whose published prefix may be handed out as zero-copy `Bytes`; `pwritev`, `fallocate` |
//! | [`config`](LogConfig) | [`LogConfig`]: every bound with its default, validated by key |
//! | [`error`](StorageError) | [`StorageError`], one variant per cause |
//!
//! ## On disk
//!
//! One directory per partition replica. Segments are named by their base offset in
//! 20 digits: `00000000000000000000.log`, `.index`, `.timeindex`. The active segment
//! is mapped shared over its whole `segment_bytes`, but its file is allocated with
//! `fallocate` in growing steps (64 KiB first, doubling up to 16 MiB a step) just
//! before appends reach them, so an idle partition costs about 64 KiB of disk and a
//! full disk fails an append, never a page fault; an append validates the batches
//! and copies them once, with one `pwritev` whose iovecs swap in the leader's
//! stamped headers, into the allocated space, whose page-cache pages the map shows.
//! (Stores into a fresh mapping would first fault and zero-fill every page: 2-6x
//! slower appends, measured.) Closed segments are trimmed to their used length and
//! mapped read-only on demand, at most `open_maps_max` at a time. Reads hand out
//! zero-copy `Bytes` slices of the maps.
//! Next to them: `recovery-point-offset-checkpoint`, `log-start-offset-checkpoint`
//! and `leader-epoch-checkpoint`, each in the [`atomic_file`] format (CRC'd header line).
//! A new log writes none of them (absent means the log's own start); the epoch file
//! is brought up to date only before the recovery point passes a new epoch, since
//! recovery rebuilds later epochs from the batches it scans.
//!
//! ## Using it
//!
//! ```
//! use rill_storage::{batch, LogConfig, PartitionLog};
//! # let dir = tempfile::tempdir().unwrap();
//! let mut log = PartitionLog::open(dir.path(), LogConfig::default())?;
//! let mut produced = Vec::new();
//! let record = batch::RecordSpec { timestamp_ms: 1_700_000_000_000, key: None, value: Some(b"hi") };
//! batch::encode_uncompressed(&mut produced, 0, -1, &[record]);
//! let info = log.append_as_leader(&produced, 1)?; // validates, copies once, stamps offset and epoch
//! assert_eq!((info.base_offset, log.log_end_offset()), (0, 1));
//! log.flush()?; // or prepare_flush() / FlushJob::run() / complete_flush() outside a lock
//! let high_watermark = log.log_end_offset();
//! let bytes = log.read(0, 1 << 20, high_watermark)?; // zero-copy slice of the map
//! assert_eq!(bytes.len(), produced.len());
//! assert_eq!(log.term_at(0), Some(1));
//! log.close()?;
//! # Ok::<(), rill_storage::StorageError>(())
//! ```
//!
//! ## Guarantees
//!
//! * Every failure is a [`StorageError`]; a failed append or roll leaves the log
//!   unchanged. After an error from `truncate_suffix`, `reset_to` or
//!   `apply_retention` (a file system failure half way), drop the log and reopen it:
//!   recovery brings files and checkpoints back to a consistent state.
//! * Nothing below [`PartitionLog::flushed_offset`] is lost by a crash; recovery keeps
//!   every whole valid batch and cuts at the first torn or corrupt one.
//! * `Bytes` from [`PartitionLog::read`] stay valid and unchanged after later appends,
//!   truncations (a segment with live readers is rewritten into a new file rather
//!   than cut in place), resets, retention and close.
//! * Writes take `&mut self`, reads `&self`; wrap the log in a mutex to share it.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod atomic_file;
pub mod batch;
mod clean;
mod config;
mod epoch;
mod error;
mod flush;
mod index;
mod journal;
mod log;
mod mmap;
mod segment;

pub use clean::{
    remove_deleted_files, CleanJob, CleanOptions, CleanOutcome, CleanStats, CleanedSegments,
    SwapStep, CLEANER_CHECKPOINT_FILE, DEDUPE_BUFFER_BYTES_DEFAULT,
};
pub use config::{
    LogConfig, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SEGMENT_GROWTH_STEP_BYTES_MAX,
    SEGMENT_GROWTH_STEP_BYTES_MIN,
};
pub use epoch::EpochEntry;
pub use error::{Result, StorageError};
pub use flush::{DeferredSync, FlushJob, FlushedTo};
pub use journal::{Journal, JournalWrite, ReplayStats, JOURNAL_CAPACITY_BYTES_MIN};
pub use log::{AppendInfo, PartitionLog, RetentionOutcome, LOG_START_FILE, RECOVERY_POINT_FILE};
