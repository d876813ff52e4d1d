//! DeleteRecords (api key 21): request and response v0–v2. Flexible from v2.

use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 2;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

impl Decode for DeleteRecordsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteRecordsRequest::default();
        // name (1) + partitions (1) + tags (1), flexible; 6 otherwise.
        m.topics = array(s, flexible, 3, |s| {
            let mut t = DeleteRecordsTopic::default();
            t.name = TopicName(s.string(flexible)?);
            // partition (4) + offset (8).
            t.partitions = array(s, flexible, 12, |s| {
                let mut p = DeleteRecordsPartition::default();
                p.partition_index = s.int32()?;
                p.offset = s.int64()?;
                no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
                Ok(p)
            })?;
            no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
            Ok(t)
        })?;
        m.timeout_ms = s.int32()?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DeleteRecordsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteRecordsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.topics = array(s, flexible, 3, |s| {
            let mut t = DeleteRecordsTopicResult::default();
            t.name = TopicName(s.string(flexible)?);
            // partition (4) + low watermark (8) + error (2).
            t.partitions = array(s, flexible, 14, |s| {
                let mut p = DeleteRecordsPartitionResult::default();
                p.partition_index = s.int32()?;
                p.low_watermark = s.int64()?;
                p.error_code = s.int16()?;
                no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
                Ok(p)
            })?;
            no_known_tags(s, flexible, &mut t.unknown_tagged_fields)?;
            Ok(t)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
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
        // v0: one topic "t" claiming i32::MAX partitions.
        let body = Bytes::from_static(&[0, 0, 0, 1, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<DeleteRecordsRequest>(body, 0),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
