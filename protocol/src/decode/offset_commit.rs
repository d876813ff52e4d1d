//! OffsetCommit (api key 8): request and response v2–v9 (v10 names topics by id, for the
//! new consumer protocol, which Rill does not serve). Flexible from v8.

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 2..=9;
const FLEXIBLE_VERSION: i16 = 8;

impl Decode for OffsetCommitRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetCommitRequest::default();
        m.group_id = GroupId(s.string(flexible)?);
        m.generation_id_or_member_epoch = s.int32()?;
        m.member_id = s.string(flexible)?;
        if v >= 7 {
            m.group_instance_id = s.nullable_string(flexible)?;
        }
        if v <= 4 {
            m.retention_time_ms = s.int64()?;
        }
        let topic_bytes_min = if flexible { 2 } else { 6 };
        m.topics = array(s, flexible, topic_bytes_min, |s| {
            OffsetCommitRequestTopic::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetCommitRequestTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(s.string(flexible)?);
        // index, offset, metadata: at least 13 bytes.
        t.partitions = array(s, flexible, 13, |s| {
            OffsetCommitRequestPartition::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetCommitRequestPartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = s.int32()?;
        p.committed_offset = s.int64()?;
        if v >= 6 {
            p.committed_leader_epoch = s.int32()?;
        }
        p.committed_metadata = s.nullable_string(flexible)?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for OffsetCommitResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetCommitResponse::default();
        if v >= 3 {
            m.throttle_time_ms = s.int32()?;
        }
        let topic_bytes_min = if flexible { 2 } else { 6 };
        m.topics = array(s, flexible, topic_bytes_min, |s| {
            OffsetCommitResponseTopic::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetCommitResponseTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetCommitResponseTopic::default();
        t.name = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 6, |s| {
            OffsetCommitResponsePartition::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetCommitResponsePartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = OffsetCommitResponsePartition::default();
        p.partition_index = s.int32()?;
        p.error_code = s.int16()?;
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
    fn a_huge_partition_count_is_refused_before_allocating() {
        // v2: group "g", generation, member "", retention, one topic "t" with i32::MAX
        // partitions.
        let body = Bytes::from_static(&[
            0, 1, b'g', 0, 0, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0,
            1, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff,
        ]);
        assert!(matches!(
            decode_body::<OffsetCommitRequest>(body, 2),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
