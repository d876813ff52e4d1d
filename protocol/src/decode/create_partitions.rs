//! CreatePartitions (api key 37): request and response v0–v3. Flexible from v2.

use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, TopicName,
};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 2;
const VERSION_MAX: i16 = 3;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=VERSION_MAX;

impl Decode for CreatePartitionsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = CreatePartitionsRequest::default();
        m.topics = array(s, flexible, 7, |s| CreatePartitionsTopic::decode(s, v))?;
        m.timeout_ms = s.int32()?;
        m.validate_only = s.boolean()?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for CreatePartitionsTopic {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut t = CreatePartitionsTopic::default();
        t.name = TopicName(s.string(flexible)?);
        t.count = s.int32()?;
        t.assignments =
            nullable_array(s, flexible, 2, |s| CreatePartitionsAssignment::decode(s, v))?;
        no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
        Ok(t)
    }
}

impl Decode for CreatePartitionsAssignment {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut a = CreatePartitionsAssignment::default();
        a.broker_ids = array(s, flexible, 4, |s| s.int32().map(BrokerId))?;
        no_known_tags(s, flexible, &mut a.unknown_tagged_fields)?;
        Ok(a)
    }
}

impl Decode for CreatePartitionsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = CreatePartitionsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.results = array(s, flexible, 5, |s| {
            CreatePartitionsTopicResult::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for CreatePartitionsTopicResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = CreatePartitionsTopicResult::default();
        r.name = TopicName(s.string(flexible)?);
        r.error_code = s.int16()?;
        r.error_message = s.nullable_string(flexible)?;
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::decode_body;
    use super::*;

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        // v0: one topic "a" with a count, then i32::MAX assignments.
        let body = Bytes::from_static(&[
            0, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 3, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0,
        ]);
        assert!(matches!(
            decode_body::<CreatePartitionsRequest>(body, 0),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));
        // v2 response: a compact count of u32::MAX - 1 results.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]);
        assert!(matches!(
            decode_body::<CreatePartitionsResponse>(body, 2),
            Err(DecodeError::CountTooLarge {
                count: 4294967294,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // v3: no topics, a timeout, then nothing (validate_only and tags missing).
        let body = Bytes::from_static(&[1, 0, 0, 0x75, 0x30]);
        assert!(matches!(
            decode_body::<CreatePartitionsRequest>(body, 3),
            Err(DecodeError::Truncated { needed: 1, left: 0 })
        ));
        // v1 response: throttle time cut short.
        let body = Bytes::from_static(&[0, 0]);
        assert!(matches!(
            decode_body::<CreatePartitionsResponse>(body, 1),
            Err(DecodeError::Truncated { needed: 4, left: 2 })
        ));
    }
}
