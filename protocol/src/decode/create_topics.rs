//! CreateTopics (api key 19): request and response v2–v7 (`kafka-protocol`'s range; Rill
//! serves v2–v4). Flexible from v5.

use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{BrokerId, CreateTopicsRequest, CreateTopicsResponse, TopicName};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 5;
/// v0 and v1 differ in fields (no `validate_only`, no `throttle_time_ms`, …) that
/// `kafka-protocol`'s structs cannot tell apart, so they are refused.
const VERSION_MIN: i16 = 2;
const VERSION_MAX: i16 = 7;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = VERSION_MIN..=VERSION_MAX;

impl Decode for CreateTopicsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = CreateTopicsRequest::default();
        m.topics = array(s, flexible, 10, |s| CreatableTopic::decode(s, v))?;
        m.timeout_ms = s.int32()?;
        m.validate_only = s.boolean()?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for CreatableTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = CreatableTopic::default();
        t.name = TopicName(s.string(flexible)?);
        t.num_partitions = s.int32()?;
        t.replication_factor = s.int16()?;
        t.assignments = array(s, flexible, 6, |s| CreatableReplicaAssignment::decode(s, v))?;
        t.configs = array(s, flexible, 3, |s| CreatableTopicConfig::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for CreatableReplicaAssignment {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut a = CreatableReplicaAssignment::default();
        a.partition_index = s.int32()?;
        a.broker_ids = array(s, flexible, 4, |s| s.int32().map(BrokerId))?;
        no_known_tags(s, flexible, &mut a.unknown_tagged_fields)?;
        Ok(a)
    }
}

impl Decode for CreatableTopicConfig {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut c = CreatableTopicConfig::default();
        c.name = s.string(flexible)?;
        c.value = s.nullable_string(flexible)?;
        no_known_tags(s, flexible, &mut c.unknown_tagged_fields)?;
        Ok(c)
    }
}

impl Decode for CreateTopicsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = CreateTopicsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.topics = array(s, flexible, 6, |s| CreatableTopicResult::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for CreatableTopicResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = CreatableTopicResult::default();
        t.name = TopicName(s.string(flexible)?);
        if v >= 7 {
            t.topic_id = s.uuid()?;
        }
        t.error_code = s.int16()?;
        t.error_message = s.nullable_string(flexible)?;
        if v >= 5 {
            t.num_partitions = s.int32()?;
            t.replication_factor = s.int16()?;
            t.configs = nullable_array(s, flexible, 6, |s| CreatableTopicConfigs::decode(s, v))?;
        }
        if flexible {
            let mut topic_config_error_code = t.topic_config_error_code;
            s.tagged_fields(&mut t.unknown_tagged_fields, |s, tag| match tag {
                0 => {
                    topic_config_error_code = s.int16()?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
            t.topic_config_error_code = topic_config_error_code;
        }
        Ok(t)
    }
}

impl Decode for CreatableTopicConfigs {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut c = CreatableTopicConfigs::default();
        // Only in v5+ responses, which are all flexible.
        c.name = s.string(flexible)?;
        c.value = s.nullable_string(flexible)?;
        c.read_only = s.boolean()?;
        c.config_source = s.int8()?;
        c.is_sensitive = s.boolean()?;
        no_known_tags(s, flexible, &mut c.unknown_tagged_fields)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::decode_body;

    use super::*;

    #[test]
    fn a_huge_topic_count_is_refused_before_allocating() {
        // v4: topics count i32::MAX, then nothing.
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode_body::<CreateTopicsRequest>(body, 4),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));
        // v5: a compact count of u32::MAX - 1 configs in one topic.
        let body = Bytes::from_static(&[
            2, 2, b'a', 0, 0, 0, 1, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ]);
        assert!(matches!(
            decode_body::<CreateTopicsRequest>(body, 5),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // v3 response: throttle time, one topic, whose name claims 9 bytes but has 6.
        let body = Bytes::from_static(&[
            0, 0, 0, 0, 0, 0, 0, 1, 0, 9, b'a', b'b', b'c', b'd', b'e', b'f',
        ]);
        assert!(matches!(
            decode_body::<CreateTopicsResponse>(body, 3),
            Err(DecodeError::Truncated { needed: 9, left: 6 })
        ));
        // A request missing validate_only.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0x75, 0x30]);
        assert!(matches!(
            decode_body::<CreateTopicsRequest>(body, 2),
            Err(DecodeError::Truncated { needed: 1, left: 0 })
        ));
    }

    #[test]
    fn versions_kafka_protocol_does_not_know_are_refused() {
        let body = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode_body::<CreateTopicsRequest>(body, 1),
            Err(DecodeError::UnknownVersion { version: 1 })
        ));
    }

    /// The flexible versions Rill does not serve (so the oracle does not run them), with the
    /// tagged `topic_config_error_code`, round-trip through `kafka-protocol`'s encoder.
    #[test]
    fn unserved_flexible_versions_round_trip() {
        crate::decode::oracle::assert_round_trips::<CreateTopicsRequest>(
            FLEXIBLE_VERSION..=VERSION_MAX,
        );
        crate::decode::oracle::assert_round_trips::<CreateTopicsResponse>(
            FLEXIBLE_VERSION..=VERSION_MAX,
        );
    }
}
