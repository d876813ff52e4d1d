//! Kafka RecordBatch v2: the header fields the log needs, validation of incoming
//! batches, and a small encoder for uncompressed batches (used by tests, benches
//! and anyone who needs a valid batch without the protocol crate).
//!
//! Layout (big-endian), 61 header bytes then the records:
//! ```text
//! 0  baseOffset i64        | 8  batchLength i32 (bytes after this field)
//! 12 partitionLeaderEpoch i32 | 16 magic i8 (= 2) | 17 crc u32 (CRC32C of 21..end)
//! 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
//! 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records
//! ```
//! baseOffset and partitionLeaderEpoch lie outside the CRC, which is why the leader
//! may stamp them in place after validating.

/// Bytes of the fixed RecordBatch v2 header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s counted region: baseOffset + batchLength.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Byte position of `partitionLeaderEpoch`.
pub const LEADER_EPOCH_POS: usize = 12;
/// Byte position of the CRC field.
const CRC_POS: usize = 17;
/// First byte covered by the CRC (attributes).
const CRC_START: usize = 21;
/// Attribute bits holding the compression codec.
const COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit: timestamps are LogAppendTime (all records carry maxTimestamp).
const LOG_APPEND_TIME_FLAG: i16 = 0x08;
/// Attribute bit: control batch (transaction markers, leader-change markers).
const CONTROL_FLAG: i16 = 0x20;

fn i64_at(b: &[u8], pos: usize) -> i64 {
    i64::from_be_bytes(b[pos..pos + 8].try_into().expect("8 bytes"))
}
fn i32_at(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes(b[pos..pos + 4].try_into().expect("4 bytes"))
}
fn i16_at(b: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes(b[pos..pos + 2].try_into().expect("2 bytes"))
}

/// The header fields of one RecordBatch v2, decoded from its first 61 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Whole batch size in bytes, including baseOffset and batchLength.
    pub total_bytes: usize,
    /// Epoch of the leader that appended the batch (the Raft term); -1 if unset.
    pub leader_epoch: i32,
    /// The stored CRC32C.
    pub crc: u32,
    /// Attribute bits (compression, timestamp type, transactional, control).
    pub attributes: i16,
    /// Last record's offset minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence number of the first record.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

/// Why a byte sequence is not a RecordBatch v2 (kept static: no allocation on the hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the length field announces.
    Truncated,
    /// The length field is below the header size or negative.
    BadLength,
    /// The magic byte is not 2.
    BadMagic,
    /// The CRC32C does not match.
    BadCrc,
    /// lastOffsetDelta is negative or baseOffset is negative.
    BadOffsets,
}

impl BatchError {
    /// Human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            BatchError::Truncated => "batch is truncated",
            BatchError::BadLength => "batch length field is out of range",
            BatchError::BadMagic => "magic byte is not 2 (only RecordBatch v2 is stored)",
            BatchError::BadCrc => "CRC32C mismatch",
            BatchError::BadOffsets => "negative base offset or last offset delta",
        }
    }
}

impl BatchHeader {
    /// Decodes the header at the start of `buf`, checking the length field (it must
    /// fit in `buf`) and the magic byte. Does not check the CRC.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated);
        }
        let batch_length = i32_at(buf, 8);
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::BadLength);
        }
        let total_bytes = batch_length as usize + LOG_OVERHEAD_BYTES;
        if buf[16] != 2 {
            return Err(BatchError::BadMagic);
        }
        if total_bytes > buf.len() {
            return Err(BatchError::Truncated);
        }
        let header = BatchHeader {
            base_offset: i64_at(buf, 0),
            total_bytes,
            leader_epoch: i32_at(buf, LEADER_EPOCH_POS),
            crc: u32::from_be_bytes(buf[CRC_POS..CRC_POS + 4].try_into().expect("4 bytes")),
            attributes: i16_at(buf, 21),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            record_count: i32_at(buf, 57),
        };
        if header.last_offset_delta < 0 {
            return Err(BatchError::BadOffsets);
        }
        Ok(header)
    }

    /// Offset of the last record (`base_offset + last_offset_delta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Compression codec id (0 = none).
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    /// Whether record timestamps are LogAppendTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME_FLAG != 0
    }

    /// Whether this is a control batch.
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }
}

/// Whether the CRC32C stored in `batch` (exactly one whole batch) matches its content.
pub fn crc_matches(batch: &[u8], header: &BatchHeader) -> bool {
    crc32c::crc32c(&batch[CRC_START..header.total_bytes]) == header.crc
}

/// Parses and fully validates (length, magic, CRC, offsets) the batch at the start of `buf`.
pub fn parse_and_verify(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if header.base_offset < 0 {
        return Err(BatchError::BadOffsets);
    }
    if !crc_matches(buf, &header) {
        return Err(BatchError::BadCrc);
    }
    Ok(header)
}

/// Writes `base_offset` and `leader_epoch` into a batch's header (outside the CRC).
pub fn stamp(batch: &mut [u8], base_offset: u64, leader_epoch: i32) {
    batch[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Reads a zigzag varint (Kafka's varint/varlong) from `buf` at `*pos`.
fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    let mut shift = 0u32;
    loop {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// For an uncompressed batch, the offset and timestamp of the first record whose
/// timestamp is at least `timestamp_ms`. `None` if the batch is compressed, uses
/// LogAppendTime, or its records cannot be walked (the caller then falls back to
/// batch granularity).
pub fn first_record_at_or_after(
    batch: &[u8],
    header: &BatchHeader,
    timestamp_ms: i64,
) -> Option<(u64, i64)> {
    if header.compression() != 0 || header.is_log_append_time() {
        return None;
    }
    let end = header.total_bytes;
    let mut pos = HEADER_BYTES;
    let count = usize::try_from(header.record_count).ok()?;
    for _ in 0..count {
        let length = usize::try_from(read_varlong(batch, &mut pos)?).ok()?;
        let record_end = pos.checked_add(length)?;
        if record_end > end {
            return None;
        }
        let mut p = pos + 1; // attributes
        let ts_delta = read_varlong(batch, &mut p)?;
        let offset_delta = read_varlong(batch, &mut p)?;
        let ts = header.base_timestamp.checked_add(ts_delta)?;
        if ts >= timestamp_ms {
            let offset = header.base_offset.checked_add(offset_delta)?;
            return Some((u64::try_from(offset).ok()?, ts));
        }
        pos = record_end;
    }
    None
}

/// One record for [`encode_uncompressed`].
#[derive(Debug, Clone, Copy)]
pub struct RecordSpec<'a> {
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Key, `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for a null value (tombstone).
    pub value: Option<&'a [u8]>,
}

/// Encodes an uncompressed RecordBatch v2 with the given records (at least one),
/// no producer id and no headers, appending it to `out`. `base_offset` and
/// `leader_epoch` are written as given.
pub fn encode_uncompressed(
    out: &mut Vec<u8>,
    base_offset: i64,
    leader_epoch: i32,
    records: &[RecordSpec<'_>],
) {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let start = out.len();
    let base_timestamp = records[0].timestamp_ms;
    let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(-1);
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // batchLength, patched below
    out.extend_from_slice(&leader_epoch.to_be_bytes());
    out.push(2); // magic
    out.extend_from_slice(&[0; 4]); // crc, patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes
    out.extend_from_slice(&((records.len() - 1) as i32).to_be_bytes());
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        body.clear();
        body.push(0); // record attributes
        write_varlong(&mut body, r.timestamp_ms - base_timestamp);
        write_varlong(&mut body, i as i64);
        match r.key {
            Some(k) => {
                write_varlong(&mut body, k.len() as i64);
                body.extend_from_slice(k);
            }
            None => write_varlong(&mut body, -1),
        }
        match r.value {
            Some(v) => {
                write_varlong(&mut body, v.len() as i64);
                body.extend_from_slice(v);
            }
            None => write_varlong(&mut body, -1),
        }
        write_varlong(&mut body, 0); // headers
        write_varlong(out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    let total = out.len() - start;
    let batch_length = (total - LOG_OVERHEAD_BYTES) as i32;
    out[start + 8..start + 12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_START..]);
    out[start + CRC_POS..start + CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let recs: Vec<RecordSpec<'_>> = (0..n)
            .map(|i| RecordSpec {
                timestamp_ms: 1000 + i as i64 * 10,
                key: None,
                value: Some(b"hello"),
            })
            .collect();
        encode_uncompressed(&mut out, 7, 3, &recs);
        out
    }

    #[test]
    fn encoded_batch_parses_and_verifies() {
        let b = sample(3);
        let h = parse_and_verify(&b).unwrap();
        assert_eq!(h.base_offset, 7);
        assert_eq!(h.last_offset(), 9);
        assert_eq!(h.total_bytes, b.len());
        assert_eq!(h.leader_epoch, 3);
        assert_eq!(h.max_timestamp, 1020);
        assert_eq!(h.record_count, 3);
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut b = sample(2);
        stamp(&mut b, 1_000_000, 42);
        let h = parse_and_verify(&b).unwrap();
        assert_eq!(h.base_offset, 1_000_000);
        assert_eq!(h.leader_epoch, 42);
    }

    #[test]
    fn flipped_payload_byte_fails_crc() {
        let mut b = sample(2);
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert_eq!(parse_and_verify(&b), Err(BatchError::BadCrc));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert_eq!(parse_and_verify(&[]), Err(BatchError::Truncated));
        let mut b = sample(1);
        b[16] = 1;
        assert_eq!(parse_and_verify(&b), Err(BatchError::BadMagic));
        let mut b = sample(1);
        b[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(parse_and_verify(&b), Err(BatchError::Truncated));
        let mut b = sample(1);
        b[8..12].copy_from_slice(&(-7i32).to_be_bytes());
        assert_eq!(parse_and_verify(&b), Err(BatchError::BadLength));
    }

    #[test]
    fn record_timestamps_are_walked() {
        let b = sample(5);
        let h = parse_and_verify(&b).unwrap();
        assert_eq!(first_record_at_or_after(&b, &h, 1015), Some((9, 1020)));
        assert_eq!(first_record_at_or_after(&b, &h, 0), Some((7, 1000)));
        assert_eq!(first_record_at_or_after(&b, &h, 5000), None);
    }
}
