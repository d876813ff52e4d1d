//! OffsetDelete (api key 47): request and response v0 (the only version; not flexible).

use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{GroupId, OffsetDeleteRequest, OffsetDeleteResponse, TopicName};

use super::source::array;
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=0;

impl Decode for OffsetDeleteRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let mut m = OffsetDeleteRequest::default();
        m.group_id = GroupId(s.string(false)?);
        // name (2) + partition count (4).
        m.topics = array(s, false, 6, |s| {
            let mut t = OffsetDeleteRequestTopic::default();
            t.name = TopicName(s.string(false)?);
            t.partitions = array(s, false, 4, |s| {
                let mut p = OffsetDeleteRequestPartition::default();
                p.partition_index = s.int32()?;
                Ok(p)
            })?;
            Ok(t)
        })?;
        Ok(m)
    }
}

impl Decode for OffsetDeleteResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let mut m = OffsetDeleteResponse::default();
        m.error_code = s.int16()?;
        m.throttle_time_ms = s.int32()?;
        m.topics = array(s, false, 6, |s| {
            let mut t = OffsetDeleteResponseTopic::default();
            t.name = TopicName(s.string(false)?);
            // partition_index (4) + error_code (2).
            t.partitions = array(s, false, 6, |s| {
                let mut p = OffsetDeleteResponsePartition::default();
                p.partition_index = s.int32()?;
                p.error_code = s.int16()?;
                Ok(p)
            })?;
            Ok(t)
        })?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_partition_count_is_refused_before_allocating() {
        // group "g", one topic "t" with i32::MAX partitions.
        let body =
            Bytes::from_static(&[0, 1, b'g', 0, 0, 0, 1, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<OffsetDeleteRequest>(body, 0),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn a_truncated_request_is_refused() {
        // A group id of 5 bytes with 1 left.
        let body = Bytes::from_static(&[0, 5, b'g']);
        assert!(matches!(
            decode_body::<OffsetDeleteRequest>(body, 0),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
