//! Produce-side batch validation (Kafka's log validator rules), through raw frames to a real
//! `rilld`: each rule gets its error code and message, and the partition's log is unchanged
//! afterwards (ListOffsets latest as before, and a fetch returns only what was produced
//! before).
//!
//! Batches are encoded by `kafka-protocol` (an independent encoder) and broken here at the
//! byte positions of the Kafka protocol guide, with the CRC32C recomputed where the test means
//! the batch to be intact apart from the broken rule.

use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::ListOffsetsRequest;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use rill_tests::raw::requests::{create_topic, fetch, produce, topic_name};
use rill_tests::raw::{decode_records, record_batch, RawConn};
use rill_tests::RilldProcess;

/// Produce v9: carries error_message and record_errors (v8+).
const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const LIST_OFFSETS_V: i16 = 7;

// Byte positions in a RecordBatch v2 (Kafka protocol guide), kept apart from rill-record's
// constants on purpose: the test should not share the code it checks.
const MAGIC_POS: usize = 16;
const CRC_POS: usize = 17;
const ATTRIBUTES_LOW_BYTE_POS: usize = 22;
const LAST_OFFSET_DELTA_POS: usize = 23;
const RECORDS_COUNT_POS: usize = 57;

/// A broker with topic `t` holding two records, "a" (offset 1) and "b" (offset 2), after
/// the LEADER_CHANGE control batch at offset 0.
struct Fixture {
    _broker: RilldProcess,
    conn: RawConn,
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::with_configs(&[])
    }

    fn with_configs(configs: &[(&str, &str)]) -> Fixture {
        let broker = RilldProcess::start();
        let mut conn = RawConn::connect(broker.addr());
        let response = conn.call(4, &create_topic("t", 1, configs));
        assert_eq!(response.topics[0].error_code, 0);
        let response = conn.call(
            PRODUCE_V,
            &produce("t", 0, record_batch(&[b"a", b"b"], 1), -1),
        );
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, 1),
            "{:?}",
            p.error_message
        );
        Fixture {
            _broker: broker,
            conn,
        }
    }

    /// Produces `records`; asserts the partition's answer has `error`, an error_message
    /// containing `message`, and (INVALID_RECORD) one record error with that message.
    fn produce_fails(&mut self, records: Vec<u8>, error: ResponseError, message: &str) {
        let response = self
            .conn
            .call(PRODUCE_V, &produce("t", 0, Bytes::from(records), -1));
        let p = &response.responses[0].partition_responses[0];
        assert_eq!(p.error_code, error.code(), "{:?}", p.error_message);
        assert_eq!(p.base_offset, -1);
        let text = p
            .error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        assert!(
            text.contains(message),
            "error_message {text:?} lacks {message:?}"
        );
        if error == ResponseError::InvalidRecord {
            assert_eq!(p.record_errors.len(), 1, "{:?}", p.record_errors);
            assert_eq!(p.record_errors[0].batch_index, 0);
            let detail = p.record_errors[0]
                .batch_index_error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            assert!(detail.contains(message), "record error {detail:?}");
        } else {
            assert!(p.record_errors.is_empty());
        }
        self.assert_log_unchanged();
    }

    /// ListOffsets latest is still 3 and a fetch from 0 returns only "a" and "b".
    fn assert_log_unchanged(&mut self) {
        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("t"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        let response = self.conn.call(LIST_OFFSETS_V, &request);
        let p = &response.topics[0].partitions[0];
        assert_eq!((p.error_code, p.offset), (0, 3), "latest offset moved");
        let response = self.conn.call(FETCH_V, &fetch("t", 0, 0, 0, 1));
        let p = &response.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 3));
        let records = decode_records(p.records.as_ref().expect("records"));
        assert_eq!(records, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
    }
}

/// Three records "x", "y", "z", encoded by kafka-protocol.
fn good_batch() -> Vec<u8> {
    record_batch(&[b"x", b"y", b"z"], 10).to_vec()
}

fn set_i32(batch: &mut [u8], pos: usize, value: i32) {
    batch[pos..pos + 4].copy_from_slice(&value.to_be_bytes());
}

/// Recomputes the CRC32C over attributes..end, so only the broken rule is wrong.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[CRC_POS + 4..]);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record with kafka-protocol's transactional/control attributes set (CRC by the encoder).
fn flagged_batch(transactional: bool, control: bool) -> Vec<u8> {
    let record = Record {
        transactional,
        control,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: 42,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: 0,
        timestamp: 10,
        key: None,
        // A control record's value is its marker; any bytes do for the broker's rule.
        value: Some(Bytes::from_static(b"\x00\x00\x00\x00\x00\x00")),
        headers: IndexMap::new(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf.to_vec()
}

#[test]
fn magic_other_than_2_is_invalid_record() {
    let mut f = Fixture::start();
    let mut batch = good_batch();
    batch[MAGIC_POS] = 1;
    f.produce_fails(batch, ResponseError::InvalidRecord, "magic 1");
}

#[test]
fn last_offset_delta_inconsistent_with_records_count_is_invalid_record() {
    let mut f = Fixture::start();
    let mut batch = good_batch();
    set_i32(&mut batch, LAST_OFFSET_DELTA_POS, 5);
    fix_crc(&mut batch);
    // After a good batch in the same request: nothing of the partition is appended.
    let mut records = good_batch();
    records.extend_from_slice(&batch);
    f.produce_fails(
        records,
        ResponseError::InvalidRecord,
        "Inconsistent batch offset range and record count",
    );
}

#[test]
fn non_positive_records_count_is_invalid_record() {
    let mut f = Fixture::start();
    let mut batch = good_batch();
    set_i32(&mut batch, LAST_OFFSET_DELTA_POS, -1);
    set_i32(&mut batch, RECORDS_COUNT_POS, 0);
    fix_crc(&mut batch);
    f.produce_fails(batch, ResponseError::InvalidRecord, "invalid offset range");
    let mut batch = good_batch();
    set_i32(&mut batch, RECORDS_COUNT_POS, 0);
    fix_crc(&mut batch);
    f.produce_fails(
        batch,
        ResponseError::InvalidRecord,
        "Invalid reported count for record batch: 0",
    );
}

#[test]
fn records_count_the_batch_length_cannot_hold_is_invalid_record() {
    let mut f = Fixture::start();
    let mut batch = good_batch();
    // Consistent with lastOffsetDelta, but 100,000 records need at least 700,000 bytes.
    set_i32(&mut batch, LAST_OFFSET_DELTA_POS, 99_999);
    set_i32(&mut batch, RECORDS_COUNT_POS, 100_000);
    fix_crc(&mut batch);
    f.produce_fails(batch, ResponseError::InvalidRecord, "cannot fit");
}

#[test]
fn control_batch_from_a_client_is_invalid_record() {
    let mut f = Fixture::start();
    let batch = flagged_batch(false, true);
    assert_ne!(
        batch[ATTRIBUTES_LOW_BYTE_POS] & 0x20,
        0,
        "encoder set the control bit"
    );
    f.produce_fails(
        batch,
        ResponseError::InvalidRecord,
        "Clients are not allowed to write control records",
    );
}

#[test]
fn transactional_batch_without_transaction_support_is_invalid_record() {
    let mut f = Fixture::start();
    let batch = flagged_batch(true, false);
    assert_ne!(
        batch[ATTRIBUTES_LOW_BYTE_POS] & 0x10,
        0,
        "encoder set the transactional bit"
    );
    f.produce_fails(
        batch,
        ResponseError::InvalidRecord,
        "Transactional records are not supported",
    );
}

#[test]
fn crc_failure_is_corrupt_message_even_when_a_rule_is_also_broken() {
    let mut f = Fixture::start();
    let mut batch = good_batch();
    let last = batch.len() - 1;
    batch[last] ^= 0xff;
    f.produce_fails(batch, ResponseError::CorruptMessage, "CRC");
    // A flipped bit in recordsCount breaks a rule too; the CRC says it is corruption.
    let mut batch = good_batch();
    batch[RECORDS_COUNT_POS + 3] ^= 0x04;
    f.produce_fails(batch, ResponseError::CorruptMessage, "CRC");
}

#[test]
fn batch_over_max_message_bytes_is_message_too_large() {
    let mut f = Fixture::with_configs(&[("max.message.bytes", "1000")]);
    let big = vec![b'x'; 2000];
    f.produce_fails(
        record_batch(&[&big], 0).to_vec(),
        ResponseError::MessageTooLarge,
        "exceeds max.message.bytes 1000",
    );
}
