//! ListOffsets (api key 2): request v1–v10, response v1–v10. Flexible from v6.

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (older ones lay fields out differently).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 1..=10;

const FLEXIBLE_VERSION: i16 = 6;

impl Decode for ListOffsetsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ListOffsetsRequest::default();
        m.replica_id = BrokerId(s.int32()?);
        if v >= 2 {
            m.isolation_level = s.int8()?;
        }
        m.topics = array(s, flexible, 3, |s| ListOffsetsTopic::decode(s, v))?;
        if v >= 10 {
            m.timeout_ms = s.int32()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for ListOffsetsTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 12, |s| ListOffsetsPartition::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for ListOffsetsPartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = ListOffsetsPartition::default();
        p.partition_index = s.int32()?;
        if v >= 4 {
            p.current_leader_epoch = s.int32()?;
        }
        p.timestamp = s.int64()?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for ListOffsetsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ListOffsetsResponse::default();
        if v >= 2 {
            m.throttle_time_ms = s.int32()?;
        }
        m.topics = array(s, flexible, 3, |s| ListOffsetsTopicResponse::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for ListOffsetsTopicResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = ListOffsetsTopicResponse::default();
        t.name = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 22, |s| {
            ListOffsetsPartitionResponse::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for ListOffsetsPartitionResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = ListOffsetsPartitionResponse::default();
        p.partition_index = s.int32()?;
        p.error_code = s.int16()?;
        p.timestamp = s.int64()?;
        p.offset = s.int64()?;
        if v >= 4 {
            p.leader_epoch = s.int32()?;
        }
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_topic_count_is_refused_before_allocating() {
        // v1: replica_id, then a topic count of i32::MAX with nothing behind it.
        let body = Bytes::from_static(&[0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<ListOffsetsRequest>(body, 1),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                left: 0,
                ..
            })
        ));
        // v6 (compact): a huge partition count inside one topic.
        let body = Bytes::from_static(&[0, 0, 0, 0, 2, 2, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_body::<ListOffsetsResponse>(body, 6),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_partition_is_refused() {
        // v4: replica_id, isolation_level, one topic "a" with one partition whose timestamp
        // is cut short (14 of its 16 bytes).
        let body = Bytes::from_static(&[
            0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 1, // up to the partition count
            0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, // index, epoch, 6 bytes of timestamp
        ]);
        assert!(matches!(
            decode_body::<ListOffsetsRequest>(body, 4),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
