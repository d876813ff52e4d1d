//! ListGroups (api key 16): request and response v0–v5. Flexible from v3; v4 filters by
//! state, v5 by type.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=5;
const FLEXIBLE_VERSION: i16 = 3;

impl Decode for ListGroupsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ListGroupsRequest::default();
        if v >= 4 {
            m.states_filter = array(s, flexible, 1, |s| s.string(flexible))?;
        }
        if v >= 5 {
            m.types_filter = array(s, flexible, 1, |s| s.string(flexible))?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for ListGroupsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ListGroupsResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        m.error_code = s.int16()?;
        m.groups = array(s, flexible, 2, |s| ListedGroup::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for ListedGroup {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut g = ListedGroup::default();
        g.group_id = GroupId(s.string(flexible)?);
        g.protocol_type = s.string(flexible)?;
        if v >= 4 {
            g.group_state = s.string(flexible)?;
        }
        if v >= 5 {
            g.group_type = s.string(flexible)?;
        }
        no_known_tags(s, flexible, &mut g.unknown_tagged_fields)?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_state_filter_count_is_refused_before_allocating() {
        let body = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0]);
        assert!(matches!(
            decode_body::<ListGroupsRequest>(body, 4),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
