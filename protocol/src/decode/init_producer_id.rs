//! InitProducerId (api key 22): request and response v0–v5. Flexible from v2; the
//! request names the producer's current id and epoch from v3 (KIP-360).

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, TransactionalId,
};

use super::source::no_known_tags;
use super::{Decode, DecodeError, Source};

/// The versions these decoders know (v6's two-phase-commit fields are not served).
const KNOWN_VERSIONS: std::ops::RangeInclusive<i16> = 0..=5;
const FLEXIBLE_VERSION: i16 = 2;

impl Decode for InitProducerIdRequest {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = InitProducerIdRequest::default();
        m.transactional_id = s.nullable_string(flexible)?.map(TransactionalId);
        m.transaction_timeout_ms = s.int32()?;
        if v >= 3 {
            m.producer_id = ProducerId(s.int64()?);
            m.producer_epoch = s.int16()?;
        }
        no_known_tags(s, flexible, &mut m.unknown_tagged_fields)?;
        Ok(m)
    }
}

impl Decode for InitProducerIdResponse {
    fn decode<S: Source>(s: &mut S, v: i16) -> Result<Self, DecodeError> {
        super::check_version(v, KNOWN_VERSIONS)?;
        let flexible = v >= FLEXIBLE_VERSION;
        let mut m = InitProducerIdResponse::default();
        m.throttle_time_ms = s.int32()?;
        m.error_code = s.int16()?;
        m.producer_id = ProducerId(s.int64()?);
        m.producer_epoch = s.int16()?;
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
    fn a_v3_request_names_the_current_producer_id_and_epoch() {
        // transactional_id null (compact: 0), timeout 60000, producer id 7, epoch 2, no tags.
        let mut body = vec![0u8];
        body.extend_from_slice(&60_000i32.to_be_bytes());
        body.extend_from_slice(&7i64.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.push(0);
        let m = decode_body::<InitProducerIdRequest>(Bytes::from(body.clone()), 3).unwrap();
        assert_eq!(m.transactional_id, None);
        assert_eq!(m.producer_id, ProducerId(7));
        assert_eq!(m.producer_epoch, 2);
        body.truncate(body.len() - 3);
        assert!(decode_body::<InitProducerIdRequest>(Bytes::from(body), 3).is_err());
    }
}
