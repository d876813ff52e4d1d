//! Writers: the fields a leader stamps into a validated batch in place, and
//! [`finish_batch`], which fills a new batch's header and CRC for builders.

use crate::error::RecordError;
use crate::layout::*;
use crate::view::compute_crc;

fn need(batch: &[u8], bytes: usize) -> Result<(), RecordError> {
    if batch.len() < bytes {
        return Err(RecordError::Truncated {
            needed_bytes: bytes,
            available_bytes: batch.len(),
        });
    }
    Ok(())
}

/// Overwrites baseOffset in place. It lies outside the CRC, so the CRC stays valid.
/// `batch` needs only the first 12 bytes (a leader may stamp a copy of the prefix).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) -> Result<(), RecordError> {
    need(batch, BASE_OFFSET_POS + 8)?;
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
    Ok(())
}

/// Overwrites partitionLeaderEpoch in place (outside the CRC). `batch` needs only the first
/// 16 bytes.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) -> Result<(), RecordError> {
    need(batch, PARTITION_LEADER_EPOCH_POS + 4)?;
    batch[PARTITION_LEADER_EPOCH_POS..PARTITION_LEADER_EPOCH_POS + 4]
        .copy_from_slice(&epoch.to_be_bytes());
    Ok(())
}

/// Marks a whole batch as using log-append time with `timestamp_ms` as its maxTimestamp (what
/// a broker does for `message.timestamp.type=LogAppendTime`) and recomputes the CRC, which
/// covers both fields.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) -> Result<(), RecordError> {
    need(batch, HEADER_BYTES)?;
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES_POS], batch[ATTRIBUTES_POS + 1]])
        | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP_POS..MAX_TIMESTAMP_POS + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    write_crc(batch);
    Ok(())
}

/// Overwrites the idempotence fields (producerId, producerEpoch, baseSequence) of a whole
/// batch and recomputes the CRC, which covers them: what a producer does to a batch it
/// resends under a new epoch (KIP-360), whose sequences start over.
pub fn set_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), RecordError> {
    need(batch, HEADER_BYTES)?;
    batch[PRODUCER_ID_POS..PRODUCER_ID_POS + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_POS..PRODUCER_EPOCH_POS + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE_POS..BASE_SEQUENCE_POS + 4].copy_from_slice(&base_sequence.to_be_bytes());
    write_crc(batch);
    Ok(())
}

fn write_crc(batch: &mut [u8]) {
    let crc = compute_crc(batch);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// The header fields a builder chooses; batchLength, magic and the CRC follow from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFields {
    /// Offset of the first record (0 from clients: the broker assigns offsets).
    pub base_offset: i64,
    /// Leader epoch (-1 from clients: the broker stamps it).
    pub partition_leader_epoch: i32,
    /// Attribute bits ([`crate::layout`]'s `ATTR_*` and the compression id).
    pub attributes: i16,
    /// Last record's offset delta (records count - 1).
    pub last_offset_delta: i32,
    /// First record's timestamp.
    pub base_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

/// Writes the header of a new batch into `batch`, whose first [`HEADER_BYTES`] are reserved
/// for it and whose remaining bytes are the (possibly compressed) records, then the CRC.
/// Fails if `batch` is shorter than a header or longer than batchLength can count.
pub fn finish_batch(batch: &mut [u8], fields: &BatchFields) -> Result<(), RecordError> {
    need(batch, HEADER_BYTES)?;
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD_BYTES).map_err(|_| {
        RecordError::BadBatchLength {
            batch_length: i32::MAX,
        }
    })?;
    let mut put = |pos: usize, bytes: &[u8]| batch[pos..pos + bytes.len()].copy_from_slice(bytes);
    put(BASE_OFFSET_POS, &fields.base_offset.to_be_bytes());
    put(BATCH_LENGTH_POS, &batch_length.to_be_bytes());
    put(
        PARTITION_LEADER_EPOCH_POS,
        &fields.partition_leader_epoch.to_be_bytes(),
    );
    put(MAGIC_POS, &[MAGIC_V2 as u8]);
    put(ATTRIBUTES_POS, &fields.attributes.to_be_bytes());
    put(
        LAST_OFFSET_DELTA_POS,
        &fields.last_offset_delta.to_be_bytes(),
    );
    put(BASE_TIMESTAMP_POS, &fields.base_timestamp.to_be_bytes());
    put(MAX_TIMESTAMP_POS, &fields.max_timestamp.to_be_bytes());
    put(PRODUCER_ID_POS, &fields.producer_id.to_be_bytes());
    put(PRODUCER_EPOCH_POS, &fields.producer_epoch.to_be_bytes());
    put(BASE_SEQUENCE_POS, &fields.base_sequence.to_be_bytes());
    put(RECORDS_COUNT_POS, &fields.records_count.to_be_bytes());
    write_crc(batch);
    Ok(())
}
