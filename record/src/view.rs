//! [`BatchView`]: one RecordBatch v2 read in place, with the CRC32C over its covered range.

use crate::error::RecordError;
use crate::layout::*;
use crate::records::Records;

// The view's constructor checked that the header is in bounds, so these index a slice
// of at least HEADER_BYTES at fixed positions below it: they cannot fail.
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// CRC32C of the range the batch CRC covers (attributes to the end). `batch` must be one
/// whole batch; shorter than a header gives the CRC of whatever lies past position 21.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(CRC_START_POS..).unwrap_or(&[]))
}

/// How record timestamps are to be read (attribute bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// Each record's timestamp is `baseTimestamp + timestampDelta` (producer's clock).
    CreateTime,
    /// Every record's timestamp is the batch's maxTimestamp (the broker's append time).
    LogAppendTime,
}

/// A read-only view of a RecordBatch v2 *header* (its first 61 bytes), for callers that
/// read headers without the records (storage walking a file by `pread`).
///
/// Construction checks the magic, that the header is present and that batchLength is at
/// least a header; it does not check that the records are present ([`BatchView::new`] does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderView<'a> {
    bytes: &'a [u8],
}

/// Checks magic, header presence and batchLength; returns the batch's total size in bytes.
fn check_header(buf: &[u8]) -> Result<usize, RecordError> {
    // The magic byte first, as soon as it is present: an older-format message (v0/v1
    // messages can be shorter than a v2 header) is reported as what it is.
    if let Some(&magic) = buf.get(MAGIC_POS) {
        if magic as i8 != MAGIC_V2 {
            return Err(RecordError::UnsupportedMagic { magic: magic as i8 });
        }
    }
    if buf.len() < HEADER_BYTES {
        return Err(RecordError::Truncated {
            needed_bytes: HEADER_BYTES,
            available_bytes: buf.len(),
        });
    }
    let batch_length = be_i32(buf, BATCH_LENGTH_POS);
    if batch_length < BATCH_LENGTH_MIN {
        return Err(RecordError::BadBatchLength { batch_length });
    }
    // batch_length >= 49 here, so the cast is lossless and the sum cannot overflow.
    Ok(LOG_OVERHEAD_BYTES + batch_length as usize)
}

impl<'a> HeaderView<'a> {
    /// Views the header at the start of `buf` (at least 61 bytes; more are ignored).
    pub fn new(buf: &'a [u8]) -> Result<HeaderView<'a>, RecordError> {
        check_header(buf)?;
        Ok(HeaderView {
            bytes: &buf[..HEADER_BYTES],
        })
    }

    /// Total size of the batch in bytes (`12 + batchLength`).
    pub fn size_bytes(&self) -> usize {
        // At least BATCH_LENGTH_MIN: checked at construction.
        LOG_OVERHEAD_BYTES + self.batch_length() as usize
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, BASE_OFFSET_POS)
    }
    /// Bytes after the batchLength field.
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, BATCH_LENGTH_POS)
    }
    /// Epoch of the leader that appended the batch (the Raft term); -1 if unset.
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, PARTITION_LEADER_EPOCH_POS)
    }
    /// Message format version (always 2 for a view).
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_POS] as i8
    }
    /// The stored CRC32C (over bytes 21..end).
    pub fn crc(&self) -> u32 {
        be_i32(self.bytes, CRC_POS) as u32
    }
    /// Raw attributes.
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, ATTRIBUTES_POS)
    }
    /// Compression codec id (attribute bits 0-2; 0 = none).
    pub fn compression_id(&self) -> i16 {
        self.attributes() & ATTR_COMPRESSION_MASK
    }
    /// Compression codec, `None` if the id is unknown.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_id(self.compression_id())
    }
    /// How record timestamps are to be read (attribute bit 3).
    pub fn timestamp_type(&self) -> TimestampType {
        if self.is_log_append_time() {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }
    /// Whether timestamps are log-append times (attribute bit 3).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_LOG_APPEND_TIME != 0
    }
    /// Whether the batch belongs to a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    /// Whether the batch holds control records (attribute bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    /// Offset of the last record relative to the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, LAST_OFFSET_DELTA_POS)
    }
    /// Offset of the last record (`baseOffset + lastOffsetDelta`, wrapping on garbage).
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .wrapping_add(i64::from(self.last_offset_delta()))
    }
    /// Offset after the batch (`last_offset + 1`).
    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, BASE_TIMESTAMP_POS)
    }
    /// Largest timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, MAX_TIMESTAMP_POS)
    }
    /// Producer id (-1 if not idempotent).
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, PRODUCER_ID_POS)
    }
    /// Producer epoch (-1 if not idempotent).
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, PRODUCER_EPOCH_POS)
    }
    /// Sequence number of the first record (-1 if not idempotent).
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, BASE_SEQUENCE_POS)
    }
    /// Number of records, as the header claims.
    pub fn records_count(&self) -> i32 {
        be_i32(self.bytes, RECORDS_COUNT_POS)
    }
}

/// A read-only view of one whole RecordBatch v2: its header fields (through
/// [`HeaderView`], which it dereferences to) and its records.
///
/// Construction checks what the accessors need to stay in bounds (magic, batchLength, the
/// header and the announced length present); it does not check the CRC
/// ([`BatchView::verify_crc`]) or the header's consistency ([`crate::validate_client_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    header: HeaderView<'a>,
    bytes: &'a [u8],
}

impl<'a> std::ops::Deref for BatchView<'a> {
    type Target = HeaderView<'a>;

    fn deref(&self) -> &HeaderView<'a> {
        &self.header
    }
}

impl<'a> BatchView<'a> {
    /// Views the batch at the start of `buf`; `buf` may continue past it. The view covers
    /// exactly `12 + batchLength` bytes.
    pub fn new(buf: &'a [u8]) -> Result<BatchView<'a>, RecordError> {
        let total_bytes = check_header(buf)?;
        if buf.len() < total_bytes {
            return Err(RecordError::Truncated {
                needed_bytes: total_bytes,
                available_bytes: buf.len(),
            });
        }
        Ok(BatchView {
            header: HeaderView {
                bytes: &buf[..HEADER_BYTES],
            },
            bytes: &buf[..total_bytes],
        })
    }

    /// The header alone (also reachable through `Deref`).
    pub fn header(&self) -> HeaderView<'a> {
        self.header
    }
    /// The batch's bytes, exactly `12 + batchLength` of them.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The (possibly compressed) records section.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// CRC32C of the bytes the CRC covers.
    pub fn compute_crc(&self) -> u32 {
        compute_crc(self.bytes)
    }

    /// Checks the stored CRC against the batch's bytes.
    pub fn verify_crc(&self) -> Result<(), RecordError> {
        let (stored, computed) = (self.crc(), self.compute_crc());
        if stored != computed {
            return Err(RecordError::CrcMismatch { stored, computed });
        }
        Ok(())
    }

    /// Iterates over the records of an uncompressed batch. A compressed batch is
    /// [`RecordError::UnknownCompression`] if the id is unknown, otherwise
    /// [`RecordError::CorruptRecord`] ("compressed"): decompress the section and use
    /// [`Records::new`].
    pub fn records(&self) -> Result<Records<'a>, RecordError> {
        match self.compression() {
            Some(Compression::None) => Ok(Records::new(self.records_bytes(), self)),
            Some(_) => Err(RecordError::CorruptRecord {
                reason: "records are compressed: decompress them first",
            }),
            None => Err(RecordError::UnknownCompression {
                codec: self.compression_id(),
            }),
        }
    }
}
