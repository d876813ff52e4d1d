//! RecordBatch v2 as storage uses it. The layout itself (field positions, CRC range,
//! header views, record iterator, writers) lives in `rill-record`, shared with the protocol
//! crate; this module adds storage's rules on top (offsets must be non-negative, the CRC is
//! checked on append and recovery) and a small encoder for uncompressed batches (used by
//! tests, benches and anyone who needs a valid batch without the protocol crate).
//!
//! baseOffset and partitionLeaderEpoch lie outside the CRC, which is why the leader
//! may stamp them in place after validating.

use rill_record::layout::PARTITION_LEADER_EPOCH_POS;
pub use rill_record::layout::{HEADER_BYTES, LOG_OVERHEAD_BYTES};
use rill_record::varint::put_varlong;
use rill_record::write::{finish_batch, set_base_offset, set_partition_leader_epoch, BatchFields};
pub use rill_record::{BatchView, HeaderView, RecordError};

/// Byte position of `partitionLeaderEpoch`; the stamped prefix ends 4 bytes after it.
pub const LEADER_EPOCH_POS: usize = PARTITION_LEADER_EPOCH_POS;

fn check_offsets(header: &HeaderView<'_>) -> Result<(), RecordError> {
    if header.last_offset_delta() < 0 {
        return Err(RecordError::InvalidOffsetRange {
            last_offset_delta: header.last_offset_delta(),
        });
    }
    if header.base_offset() < 0 {
        return Err(RecordError::NegativeBaseOffset {
            base_offset: header.base_offset(),
        });
    }
    Ok(())
}

/// Views the header at the start of `buf` (61 bytes; the records need not be present),
/// checking magic, batchLength and non-negative offsets. For walking a file by `pread`.
pub fn parse_header(buf: &[u8]) -> Result<HeaderView<'_>, RecordError> {
    let header = HeaderView::new(buf)?;
    check_offsets(&header)?;
    Ok(header)
}

/// Views the batch at the start of `buf`, checking that it is all there, its magic, and
/// non-negative offsets. Does not check the CRC: for data that was verified when written.
pub fn parse(buf: &[u8]) -> Result<BatchView<'_>, RecordError> {
    let view = BatchView::new(buf)?;
    check_offsets(&view)?;
    Ok(view)
}

/// [`parse`] plus the CRC: for batches arriving to be appended, and recovery.
pub fn parse_and_verify(buf: &[u8]) -> Result<BatchView<'_>, RecordError> {
    let view = parse(buf)?;
    view.verify_crc()?;
    Ok(view)
}

/// Writes `base_offset` and `leader_epoch` into a batch's first 16 bytes (outside the CRC).
/// Fails only if `batch` is shorter than that.
pub fn stamp(batch: &mut [u8], base_offset: u64, leader_epoch: i32) -> Result<(), RecordError> {
    set_base_offset(batch, base_offset as i64)?;
    set_partition_leader_epoch(batch, leader_epoch)
}

/// For an uncompressed batch, the offset and timestamp of the first record whose
/// timestamp is at least `timestamp_ms`. `None` if the batch is compressed, uses
/// LogAppendTime, or its records cannot be walked (the caller then falls back to
/// batch granularity).
pub fn first_record_at_or_after(batch: &BatchView<'_>, timestamp_ms: i64) -> Option<(u64, i64)> {
    if batch.is_log_append_time() {
        return None;
    }
    for record in batch.records().ok()? {
        let record = record.ok()?;
        if record.timestamp >= timestamp_ms {
            return Some((u64::try_from(record.offset).ok()?, record.timestamp));
        }
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
    out.resize(start + HEADER_BYTES, 0);
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        body.clear();
        body.push(0); // record attributes
        put_varlong(&mut body, r.timestamp_ms - base_timestamp);
        put_varlong(&mut body, i as i64);
        for field in [r.key, r.value] {
            match field {
                Some(b) => {
                    put_varlong(&mut body, b.len() as i64);
                    body.extend_from_slice(b);
                }
                None => put_varlong(&mut body, -1),
            }
        }
        put_varlong(&mut body, 0); // headers
        put_varlong(out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    let fields = BatchFields {
        base_offset,
        partition_leader_epoch: leader_epoch,
        attributes: 0,
        last_offset_delta: (records.len() - 1) as i32,
        base_timestamp,
        max_timestamp,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: records.len() as i32,
    };
    finish_batch(&mut out[start..], &fields).expect("a batch under 2 GiB with a header");
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
        assert_eq!(h.base_offset(), 7);
        assert_eq!(h.last_offset(), 9);
        assert_eq!(h.size_bytes(), b.len());
        assert_eq!(h.partition_leader_epoch(), 3);
        assert_eq!(h.max_timestamp(), 1020);
        assert_eq!(h.records_count(), 3);
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut b = sample(2);
        stamp(&mut b, 1_000_000, 42).unwrap();
        let h = parse_and_verify(&b).unwrap();
        assert_eq!(h.base_offset(), 1_000_000);
        assert_eq!(h.partition_leader_epoch(), 42);
    }

    #[test]
    fn flipped_payload_byte_fails_crc() {
        let mut b = sample(2);
        let last = b.len() - 1;
        b[last] ^= 0x40;
        assert!(matches!(
            parse_and_verify(&b),
            Err(RecordError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert!(matches!(
            parse_and_verify(&[]),
            Err(RecordError::Truncated { .. })
        ));
        let mut b = sample(1);
        b[16] = 1;
        assert_eq!(
            parse_and_verify(&b),
            Err(RecordError::UnsupportedMagic { magic: 1 })
        );
        let mut b = sample(1);
        b[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            parse_and_verify(&b),
            Err(RecordError::Truncated { .. })
        ));
        let mut b = sample(1);
        b[8..12].copy_from_slice(&(-7i32).to_be_bytes());
        assert_eq!(
            parse_and_verify(&b),
            Err(RecordError::BadBatchLength { batch_length: -7 })
        );
        let mut b = sample(1);
        b[0..8].copy_from_slice(&(-1i64).to_be_bytes());
        assert!(matches!(
            parse_and_verify(&b),
            Err(RecordError::NegativeBaseOffset { .. })
        ));
    }

    #[test]
    fn record_timestamps_are_walked() {
        let b = sample(5);
        let h = parse_and_verify(&b).unwrap();
        assert_eq!(first_record_at_or_after(&h, 1015), Some((9, 1020)));
        assert_eq!(first_record_at_or_after(&h, 0), Some((7, 1000)));
        assert_eq!(first_record_at_or_after(&h, 5000), None);
    }
}
