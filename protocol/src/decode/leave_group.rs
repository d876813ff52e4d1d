//! LeaveGroup (api key 13): request and response v0–v5. Flexible from v4; v3+ leave a
//! batch of members.

use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{GroupId, LeaveGroupRequest, LeaveGroupResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=5;
const FLEXIBLE_VERSION: i16 = 4;
/// From this version members leave in a batch.
const BATCHED_VERSION: i16 = 3;

impl Decode for LeaveGroupRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = LeaveGroupRequest::default();
        m.group_id = GroupId(s.string(flexible)?);
        if v < BATCHED_VERSION {
            m.member_id = s.string(flexible)?;
        } else {
            let member_bytes_min = if flexible { 2 } else { 4 };
            m.members = array(s, flexible, member_bytes_min, |s| {
                MemberIdentity::decode(s, v)
            })?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for MemberIdentity {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut member = MemberIdentity::default();
        member.member_id = s.string(flexible)?;
        member.group_instance_id = s.nullable_string(flexible)?;
        if v >= 5 {
            member.reason = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut member.unknown_tagged_fields)?;
        Ok(member)
    }
}

impl Decode for LeaveGroupResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = LeaveGroupResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        m.error_code = s.int16()?;
        if v >= BATCHED_VERSION {
            let member_bytes_min = if flexible { 4 } else { 6 };
            m.members = array(s, flexible, member_bytes_min, |s| {
                MemberResponse::decode(s, v)
            })?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for MemberResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut member = MemberResponse::default();
        member.member_id = s.string(flexible)?;
        member.group_instance_id = s.nullable_string(flexible)?;
        member.error_code = s.int16()?;
        no_known_tags(s, flexible, &mut member.unknown_tagged_fields)?;
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_member_count_is_refused_before_allocating() {
        // v3: group "g", then i32::MAX members.
        let body = Bytes::from_static(&[0, 1, b'g', 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<LeaveGroupRequest>(body, 3),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
