//! [`RecordError`]: why bytes are not a valid RecordBatch v2, or not one a client may write.
//! Every variant is `Copy` and allocation-free, so rejecting garbage costs nothing.

use crate::layout::BATCH_LENGTH_MIN;

/// Why a byte sequence is not an acceptable RecordBatch v2. Variants up to
/// [`RecordError::CorruptRecord`] describe corruption (Kafka: CORRUPT_MESSAGE); those for
/// which [`RecordError::is_invalid_record`] holds are the log validator's rules for batches
/// from clients (Kafka: INVALID_RECORD). Messages of the latter follow Kafka's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header, or than batchLength announces.
    #[error("record batch is truncated: {needed_bytes} bytes needed, {available_bytes} available")]
    Truncated {
        /// Bytes the batch needs.
        needed_bytes: usize,
        /// Bytes there are.
        available_bytes: usize,
    },
    /// batchLength is below the size of a header.
    #[error("record batch length {batch_length} is below the {BATCH_LENGTH_MIN}-byte minimum")]
    BadBatchLength {
        /// The length field.
        batch_length: i32,
    },
    /// The CRC32C does not match the batch's bytes.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC stored in the header.
        stored: u32,
        /// The CRC32C of bytes 21..end.
        computed: u32,
    },
    /// Compression id 5-7.
    #[error("unknown compression codec id {codec}")]
    UnknownCompression {
        /// The id from the attributes.
        codec: i16,
    },
    /// baseOffset is negative (stored batches only: clients send 0).
    #[error("negative base offset {base_offset}")]
    NegativeBaseOffset {
        /// The field.
        base_offset: i64,
    },
    /// A record inside the batch cannot be decoded.
    #[error("corrupt record: {reason}")]
    CorruptRecord {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The magic byte is not 2. Produce v3+ carries only magic 2.
    #[error("record batch magic {magic} is not supported (Produce v3+ carries only magic 2)")]
    UnsupportedMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// lastOffsetDelta is negative: the batch covers no offsets.
    #[error("Batch has an invalid offset range: lastOffsetDelta {last_offset_delta}")]
    InvalidOffsetRange {
        /// The field.
        last_offset_delta: i32,
    },
    /// recordsCount is zero or negative.
    #[error("Invalid reported count for record batch: {records_count}")]
    InvalidRecordsCount {
        /// The field.
        records_count: i32,
    },
    /// `lastOffsetDelta + 1 != recordsCount`.
    #[error(
        "Inconsistent batch offset range and record count: lastOffsetDelta {last_offset_delta} \
         but recordsCount {records_count}"
    )]
    InconsistentRecordsCount {
        /// The field.
        last_offset_delta: i32,
        /// The field.
        records_count: i32,
    },
    /// More records than the batch's bytes can hold.
    #[error(
        "records count {records_count} cannot fit in the batch's {records_bytes} bytes of records \
         ({bytes_per_record_min} bytes per record at least{codec_note})"
    )]
    RecordsCountExceedsBytes {
        /// The field.
        records_count: i32,
        /// Bytes of the records section (compressed, if the batch is).
        records_bytes: usize,
        /// [`crate::layout::RECORD_BYTES_MIN`].
        bytes_per_record_min: usize,
        /// For compressed batches, the codec's expansion bound that was applied.
        codec_note: &'static str,
    },
    /// A client sent a control batch.
    #[error("Clients are not allowed to write control records")]
    ControlBatchFromClient,
    /// A transactional batch, and this broker does not support transactions.
    #[error(
        "Transactional records are not supported: this broker does not implement transactions"
    )]
    TransactionalUnsupported,
}

impl RecordError {
    /// Whether Kafka answers this with INVALID_RECORD (87): a well-formed batch that breaks a
    /// rule for what clients may write. The others are corruption (CORRUPT_MESSAGE, 2).
    pub fn is_invalid_record(&self) -> bool {
        matches!(
            self,
            RecordError::UnsupportedMagic { .. }
                | RecordError::InvalidOffsetRange { .. }
                | RecordError::InvalidRecordsCount { .. }
                | RecordError::InconsistentRecordsCount { .. }
                | RecordError::RecordsCountExceedsBytes { .. }
                | RecordError::ControlBatchFromClient
                | RecordError::TransactionalUnsupported
        )
    }

    /// A static description of the cause (for callers that keep `&'static str` reasons, such
    /// as storage's scan outcomes); the `Display` text has the field values.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Truncated { .. } => "batch is truncated",
            RecordError::BadBatchLength { .. } => "batch length field is out of range",
            RecordError::CrcMismatch { .. } => "CRC32C mismatch",
            RecordError::UnknownCompression { .. } => "unknown compression codec",
            RecordError::NegativeBaseOffset { .. } => "negative base offset",
            RecordError::CorruptRecord { reason } => reason,
            RecordError::UnsupportedMagic { .. } => "magic byte is not 2",
            RecordError::InvalidOffsetRange { .. } => "negative last offset delta",
            RecordError::InvalidRecordsCount { .. } => "records count is not positive",
            RecordError::InconsistentRecordsCount { .. } => {
                "records count does not match last offset delta"
            }
            RecordError::RecordsCountExceedsBytes { .. } => {
                "more records than the batch has bytes for"
            }
            RecordError::ControlBatchFromClient => "control batch from a client",
            RecordError::TransactionalUnsupported => "transactional batch",
        }
    }
}
