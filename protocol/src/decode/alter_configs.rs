//! AlterConfigs (api key 33): request and response v0–v2. Flexible from v2.

use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 2;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

impl Decode for AlterConfigsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = AlterConfigsRequest::default();
        // type (1) + name (1) + configs (1) + tags (1), flexible; more otherwise.
        m.resources = array(s, flexible, 4, |s| AlterConfigsResource::decode(s, v))?;
        m.validate_only = s.boolean()?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for AlterConfigsResource {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = AlterConfigsResource::default();
        r.resource_type = s.int8()?;
        r.resource_name = s.string(flexible)?;
        // name (1) + value (1) + tags (1), flexible; 4 otherwise.
        r.configs = array(s, flexible, 3, |s| AlterableConfig::decode(s, v))?;
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

impl Decode for AlterableConfig {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut c = AlterableConfig::default();
        c.name = s.string(flexible)?;
        c.value = s.nullable_string(flexible)?;
        no_known_tags(s, flexible, &mut c.unknown_tagged_fields)?;
        Ok(c)
    }
}

impl Decode for AlterConfigsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = AlterConfigsResponse::default();
        m.throttle_time_ms = s.int32()?;
        // error (2) + message (1) + type (1) + name (1) + tags (1), flexible.
        m.responses = array(s, flexible, 6, |s| {
            AlterConfigsResourceResponse::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for AlterConfigsResourceResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = AlterConfigsResourceResponse::default();
        r.error_code = s.int16()?;
        r.error_message = s.nullable_string(flexible)?;
        r.resource_type = s.int8()?;
        r.resource_name = s.string(flexible)?;
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
    fn a_huge_config_count_is_refused_before_allocating() {
        // v0: one topic resource "t" claiming i32::MAX configs.
        let body = Bytes::from_static(&[0, 0, 0, 1, 2, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff, 0]);
        assert!(matches!(
            decode_body::<AlterConfigsRequest>(body, 0),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
