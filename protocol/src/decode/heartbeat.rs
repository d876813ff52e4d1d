//! Heartbeat (api key 12): request and response v0–v4. Flexible from v4.

use kafka_protocol::messages::{GroupId, HeartbeatRequest, HeartbeatResponse};

use super::source::no_known_tags;
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=4;
const FLEXIBLE_VERSION: i16 = 4;

impl Decode for HeartbeatRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = HeartbeatRequest::default();
        m.group_id = GroupId(s.string(flexible)?);
        m.generation_id = s.int32()?;
        m.member_id = s.string(flexible)?;
        if v >= 3 {
            m.group_instance_id = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for HeartbeatResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = HeartbeatResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        m.error_code = s.int16()?;
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
    fn a_truncated_heartbeat_is_refused() {
        // v0: group "g", then only two bytes of the generation.
        let body = Bytes::from_static(&[0, 1, b'g', 0, 0]);
        assert!(matches!(
            decode_body::<HeartbeatRequest>(body, 0),
            Err(DecodeError::Truncated { needed: 4, left: 2 })
        ));
    }
}
