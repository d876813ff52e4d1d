//! OffsetFetch (api key 9): request v1–v9, response v1–v9 (v10 names topics by id, for the
//! new consumer protocol). Flexible from v6; v8+ ask for several groups at once.

use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 1..=9;
const FLEXIBLE_VERSION: i16 = 6;
/// From this version requests and responses list groups.
const GROUPS_VERSION: i16 = 8;

fn str_bytes_min(flexible: bool) -> usize {
    if flexible {
        1
    } else {
        2
    }
}

impl Decode for OffsetFetchRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetFetchRequest::default();
        if v < GROUPS_VERSION {
            m.group_id = GroupId(s.string(flexible)?);
            let topic_bytes_min = str_bytes_min(flexible) + str_bytes_min(flexible);
            m.topics = if v >= 2 {
                nullable_array(s, flexible, topic_bytes_min, |s| {
                    OffsetFetchRequestTopic::decode(s, v)
                })?
            } else {
                Some(array(s, flexible, topic_bytes_min, |s| {
                    OffsetFetchRequestTopic::decode(s, v)
                })?)
            };
        } else {
            m.groups = array(s, flexible, 3, |s| OffsetFetchRequestGroup::decode(s, v))?;
        }
        if v >= 7 {
            m.require_stable = s.boolean()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetFetchRequestTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetFetchRequestTopic::default();
        t.name = TopicName(s.string(flexible)?);
        t.partition_indexes = array(s, flexible, 4, |s| s.int32())?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetFetchRequestGroup {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = GroupId(s.string(flexible)?);
        if v >= 9 {
            g.member_id = s.nullable_string(flexible)?;
            g.member_epoch = s.int32()?;
        }
        g.topics = nullable_array(s, flexible, 3, |s| OffsetFetchRequestTopics::decode(s, v))?;
        no_known_tags(s, flexible, &mut g.unknown_tagged_fields)?;
        Ok(g)
    }
}

impl Decode for OffsetFetchRequestTopics {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetFetchRequestTopics::default();
        t.name = TopicName(s.string(flexible)?);
        t.partition_indexes = array(s, flexible, 4, |s| s.int32())?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetFetchResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = OffsetFetchResponse::default();
        if v >= 3 {
            m.throttle_time_ms = s.int32()?;
        }
        if v < GROUPS_VERSION {
            let topic_bytes_min = str_bytes_min(flexible) + str_bytes_min(flexible);
            m.topics = array(s, flexible, topic_bytes_min, |s| {
                OffsetFetchResponseTopic::decode(s, v)
            })?;
            if v >= 2 {
                m.error_code = s.int16()?;
            }
        } else {
            m.groups = array(s, flexible, 5, |s| OffsetFetchResponseGroup::decode(s, v))?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for OffsetFetchResponseTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetFetchResponseTopic::default();
        t.name = TopicName(s.string(flexible)?);
        // index, offset, metadata, error code: at least 15 bytes.
        t.partitions = array(s, flexible, 15, |s| {
            OffsetFetchResponsePartition::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetFetchResponsePartition {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = OffsetFetchResponsePartition::default();
        p.partition_index = s.int32()?;
        p.committed_offset = s.int64()?;
        if v >= 5 {
            p.committed_leader_epoch = s.int32()?;
        }
        p.metadata = s.nullable_string(flexible)?;
        p.error_code = s.int16()?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for OffsetFetchResponseGroup {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut g = OffsetFetchResponseGroup::default();
        g.group_id = GroupId(s.string(flexible)?);
        g.topics = array(s, flexible, 3, |s| OffsetFetchResponseTopics::decode(s, v))?;
        g.error_code = s.int16()?;
        no_known_tags(s, flexible, &mut g.unknown_tagged_fields)?;
        Ok(g)
    }
}

impl Decode for OffsetFetchResponseTopics {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = OffsetFetchResponseTopics::default();
        t.name = TopicName(s.string(flexible)?);
        t.partitions = array(s, flexible, 20, |s| {
            OffsetFetchResponsePartitions::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for OffsetFetchResponsePartitions {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = OffsetFetchResponsePartitions::default();
        p.partition_index = s.int32()?;
        p.committed_offset = s.int64()?;
        p.committed_leader_epoch = s.int32()?;
        p.metadata = s.nullable_string(flexible)?;
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
    fn a_huge_group_count_is_refused_before_allocating() {
        // v8: a compact count of u32::MAX - 1 groups.
        let body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0]);
        assert!(matches!(
            decode_body::<OffsetFetchRequest>(body, 8),
            Err(DecodeError::CountTooLarge { .. })
        ));
        // v1: group "g", i32::MAX topics.
        let body = Bytes::from_static(&[0, 1, b'g', 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<OffsetFetchRequest>(body, 1),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
