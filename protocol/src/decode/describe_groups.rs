//! DescribeGroups (api key 15): request and response v0–v6. Flexible from v5.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, GroupId};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=6;
const FLEXIBLE_VERSION: i16 = 5;

impl Decode for DescribeGroupsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DescribeGroupsRequest::default();
        let group_bytes_min = if flexible { 1 } else { 2 };
        m.groups = array(s, flexible, group_bytes_min, |s| {
            s.string(flexible).map(GroupId)
        })?;
        if v >= 3 {
            m.include_authorized_operations = s.boolean()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribeGroupsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DescribeGroupsResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        m.groups = array(s, flexible, 7, |s| DescribedGroup::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribedGroup {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut g = DescribedGroup::default();
        g.error_code = s.int16()?;
        if v >= 6 {
            g.error_message = s.nullable_string(flexible)?;
        }
        g.group_id = GroupId(s.string(flexible)?);
        g.group_state = s.string(flexible)?;
        g.protocol_type = s.string(flexible)?;
        g.protocol_data = s.string(flexible)?;
        let member_bytes_min = if flexible { 6 } else { 16 };
        g.members = array(s, flexible, member_bytes_min, |s| {
            DescribedGroupMember::decode(s, v)
        })?;
        if v >= 3 {
            g.authorized_operations = s.int32()?;
        }
        no_known_tags(s, flexible, &mut g.unknown_tagged_fields)?;
        Ok(g)
    }
}

impl Decode for DescribedGroupMember {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DescribedGroupMember::default();
        m.member_id = s.string(flexible)?;
        if v >= 4 {
            m.group_instance_id = s.nullable_string(flexible)?;
        }
        m.client_id = s.string(flexible)?;
        m.client_host = s.string(flexible)?;
        m.member_metadata = s.bytes(flexible)?;
        m.member_assignment = s.bytes(flexible)?;
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
    fn a_huge_group_count_is_refused_before_allocating() {
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_body::<DescribeGroupsRequest>(body, 0),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
