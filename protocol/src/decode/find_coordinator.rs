//! FindCoordinator (api key 10): request and response v0–v6. Flexible from v3; v4+ batch
//! their keys (`coordinator_keys`, one `Coordinator` per key in the response).

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=6;
const FLEXIBLE_VERSION: i16 = 3;
/// From this version keys come in a batch.
const BATCHED_VERSION: i16 = 4;

impl Decode for FindCoordinatorRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = FindCoordinatorRequest::default();
        if v < BATCHED_VERSION {
            m.key = s.string(flexible)?;
        }
        if v >= 1 {
            m.key_type = s.int8()?;
        }
        if v >= BATCHED_VERSION {
            m.coordinator_keys = array(s, flexible, 1, |s| s.string(flexible))?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for FindCoordinatorResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = FindCoordinatorResponse::default();
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        if v < BATCHED_VERSION {
            m.error_code = s.int16()?;
            if v >= 1 {
                m.error_message = s.nullable_string(flexible)?;
            }
            m.node_id = BrokerId(s.int32()?);
            m.host = s.string(flexible)?;
            m.port = s.int32()?;
        } else {
            // key, node id, host, port, error code, error message: at least 14 bytes.
            m.coordinators = array(s, flexible, 14, |s| Coordinator::decode(s, v))?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for Coordinator {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut c = Coordinator::default();
        c.key = s.string(flexible)?;
        c.node_id = BrokerId(s.int32()?);
        c.host = s.string(flexible)?;
        c.port = s.int32()?;
        c.error_code = s.int16()?;
        c.error_message = s.nullable_string(flexible)?;
        no_known_tags(s, flexible, &mut c.unknown_tagged_fields)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_key_count_is_refused_before_allocating() {
        // v4: a compact count of u32::MAX - 1 keys after the key type.
        let body = Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]);
        assert!(matches!(
            decode_body::<FindCoordinatorRequest>(body, 4),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn a_key_longer_than_the_body_is_refused() {
        // v1: a key of 10,000 bytes announced, 2 sent.
        let body = Bytes::from_static(&[0x27, 0x10, b'a', b'b']);
        assert!(matches!(
            decode_body::<FindCoordinatorRequest>(body, 1),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
