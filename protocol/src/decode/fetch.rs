//! Fetch (api key 1): request v4–v18, response v4–v18. Flexible from v12.
//!
//! v4 is the oldest version with an isolation level (older ones lay the request out
//! differently), v18 the newest `kafka-protocol` knows; Rill serves a range inside that.
//! `records` stays a zero-copy slice of the frame.

use kafka_protocol::messages::fetch_request::{
    FetchPartition, FetchTopic, ForgottenTopic, ReplicaState,
};
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
    PartitionData, SnapshotId,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 12;
const OLDEST_VERSION: i16 = 4;
const NEWEST_VERSION: i16 = 18;

/// Fewest bytes of a topic entry (request, forgotten topic, response): a compact empty
/// name, an empty compact array and no tags (v12).
const TOPIC_BYTES_MIN: usize = 3;

/// Fewest bytes of a node endpoint: id, empty host, port, null rack, no tags.
const NODE_ENDPOINT_BYTES_MIN: usize = 4 + 1 + 4 + 1 + 1;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = OLDEST_VERSION..=NEWEST_VERSION;

impl Decode for FetchRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = FetchRequest::default();
        // From v15 a follower identifies itself in the tagged replica state instead.
        if v <= 14 {
            m.replica_id = BrokerId(s.int32()?);
        }
        m.max_wait_ms = s.int32()?;
        m.min_bytes = s.int32()?;
        m.max_bytes = s.int32()?;
        m.isolation_level = s.int8()?;
        if v >= 7 {
            m.session_id = s.int32()?;
            m.session_epoch = s.int32()?;
        }
        m.topics = array(s, flexible, TOPIC_BYTES_MIN, |s| FetchTopic::decode(s, v))?;
        if v >= 7 {
            m.forgotten_topics_data = array(s, flexible, TOPIC_BYTES_MIN, |s| {
                ForgottenTopic::decode(s, v)
            })?;
        }
        if v >= 11 {
            m.rack_id = s.string(flexible)?;
        }
        if flexible {
            s.tagged_fields(&mut m.unknown_tagged_fields, |s, tag| match tag {
                0 => {
                    m.cluster_id = s.nullable_string(flexible)?;
                    Ok(true)
                }
                1 if v >= 15 => {
                    m.replica_state = ReplicaState::decode(s, v)?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(m)
    }
}

impl Decode for ReplicaState {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = ReplicaState::default();
        if v >= 15 {
            r.replica_id = BrokerId(s.int32()?);
            r.replica_epoch = s.int64()?;
        }
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

impl Decode for FetchTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = FetchTopic::default();
        // From v13 topics are named by id only.
        if v <= 12 {
            t.topic = TopicName(s.string(flexible)?);
        }
        if v >= 13 {
            t.topic_id = s.uuid()?;
        }
        // Partition, fetch offset and partition max bytes: 4 + 8 + 4 (v4).
        t.partitions = array(s, flexible, 16, |s| FetchPartition::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for FetchPartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = FetchPartition::default();
        p.partition = s.int32()?;
        if v >= 9 {
            p.current_leader_epoch = s.int32()?;
        }
        p.fetch_offset = s.int64()?;
        if v >= 12 {
            p.last_fetched_epoch = s.int32()?;
        }
        if v >= 5 {
            p.log_start_offset = s.int64()?;
        }
        p.partition_max_bytes = s.int32()?;
        if flexible {
            s.tagged_fields(&mut p.unknown_tagged_fields, |s, tag| match tag {
                0 if v >= 17 => {
                    p.replica_directory_id = s.uuid()?;
                    Ok(true)
                }
                1 if v >= 18 => {
                    p.high_watermark = s.int64()?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(p)
    }
}

impl Decode for ForgottenTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = ForgottenTopic::default();
        if (7..=12).contains(&v) {
            t.topic = TopicName(s.string(flexible)?);
        }
        if v >= 13 {
            t.topic_id = s.uuid()?;
        }
        if v >= 7 {
            t.partitions = array(s, flexible, 4, |s| s.int32())?;
        }
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for FetchResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = FetchResponse::default();
        m.throttle_time_ms = s.int32()?;
        if v >= 7 {
            m.error_code = s.int16()?;
            m.session_id = s.int32()?;
        }
        m.responses = array(s, flexible, TOPIC_BYTES_MIN, |s| {
            FetchableTopicResponse::decode(s, v)
        })?;
        if flexible {
            s.tagged_fields(&mut m.unknown_tagged_fields, |s, tag| match tag {
                0 if v >= 16 => {
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

impl Decode for FetchableTopicResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = FetchableTopicResponse::default();
        if v <= 12 {
            t.topic = TopicName(s.string(flexible)?);
        }
        if v >= 13 {
            t.topic_id = s.uuid()?;
        }
        // Index, error code, high watermark, last stable offset, aborted transactions and
        // records lengths: 4 + 2 + 8 + 8 + 4 + 4 (v4).
        t.partitions = array(s, flexible, 30, |s| PartitionData::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for PartitionData {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = PartitionData::default();
        p.partition_index = s.int32()?;
        p.error_code = s.int16()?;
        p.high_watermark = s.int64()?;
        p.last_stable_offset = s.int64()?;
        if v >= 5 {
            p.log_start_offset = s.int64()?;
        }
        // Producer id and first offset: 8 + 8.
        p.aborted_transactions =
            nullable_array(s, flexible, 16, |s| AbortedTransaction::decode(s, v))?;
        if v >= 11 {
            p.preferred_read_replica = BrokerId(s.int32()?);
        }
        p.records = s.nullable_bytes(flexible)?;
        if flexible {
            s.tagged_fields(&mut p.unknown_tagged_fields, |s, tag| match tag {
                0 => {
                    p.diverging_epoch = EpochEndOffset::decode(s, v)?;
                    Ok(true)
                }
                1 => {
                    p.current_leader = LeaderIdAndEpoch::decode(s, v)?;
                    Ok(true)
                }
                2 => {
                    p.snapshot_id = SnapshotId::decode(s, v)?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(p)
    }
}

impl Decode for AbortedTransaction {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut a = AbortedTransaction::default();
        a.producer_id = ProducerId(s.int64()?);
        a.first_offset = s.int64()?;
        no_known_tags(s, flexible, &mut a.unknown_tagged_fields)?;
        Ok(a)
    }
}

impl Decode for EpochEndOffset {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut e = EpochEndOffset::default();
        if v >= 12 {
            e.epoch = s.int32()?;
            e.end_offset = s.int64()?;
        }
        no_known_tags(s, flexible, &mut e.unknown_tagged_fields)?;
        Ok(e)
    }
}

impl Decode for LeaderIdAndEpoch {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut l = LeaderIdAndEpoch::default();
        if v >= 12 {
            l.leader_id = BrokerId(s.int32()?);
            l.leader_epoch = s.int32()?;
        }
        no_known_tags(s, flexible, &mut l.unknown_tagged_fields)?;
        Ok(l)
    }
}

impl Decode for SnapshotId {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut i = SnapshotId::default();
        i.end_offset = s.int64()?;
        i.epoch = s.int32()?;
        no_known_tags(s, flexible, &mut i.unknown_tagged_fields)?;
        Ok(i)
    }
}

impl Decode for NodeEndpoint {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut n = NodeEndpoint::default();
        if v >= 16 {
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

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // v4 request: replica id, max wait, min bytes, max bytes, isolation level, then
        // i32::MAX topics in a tiny body.
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(500);
        b.put_i32(1);
        b.put_i32(1 << 20);
        b.put_i8(0);
        b.put_i32(i32::MAX);
        b.put_slice(&[0; 6]);
        assert!(matches!(
            decode_body::<FetchRequest>(b.freeze(), 4),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));

        // v12 response: throttle, error code, session id, then the largest compact topic
        // count.
        let mut b = BytesMut::new();
        b.put_i32(0);
        b.put_i16(0);
        b.put_i32(0);
        b.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_body::<FetchResponse>(b.freeze(), 12),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    /// A v12 response with one topic "t" and one partition whose records length field is
    /// `records_len_plus_one`, followed by `records`.
    fn flexible_response(records_len_plus_one: &[u8], records: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(0); // throttle
        b.put_i16(0); // error code
        b.put_i32(0); // session id
        b.put_u8(2); // one topic
        b.put_u8(2); // name length 1
        b.put_u8(b't');
        b.put_u8(2); // one partition
        b.put_i32(0); // index
        b.put_i16(0); // error code
        b.put_i64(10); // high watermark
        b.put_i64(10); // last stable offset
        b.put_i64(0); // log start offset
        b.put_u8(0); // null aborted transactions
        b.put_i32(-1); // preferred read replica
        b.put_slice(records_len_plus_one);
        b.put_slice(records);
        b.put_u8(0); // partition tags
        b.put_u8(0); // topic tags
        b.put_u8(0); // response tags
        b.freeze()
    }

    #[test]
    fn records_are_slices_and_a_records_length_beyond_the_body_is_refused() {
        let frame = flexible_response(&[4], &[1, 2, 3]);
        let m: FetchResponse = decode_body(frame.clone(), 12).unwrap();
        let p = &m.responses[0].partitions[0];
        assert_eq!(p.aborted_transactions, None);
        let records = p.records.as_ref().unwrap();
        assert_eq!(&records[..], &[1, 2, 3]);
        assert!(frame.as_ptr_range().contains(&records.as_ptr()));

        // A records length of 2^28 - 1 bytes, with three bytes behind it.
        let frame = flexible_response(&[0xff, 0xff, 0xff, 0x7f], &[1, 2, 3]);
        assert!(matches!(
            decode_body::<FetchResponse>(frame, 12),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn versions_beyond_the_served_range_round_trip() {
        crate::decode::oracle::assert_round_trips::<FetchRequest>(17..=NEWEST_VERSION);
        crate::decode::oracle::assert_round_trips::<FetchResponse>(17..=NEWEST_VERSION);
    }
}
