//! DeleteTopics (api key 20): request and response v1–v6 (`kafka-protocol`'s range; Rill
//! serves v1–v4). Flexible from v4.

use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 4;
/// v0 responses have no `throttle_time_ms`, which `kafka-protocol`'s structs cannot tell
/// apart, so v0 is refused.
const VERSION_MIN: i16 = 1;
const VERSION_MAX: i16 = 6;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = VERSION_MIN..=VERSION_MAX;

impl Decode for DeleteTopicsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteTopicsRequest::default();
        // v6 names topics by id (or name); older versions list names only.
        if v >= 6 {
            m.topics = array(s, flexible, 18, |s| DeleteTopicState::decode(s, v))?;
        } else {
            m.topic_names = array(s, flexible, 1, |s| s.string(flexible).map(TopicName))?;
        }
        m.timeout_ms = s.int32()?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DeleteTopicState {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = DeleteTopicState::default();
        // Only in v6+ requests, which are all flexible.
        t.name = s.nullable_string(flexible)?.map(TopicName);
        t.topic_id = s.uuid()?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for DeleteTopicsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteTopicsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.responses = array(s, flexible, 4, |s| DeletableTopicResult::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DeletableTopicResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = DeletableTopicResult::default();
        t.name = if v >= 6 {
            s.nullable_string(flexible)?.map(TopicName)
        } else {
            Some(TopicName(s.string(flexible)?))
        };
        if v >= 6 {
            t.topic_id = s.uuid()?;
        }
        t.error_code = s.int16()?;
        if v >= 5 {
            t.error_message = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::decode_body;

    use super::*;

    #[test]
    fn a_huge_topic_count_is_refused_before_allocating() {
        // v4: a compact count of u32::MAX - 1 topic names, then a timeout.
        let body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0x75, 0x30, 0]);
        assert!(matches!(
            decode_body::<DeleteTopicsRequest>(body, 4),
            Err(DecodeError::CountTooLarge {
                count: 4294967294,
                ..
            })
        ));
        // v1 response: i32::MAX results.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0]);
        assert!(matches!(
            decode_body::<DeleteTopicsResponse>(body, 1),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // v1: one topic name "ab", then only two bytes of the timeout.
        let body = Bytes::from_static(&[0, 0, 0, 1, 0, 2, b'a', b'b', 0, 0]);
        assert!(matches!(
            decode_body::<DeleteTopicsRequest>(body, 1),
            Err(DecodeError::Truncated { needed: 4, left: 2 })
        ));
        // v4 response missing its tagged-field section.
        let body = Bytes::from_static(&[0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_body::<DeleteTopicsResponse>(body, 4),
            Err(DecodeError::Truncated { needed: 1, left: 0 })
        ));
    }

    /// The versions Rill does not serve (so the oracle does not run them) round-trip
    /// through `kafka-protocol`'s encoder.
    #[test]
    fn unserved_versions_round_trip() {
        crate::decode::oracle::assert_round_trips::<DeleteTopicsRequest>(5..=VERSION_MAX);
        crate::decode::oracle::assert_round_trips::<DeleteTopicsResponse>(5..=VERSION_MAX);
    }
}
