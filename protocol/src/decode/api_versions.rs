//! ApiVersions (api key 18): request v0–v4, response v0–v4. Flexible from v3.

use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (older ones lay fields out differently).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=4;

const FLEXIBLE_VERSION: i16 = 3;

impl Decode for ApiVersionsRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ApiVersionsRequest::default();
        if v >= 3 {
            m.client_software_name = s.string(flexible)?;
            m.client_software_version = s.string(flexible)?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for ApiVersionsResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = ApiVersionsResponse::default();
        m.error_code = s.int16()?;
        m.api_keys = array(s, flexible, 6, |s| ApiVersion::decode(s, v))?;
        if v >= 1 {
            m.throttle_time_ms = s.int32()?;
        }
        if flexible {
            // All four tagged fields exist from v3, the first flexible version.
            s.tagged_fields(&mut m.unknown_tagged_fields, |s, tag| match tag {
                0 => {
                    m.supported_features =
                        array(s, flexible, 6, |s| SupportedFeatureKey::decode(s, v))?;
                    Ok(true)
                }
                1 => {
                    m.finalized_features_epoch = s.int64()?;
                    Ok(true)
                }
                2 => {
                    m.finalized_features =
                        array(s, flexible, 6, |s| FinalizedFeatureKey::decode(s, v))?;
                    Ok(true)
                }
                3 => {
                    m.zk_migration_ready = s.boolean()?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        }
        Ok(m)
    }
}

impl Decode for ApiVersion {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut k = ApiVersion::default();
        k.api_key = s.int16()?;
        k.min_version = s.int16()?;
        k.max_version = s.int16()?;
        no_known_tags(s, flexible, &mut k.unknown_tagged_fields)?;
        Ok(k)
    }
}

// Only inside the response's tagged field 0, so only in flexible versions.
impl Decode for SupportedFeatureKey {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut f = SupportedFeatureKey::default();
        f.name = s.string(flexible)?;
        f.min_version = s.int16()?;
        f.max_version = s.int16()?;
        no_known_tags(s, flexible, &mut f.unknown_tagged_fields)?;
        Ok(f)
    }
}

// Only inside the response's tagged field 2, so only in flexible versions.
impl Decode for FinalizedFeatureKey {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let flexible = v >= FLEXIBLE_VERSION;
        let mut f = FinalizedFeatureKey::default();
        f.name = s.string(flexible)?;
        f.max_version_level = s.int16()?;
        f.min_version_level = s.int16()?;
        no_known_tags(s, flexible, &mut f.unknown_tagged_fields)?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    #[test]
    fn a_huge_api_key_count_is_refused_before_allocating() {
        // v0: error_code, then an api key count of i32::MAX with six bytes behind it.
        let body = Bytes::from_static(&[0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, 0, 12]);
        assert!(matches!(
            decode_body::<ApiVersionsResponse>(body, 0),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                left: 6,
                ..
            })
        ));
        // v3: a huge supported_features count inside tagged field 0.
        let body = Bytes::from_static(&[
            0, 0, 1, 0, 0, 0, 0, // error_code, no api keys, throttle_time_ms
            1, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f, // one tagged field: tag 0, 5 bytes
        ]);
        assert!(matches!(
            decode_body::<ApiVersionsResponse>(body, 3),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }

    #[test]
    fn tagged_fields_decode_and_a_truncated_body_is_refused() {
        // v3: finalized_features_epoch (tag 1) and zk_migration_ready (tag 3), tag 9 unknown.
        let body = Bytes::from_static(&[
            0, 0, 1, 0, 0, 0, 0, // error_code, no api keys, throttle_time_ms
            3, 1, 8, 0, 0, 0, 0, 0, 0, 0, 7, // three tagged fields; tag 1: epoch 7
            3, 1, 1, // tag 3: true
            9, 1, 42, // tag 9: unknown
        ]);
        let m = decode_body::<ApiVersionsResponse>(body, 3).unwrap();
        assert_eq!(m.finalized_features_epoch, 7);
        assert!(m.zk_migration_ready);
        assert_eq!(
            m.unknown_tagged_fields.get(&9).map(|b| &b[..]),
            Some(&[42u8][..])
        );

        // v1: throttle_time_ms cut short.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode_body::<ApiVersionsResponse>(body, 1),
            Err(DecodeError::Truncated { needed: 4, left: 2 })
        ));
        // v3 request: client_software_name declares 5 bytes, has 2.
        let body = Bytes::from_static(&[6, b'r', b'd']);
        assert!(matches!(
            decode_body::<ApiVersionsRequest>(body, 3),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
