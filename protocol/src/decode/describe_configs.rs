//! DescribeConfigs (api key 32): request and response v1–v4 (`kafka-protocol`'s range).
//! Flexible from v4.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use super::source::{array, no_known_tags, nullable_array};
use super::{Decode, DecodeError, Source};

const FLEXIBLE_VERSION: i16 = 4;
/// v0 responses carry `is_default` instead of `config_source` and no synonyms, which
/// `kafka-protocol`'s structs cannot hold, so v0 is refused.
const VERSION_MIN: i16 = 1;
const VERSION_MAX: i16 = 4;

/// The versions these decoders know.
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = VERSION_MIN..=VERSION_MAX;

impl Decode for DescribeConfigsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DescribeConfigsRequest::default();
        m.resources = array(s, flexible, 4, |s| DescribeConfigsResource::decode(s, v))?;
        m.include_synonyms = s.boolean()?;
        if v >= 3 {
            m.include_documentation = s.boolean()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribeConfigsResource {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = DescribeConfigsResource::default();
        r.resource_type = s.int8()?;
        r.resource_name = s.string(flexible)?;
        // Null asks for every key.
        r.configuration_keys = nullable_array(s, flexible, 1, |s| s.string(flexible))?;
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

impl Decode for DescribeConfigsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = DescribeConfigsResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.results = array(s, flexible, 7, |s| DescribeConfigsResult::decode(s, v))?;
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribeConfigsResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut r = DescribeConfigsResult::default();
        r.error_code = s.int16()?;
        r.error_message = s.nullable_string(flexible)?;
        r.resource_type = s.int8()?;
        r.resource_name = s.string(flexible)?;
        r.configs = array(s, flexible, 9, |s| {
            DescribeConfigsResourceResult::decode(s, v)
        })?;
        no_known_tags(s, flexible, &mut r.unknown_tagged_fields)?;
        Ok(r)
    }
}

impl Decode for DescribeConfigsResourceResult {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut c = DescribeConfigsResourceResult::default();
        c.name = s.string(flexible)?;
        c.value = s.nullable_string(flexible)?;
        c.read_only = s.boolean()?;
        c.config_source = s.int8()?;
        c.is_sensitive = s.boolean()?;
        c.synonyms = array(s, flexible, 4, |s| DescribeConfigsSynonym::decode(s, v))?;
        if v >= 3 {
            c.config_type = s.int8()?;
            c.documentation = s.nullable_string(flexible)?;
        }
        no_known_tags(s, flexible, &mut c.unknown_tagged_fields)?;
        Ok(c)
    }
}

impl Decode for DescribeConfigsSynonym {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut y = DescribeConfigsSynonym::default();
        y.name = s.string(flexible)?;
        y.value = s.nullable_string(flexible)?;
        y.source = s.int8()?;
        no_known_tags(s, flexible, &mut y.unknown_tagged_fields)?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::decode_body;
    use super::*;

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        // v1: one topic resource "t" asking for i32::MAX keys.
        let body = Bytes::from_static(&[
            0, 0, 0, 1, 2, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        assert!(matches!(
            decode_body::<DescribeConfigsRequest>(body, 1),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                ..
            })
        ));
        // v4 response: one result (no error, null message, resource "t") with a compact
        // count of u32::MAX - 1 configs.
        let body = Bytes::from_static(&[
            0, 0, 0, 0, 2, 0, 0, 0, 2, 2, b't', 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0,
        ]);
        assert!(matches!(
            decode_body::<DescribeConfigsResponse>(body, 4),
            Err(DecodeError::CountTooLarge {
                count: 4294967294,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // v3: no resources, include_synonyms, then include_documentation missing.
        let body = Bytes::from_static(&[0, 0, 0, 0, 1]);
        assert!(matches!(
            decode_body::<DescribeConfigsRequest>(body, 3),
            Err(DecodeError::Truncated { needed: 1, left: 0 })
        ));
        // v2 response: one result whose resource name claims 8 bytes but has 3.
        let body = Bytes::from_static(&[
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xff, 0xff, 2, 0, 8, b'a', b'b', b'c',
        ]);
        assert!(matches!(
            decode_body::<DescribeConfigsResponse>(body, 2),
            Err(DecodeError::Truncated { needed: 8, left: 3 })
        ));
    }
}
