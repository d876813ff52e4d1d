//! DeleteGroups (api key 42): request and response v0–v2. Flexible from v2.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, GroupId};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;
const FLEXIBLE_VERSION: i16 = 2;

impl Decode for DeleteGroupsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteGroupsRequest::default();
        let name_bytes_min = if flexible { 1 } else { 2 };
        m.groups_names = array(s, flexible, name_bytes_min, |s| {
            s.string(flexible).map(GroupId)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DeleteGroupsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DeleteGroupsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.results = array(s, flexible, 3, |s| DeletableGroupResult::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DeletableGroupResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = DeletableGroupResult::default();
        r.group_id = GroupId(s.string(flexible)?);
        r.error_code = s.int16()?;
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_group_count_is_refused_before_allocating() {
        let body = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 1, b'g']);
        assert!(matches!(
            decode_body::<DeleteGroupsRequest>(body, 0),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
