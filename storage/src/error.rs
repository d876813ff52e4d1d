//! The crate's one error type: every operating failure of the storage engine is a
//! value of [`StorageError`], never a panic.

use std::io;
use std::path::PathBuf;

/// Shorthand for results of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A system call on a file or directory failed (disk full, file-size limit,
    /// permission denied, file removed under us, ...). `op` names what we were doing.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the engine was doing (for example "allocate segment").
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Bytes handed to `append` are not a sequence of well-formed RecordBatch v2
    /// batches: bad length, wrong magic, CRC32C mismatch, negative offset delta.
    #[error("corrupt record batch at byte {position} of the input: {reason}")]
    CorruptBatch {
        /// Byte position of the offending batch within the appended buffer.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A follower append whose first batch does not start at the log end offset,
    /// or whose batches are not contiguous among themselves.
    #[error("non-contiguous append: expected base offset {expected}, got {actual}")]
    NonContiguous {
        /// The offset the batch had to start at.
        expected: u64,
        /// The base offset the batch carries.
        actual: i64,
    },

    /// A read or truncation asked for an offset outside `[log_start_offset, log_end_offset]`.
    #[error("offset {offset} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The first offset the log still holds.
        log_start_offset: u64,
        /// The offset the next appended record will get.
        log_end_offset: u64,
    },

    /// A batch (or group of batches appended together) is larger than a segment.
    #[error("append of {batch_bytes} bytes is larger than segment_bytes {segment_bytes}")]
    BatchTooLarge {
        /// Size of the append.
        batch_bytes: usize,
        /// The configured segment size.
        segment_bytes: u64,
    },

    /// A batch carries a partitionLeaderEpoch lower than the latest epoch in the log;
    /// epochs (Raft terms) never decrease along the log.
    #[error("leader epoch {epoch} is lower than the log's latest epoch {latest_epoch}")]
    EpochRegression {
        /// The epoch of the rejected batch.
        epoch: i32,
        /// The latest epoch already in the log.
        latest_epoch: i32,
    },

    /// Stored log data no longer parses (a segment file changed under us after it
    /// was validated, or bit rot found on read).
    #[error("corrupt data in {} at byte {position}: {reason}", file.display())]
    CorruptLog {
        /// The segment file.
        file: PathBuf,
        /// Byte position of the bad batch in the file.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },

    /// One of the engine's own small files (checkpoints, leader-epoch file) failed its CRC.
    #[error("checksum mismatch in {}", file.display())]
    ChecksumMismatch {
        /// The file whose CRC does not match.
        file: PathBuf,
    },

    /// One of the engine's own small files has a valid CRC but content we cannot parse.
    #[error("malformed file {}: {reason}", file.display())]
    MalformedFile {
        /// The offending file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The cleaner's key map budget cannot hold even the first dirty batch's keys.
    #[error("cleaner dedupe buffer of {dedupe_buffer_bytes} bytes too small for one batch of {}", dir.display())]
    CleanerBufferTooSmall {
        /// The partition directory.
        dir: PathBuf,
        /// The budget in force.
        dedupe_buffer_bytes: usize,
    },

    /// A [`crate::LogConfig`] value is out of its allowed range.
    #[error("invalid storage config `{key}`: {reason}")]
    Config {
        /// The configuration key, as spelled in [`crate::LogConfig`].
        key: &'static str,
        /// Why the value is refused.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
