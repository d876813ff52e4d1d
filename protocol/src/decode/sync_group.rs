//! SyncGroup (api key 14): request and response v0–v5. Flexible from v4.

use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{GroupId, SyncGroupRequest, SyncGroupResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=5;
const FLEXIBLE_VERSION: i16 = 4;

impl Decode for SyncGroupRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = SyncGroupRequest::default();
        m.group_id = GroupId(s.string(flexible)?);
        m.generation_id = s.int32()?;
        m.member_id = s.string(flexible)?;
        if v >= 3 {
            m.group_instance_id = s.nullable_string(flexible)?;
        }
        if v >= 5 {
            m.protocol_type = s.nullable_string(flexible)?;
            m.protocol_name = s.nullable_string(flexible)?;
        }
        let assignment_bytes_min = if flexible { 2 } else { 6 };
        m.assignments = array(s, flexible, assignment_bytes_min, |s| {
            SyncGroupRequestAssignment::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for SyncGroupRequestAssignment {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut a = SyncGroupRequestAssignment::default();
        a.member_id = s.string(flexible)?;
        a.assignment = s.bytes(flexible)?;
        no_known_tags(s, flexible, &mut a.unknown_tagged_fields)?;
        Ok(a)
    }
}

impl Decode for SyncGroupResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = SyncGroupResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        m.error_code = s.int16()?;
        if v >= 5 {
            m.protocol_type = s.nullable_string(flexible)?;
            m.protocol_name = s.nullable_string(flexible)?;
        }
        m.assignment = s.bytes(flexible)?;
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
    fn a_huge_assignment_count_is_refused_before_allocating() {
        // v4: group "g", generation, member "m", instance null, then a huge compact count.
        let body = Bytes::from_static(&[
            2, b'g', 0, 0, 0, 1, 2, b'm', 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ]);
        assert!(matches!(
            decode_body::<SyncGroupRequest>(body, 4),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
