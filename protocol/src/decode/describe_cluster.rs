//! DescribeCluster (api key 60): request v0–v2, response v0–v2. Flexible in every version.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::source::{array, no_known_tags};
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (older ones lay fields out differently).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=2;

const FLEXIBLE: bool = true;

impl Decode for DescribeClusterRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let mut m = DescribeClusterRequest::default();
        m.include_cluster_authorized_operations = s.boolean()?;
        if v >= 1 {
            m.endpoint_type = s.int8()?;
        }
        if v >= 2 {
            m.include_fenced_brokers = s.boolean()?;
        }
        no_known_tags(s, FLEXIBLE, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribeClusterResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let mut m = DescribeClusterResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.error_code = s.int16()?;
        m.error_message = s.nullable_string(FLEXIBLE)?;
        if v >= 1 {
            m.endpoint_type = s.int8()?;
        }
        m.cluster_id = s.string(FLEXIBLE)?;
        m.controller_id = BrokerId(s.int32()?);
        m.brokers = array(s, FLEXIBLE, 11, |s| DescribeClusterBroker::decode(s, v))?;
        m.cluster_authorized_operations = s.int32()?;
        no_known_tags(s, FLEXIBLE, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for DescribeClusterBroker {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        let mut b = DescribeClusterBroker::default();
        b.broker_id = BrokerId(s.int32()?);
        b.host = s.string(FLEXIBLE)?;
        b.port = s.int32()?;
        b.rack = s.nullable_string(FLEXIBLE)?;
        if v >= 2 {
            b.is_fenced = s.boolean()?;
        }
        no_known_tags(s, FLEXIBLE, &mut b.unknown_tagged_fields)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::decode_body;

    /// A v0 response up to the broker count: throttle, error, null message, cluster id "c",
    /// controller id.
    const V0_HEAD: [u8; 13] = [0, 0, 0, 0, 0, 0, 0, 2, b'c', 0, 0, 0, 1];

    #[test]
    fn a_huge_broker_count_is_refused_before_allocating() {
        let mut body = V0_HEAD.to_vec();
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode_body::<DescribeClusterResponse>(Bytes::from(body), 0),
            Err(DecodeError::CountTooLarge {
                count: 4294967294,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_body_is_refused() {
        // One broker whose rack is cut short (declares 4 bytes, has 1), then nothing.
        let mut body = V0_HEAD.to_vec();
        body.extend_from_slice(&[2, 0, 0, 0, 1, 2, b'h', 0, 0, 0x23, 0x84, 5, b'r']);
        assert!(matches!(
            decode_body::<DescribeClusterResponse>(Bytes::from(body), 0),
            Err(DecodeError::Truncated { needed: 4, left: 1 })
        ));
        // A v1 request without its endpoint type.
        let body = Bytes::from_static(&[1]);
        assert!(matches!(
            decode_body::<DescribeClusterRequest>(body, 1),
            Err(DecodeError::Truncated { needed: 1, left: 0 })
        ));
    }
}
