//! JoinGroup (api key 11): request and response v0–v9. Flexible from v6.

use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{GroupId, JoinGroupRequest, JoinGroupResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=9;
const FLEXIBLE_VERSION: i16 = 6;

impl Decode for JoinGroupRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = JoinGroupRequest::default();
        m.group_id = GroupId(s.string(flexible)?);
        m.session_timeout_ms = s.int32()?;
        if v >= 1 {
            m.rebalance_timeout_ms = s.int32()?;
        }
        m.member_id = s.string(flexible)?;
        if v >= 5 {
            m.group_instance_id = s.nullable_string(flexible)?;
        }
        m.protocol_type = s.string(flexible)?;
        // name and metadata: at least two bytes (compact) or six.
        let protocol_bytes_min = if flexible { 2 } else { 6 };
        m.protocols = array(s, flexible, protocol_bytes_min, |s| {
            JoinGroupRequestProtocol::decode(s, v)
        })?;
        if v >= 8 {
            m.reason = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for JoinGroupRequestProtocol {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut p = JoinGroupRequestProtocol::default();
        p.name = s.string(flexible)?;
        p.metadata = s.bytes(flexible)?;
        no_known_tags(s, flexible, &mut p.unknown_tagged_fields)?;
        Ok(p)
    }
}

impl Decode for JoinGroupResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = JoinGroupResponse::default();
        if v >= 2 {
            m.throttle_time_ms = s.int32()?;
        }
        m.error_code = s.int16()?;
        m.generation_id = s.int32()?;
        if v >= 7 {
            m.protocol_type = s.nullable_string(flexible)?;
        }
        // Nullable from v7; a plain string before.
        m.protocol_name = if v >= 7 {
            s.nullable_string(flexible)?
        } else {
            Some(s.string(flexible)?)
        };
        m.leader = s.string(flexible)?;
        if v >= 9 {
            m.skip_assignment = s.boolean()?;
        }
        m.member_id = s.string(flexible)?;
        let member_bytes_min = if flexible { 3 } else { 6 };
        m.members = array(s, flexible, member_bytes_min, |s| {
            JoinGroupResponseMember::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for JoinGroupResponseMember {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut member = JoinGroupResponseMember::default();
        member.member_id = s.string(flexible)?;
        if v >= 5 {
            member.group_instance_id = s.nullable_string(flexible)?;
        }
        member.metadata = s.bytes(flexible)?;
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
    fn a_huge_protocol_count_is_refused_before_allocating() {
        // v1: group "g", session and rebalance timeouts, member "", protocol type "c",
        // then i32::MAX protocols.
        let body = Bytes::from_static(&[
            0, 1, b'g', 0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10, 0, 0, 0, 1, b'c', 0x7f, 0xff, 0xff,
            0xff,
        ]);
        assert!(matches!(
            decode_body::<JoinGroupRequest>(body, 1),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn protocol_metadata_longer_than_the_body_is_refused() {
        // v0: group "g", session timeout, member "", type "c", one protocol "r" whose
        // metadata claims 1 MiB.
        let body = Bytes::from_static(&[
            0, 1, b'g', 0, 0, 0x27, 0x10, 0, 0, 0, 1, b'c', 0, 0, 0, 1, 0, 1, b'r', 0, 0x10, 0, 0,
        ]);
        assert!(matches!(
            decode_body::<JoinGroupRequest>(body, 0),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
