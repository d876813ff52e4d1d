//! Produce (api key 0): request v3–v13, response v3–v13. Flexible from v9.
//!
//! v3 is the oldest version with a transactional id (older ones lay the request out
//! differently), v13 the newest `kafka-protocol` knows; Rill serves a range inside that.
//! `records` stays a zero-copy slice of the frame: the produce path appends it as is.

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{
    BrokerId, ProduceRequest, ProduceResponse, TopicName, TransactionalId,
};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 9;
const OLDEST_VERSION: i16 = 3;
const NEWEST_VERSION: i16 = 13;

/// Fewest bytes of a topic entry (request or response): a compact empty name, an empty
/// compact array and no tags (v9–v12).
const TOPIC_BYTES_MIN: usize = 3;

/// Fewest bytes of a node endpoint: id, empty host, port, null rack, no tags.
const NODE_ENDPOINT_BYTES_MIN: usize = 4 + 1 + 4 + 1 + 1;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = OLDEST_VERSION..=NEWEST_VERSION;

impl Decode for ProduceRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ProduceRequest::default();
        m.transactional_id = s.nullable_string(flexible)?.map(TransactionalId);
        m.acks = s.int16()?;
        m.timeout_ms = s.int32()?;
        m.topic_data = array(s, flexible, TOPIC_BYTES_MIN, |s| {
            TopicProduceData::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for TopicProduceData {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = TopicProduceData::default();
        // v13 names the topic by id only.
        if v <= 12 {
            t.name = TopicName(s.string(flexible)?);
        }
        if v >= 13 {
            t.topic_id = s.uuid()?;
        }
        // Index and records length: 4 + 1 bytes, plus 1 for tags (v9+); 4 + 4 before.
        t.partition_data = array(s, flexible, 6, |s| PartitionProduceData::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for PartitionProduceData {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = PartitionProduceData::default();
        p.index = s.int32()?;
        p.records = s.nullable_bytes(flexible)?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for ProduceResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ProduceResponse::default();
        m.responses = array(s, flexible, TOPIC_BYTES_MIN, |s| {
            TopicProduceResponse::decode(s, v)
        })?;
        m.throttle_time_ms = s.int32()?;
        if flexible {
            s.tagged_fields(&mut m.unknown_tagged_fields, |s, tag| match tag {
                0 if v >= 10 => {
                    m.node_endpoints = array(s, flexible, NODE_ENDPOINT_BYTES_MIN, |s| {
                        NodeEndpoint::decode(s, v)
                    })?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(m)
    }
}

impl Decode for TopicProduceResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = TopicProduceResponse::default();
        if v <= 12 {
            t.name = TopicName(s.string(flexible)?);
        }
        if v >= 13 {
            t.topic_id = s.uuid()?;
        }
        // Index, error code, base offset and append time: 4 + 2 + 8 + 8 (v3, v4).
        t.partition_responses = array(s, flexible, 22, |s| PartitionProduceResponse::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for PartitionProduceResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = PartitionProduceResponse::default();
        p.index = s.int32()?;
        p.error_code = s.int16()?;
        p.base_offset = s.int64()?;
        p.log_append_time_ms = s.int64()?;
        if v >= 5 {
            p.log_start_offset = s.int64()?;
        }
        if v >= 8 {
            // Batch index and error message length: 4 + 2, or 4 + 1 + 1 for tags (v9+).
            p.record_errors = array(s, flexible, 6, |s| BatchIndexAndErrorMessage::decode(s, v))?;
            p.error_message = s.nullable_string(flexible)?;
        }
        if flexible {
            s.tagged_fields(&mut p.unknown_tagged_fields, |s, tag| match tag {
                0 if v >= 10 => {
                    p.current_leader = LeaderIdAndEpoch::decode(s, v)?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(p)
    }
}

impl Decode for BatchIndexAndErrorMessage {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut e = BatchIndexAndErrorMessage::default();
        if v >= 8 {
            e.batch_index = s.int32()?;
            e.batch_index_error_message = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut e.unknown_tagged_fields)?;
        Ok(e)
    }
}

impl Decode for LeaderIdAndEpoch {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut l = LeaderIdAndEpoch::default();
        if v >= 10 {
            l.leader_id = BrokerId(s.int32()?);
            l.leader_epoch = s.int32()?;
        }
        no_known_tags(s, flexible, &mut l.unknown_tagged_fields)?;
        Ok(l)
    }
}

impl Decode for NodeEndpoint {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut n = NodeEndpoint::default();
        if v >= 10 {
            n.node_id = BrokerId(s.int32()?);
            n.host = s.string(flexible)?;
            n.port = s.int32()?;
            n.rack = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut n.unknown_tagged_fields)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {

    use bytes::{BufMut, Bytes, BytesMut};

    use super::*;
    use crate::decode::decode_body;

    /// A v9 (flexible) request with one topic "t" and one partition carrying `records`.
    fn flexible_request(records: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(0); // null transactional id
        b.put_i16(-1); // acks
        b.put_i32(30_000); // timeout
        b.put_u8(2); // one topic
        b.put_u8(2); // name length 1
        b.put_u8(b't');
        b.put_u8(2); // one partition
        b.put_i32(0); // index
        b.put_u8(records.len() as u8 + 1);
        b.put_slice(records);
        b.put_u8(0); // partition tags
        b.put_u8(0); // topic tags
        b.put_u8(0); // request tags
        b.freeze()
    }

    #[test]
    fn records_are_a_slice_of_the_frame() {
        let records = [7u8; 20];
        let frame = flexible_request(&records);
        let m: ProduceRequest = decode_body(frame.clone(), 9).unwrap();
        let got = m.topic_data[0].partition_data[0].records.as_ref().unwrap();
        assert_eq!(&got[..], &records[..]);
        let frame_range = frame.as_ptr_range();
        assert!(frame_range.contains(&got.as_ptr()));
        assert!(got.as_ptr_range().end <= frame_range.end);
    }

    #[test]
    fn huge_partition_counts_are_refused_before_allocating() {
        // v3: null transactional id, acks, timeout, one topic "t", then i32::MAX partitions.
        let mut b = BytesMut::new();
        b.put_i16(-1);
        b.put_i16(1);
        b.put_i32(1000);
        b.put_i32(1);
        b.put_i16(1);
        b.put_u8(b't');
        b.put_i32(i32::MAX);
        b.put_slice(&[0; 8]);
        assert!(matches!(
            decode_body::<ProduceRequest>(b.freeze(), 3),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));

        // v9: the largest compact topic count in a tiny body.
        let body = Bytes::from_static(&[0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_body::<ProduceRequest>(body, 9),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn records_longer_than_the_frame_and_unknown_versions_are_refused() {
        let mut frame = BytesMut::from(&flexible_request(&[1, 2, 3])[..]);
        // Cut the frame inside the records: their length now claims more than is left.
        frame.truncate(frame.len() - 5);
        assert!(matches!(
            decode_body::<ProduceRequest>(frame.freeze(), 9),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            decode_body::<ProduceRequest>(flexible_request(&[]), 2),
            Err(DecodeError::UnknownVersion { version: 2 })
        ));
    }

    #[test]
    fn versions_beyond_the_served_range_round_trip() {
        crate::decode::oracle::assert_round_trips::<ProduceRequest>(11..=NEWEST_VERSION);
        crate::decode::oracle::assert_round_trips::<ProduceResponse>(11..=NEWEST_VERSION);
    }
}
