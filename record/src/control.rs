//! Control batches: one-record batches with the control attribute, whose key is
//! `(version: i16, type: i16)` (Kafka's `ControlRecordType`) and whose value is the
//! type's payload. Consumers skip them (Kafka's Java client and librdkafka both read
//! past control batches of types they do not know), so the replication layer can keep
//! its own entries — a new leader's entry, membership changes — in the partition log
//! at real offsets.

use bytes::BufMut;

use crate::error::RecordError;
use crate::layout::{ATTR_CONTROL, HEADER_BYTES};
use crate::varint::{put_varlong, read_varint};
use crate::view::BatchView;
use crate::write::{finish_batch, BatchFields};

/// Kafka's `LEADER_CHANGE` control record: written by a new Raft leader (KRaft uses it
/// in the metadata log; Rill in every partition). Value: Kafka's `LeaderChangeMessage`.
pub const CONTROL_TYPE_LEADER_CHANGE: i16 = 2;
/// Rill's membership-change control record (not a Kafka type; consumers skip it like
/// any control batch). Value: Rill's own membership encoding.
pub const CONTROL_TYPE_RILL_MEMBERSHIP: i16 = 0x5201;
/// Rill's DeleteRecords control record (not a Kafka type; consumers skip it): every
/// replica that writes it moves its log start offset up to the value, an INT64
/// big-endian offset.
pub const CONTROL_TYPE_RILL_DELETE_RECORDS: i16 = 0x5202;

/// Builds a control batch of one record with the given type and value. baseOffset
/// and partitionLeaderEpoch are left 0 and -1 for the log to stamp (both lie outside
/// the CRC).
pub fn control_batch(
    control_type: i16,
    value: &[u8],
    timestamp_ms: i64,
) -> Result<Vec<u8>, RecordError> {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    // Record body: attributes, timestampDelta, offsetDelta, key, value, headers.
    let mut body = Vec::with_capacity(16 + value.len());
    body.put_i8(0);
    put_varlong(&mut body, 0);
    put_varlong(&mut body, 0);
    put_varlong(&mut body, key.len() as i64);
    body.extend_from_slice(&key);
    put_varlong(&mut body, value.len() as i64);
    body.extend_from_slice(value);
    put_varlong(&mut body, 0);
    let mut batch = vec![0u8; HEADER_BYTES];
    put_varlong(&mut batch, body.len() as i64);
    batch.extend_from_slice(&body);
    finish_batch(
        &mut batch,
        &BatchFields {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: ATTR_CONTROL,
            last_offset_delta: 0,
            base_timestamp: timestamp_ms,
            max_timestamp: timestamp_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 1,
        },
    )?;
    Ok(batch)
}

/// The control type and value of a control batch written by [`control_batch`] (or any
/// uncompressed control batch); `None` for a data batch.
pub fn control_record<'a>(batch: &BatchView<'a>) -> Result<Option<(i16, &'a [u8])>, RecordError> {
    if !batch.header().is_control() {
        return Ok(None);
    }
    let bytes = batch.as_bytes();
    let mut rest = bytes.get(HEADER_BYTES..).unwrap_or(&[]);
    let truncated = RecordError::Truncated {
        needed_bytes: HEADER_BYTES + 1,
        available_bytes: bytes.len(),
    };
    let _length = read_varint(&mut rest)?;
    let (_, after_attributes) = rest.split_first().ok_or(truncated)?;
    rest = after_attributes;
    let _timestamp_delta = crate::varint::read_varlong(&mut rest)?;
    let _offset_delta = read_varint(&mut rest)?;
    let key_len = read_varint(&mut rest)?;
    let key = take(&mut rest, key_len, &truncated)?;
    if key.len() < 4 {
        return Err(truncated);
    }
    let control_type = i16::from_be_bytes([key[2], key[3]]);
    let value_len = read_varint(&mut rest)?;
    let value = take(&mut rest, value_len, &truncated)?;
    Ok(Some((control_type, value)))
}

fn take<'a>(rest: &mut &'a [u8], len: i32, err: &RecordError) -> Result<&'a [u8], RecordError> {
    let len = usize::try_from(len).map_err(|_| *err)?;
    if rest.len() < len {
        return Err(*err);
    }
    let (taken, after) = rest.split_at(len);
    *rest = after;
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_batch_is_valid_and_gives_back_its_type_and_value() {
        let batch =
            control_batch(CONTROL_TYPE_LEADER_CHANGE, b"value", 1_700_000_000_000).expect("builds");
        let view = BatchView::new(&batch).expect("valid batch");
        assert!(view.header().is_control());
        assert_eq!(view.header().records_count(), 1);
        assert_eq!(view.header().last_offset_delta(), 0);
        assert_eq!(view.header().crc(), crate::compute_crc(&batch));
        assert_eq!(
            control_record(&view).expect("parses"),
            Some((CONTROL_TYPE_LEADER_CHANGE, &b"value"[..]))
        );
    }
}
