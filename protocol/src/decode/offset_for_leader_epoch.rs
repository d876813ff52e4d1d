//! OffsetForLeaderEpoch (api key 23): request v2–v4, response v2–v4. Flexible from v4.

use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    BrokerId, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, TopicName,
};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (older ones lay fields out differently).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 2..=4;

const FLEXIBLE_VERSION: i16 = 4;

impl Decode for OffsetForLeaderEpochRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetForLeaderEpochRequest::default();
        if v >= 3 {
            m.replica_id = BrokerId(s.int32()?);
        }
        m.topics = array(s, flexible, 3, |s| OffsetForLeaderTopic::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetForLeaderTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetForLeaderTopic::default();
        t.topic = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 12, |s| OffsetForLeaderPartition::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetForLeaderPartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = OffsetForLeaderPartition::default();
        p.partition = s.int32()?;
        p.current_leader_epoch = s.int32()?;
        p.leader_epoch = s.int32()?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for OffsetForLeaderEpochResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetForLeaderEpochResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.topics = array(s, flexible, 3, |s| OffsetForLeaderTopicResult::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetForLeaderTopicResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetForLeaderTopicResult::default();
        t.topic = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 18, |s| EpochEndOffset::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for EpochEndOffset {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = EpochEndOffset::default();
        p.error_code = s.int16()?;
        p.partition = s.int32()?;
        p.leader_epoch = s.int32()?;
        p.end_offset = s.int64()?;
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
        // v2: no replica_id; a topic count of i32::MAX, three bytes behind it.
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(matches!(
            decode_body::<OffsetForLeaderEpochRequest>(body, 2),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                left: 3,
                ..
            })
        ));
        // v4 (compact): throttle_time_ms, then the largest compact topic count.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            decode_body::<OffsetForLeaderEpochResponse>(body, 4),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // v3: replica_id cut short.
        let body = Bytes::from_static(&[0, 0]);
        assert!(matches!(
            decode_body::<OffsetForLeaderEpochRequest>(body, 3),
            Err(DecodeError::Truncated { needed: 4, left: 2 })
        ));
        // v4: one topic "a", one partition missing its tagged-field section.
        let body = Bytes::from_static(&[
            0, 0, 0, 0, 2, 2, b'a', 2, // throttle, one topic "a", one partition
            0, 0, 0, 0, 0, 1, 0, 0, 0, 5, // error, partition, leader epoch
            0, 0, 0, 0, 0, 0, 0, 9, // end offset, then nothing
        ]);
        assert!(matches!(
            decode_body::<OffsetForLeaderEpochResponse>(body, 4),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
