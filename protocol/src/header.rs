//! Request and response headers (request header v0–v2, response header v0–v1).
//!
//! Rill parses request headers itself instead of using `kafka-protocol`'s decoder: the header
//! decides which codec and version decode the body, every read here is bounds-checked, and an
//! api key or version we do not serve still yields the correlation id needed to answer
//! UNSUPPORTED_VERSION.
//!
//! Wire layout (all big-endian):
//! * request v0: `api_key i16, api_version i16, correlation_id i32`
//! * request v1: v0 + `client_id` as a nullable *non-compact* string (i16 length, -1 = null)
//! * request v2: v1 + tagged fields (a varint count, then `tag, size, bytes` per field);
//!   the client id stays non-compact even in v2, as in Kafka.
//! * response v0: `correlation_id i32`; response v1: v0 + tagged fields.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::versions;

/// A parsed request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// The api key (which request this is).
    pub api_key: i16,
    /// The version of the request body.
    pub api_version: i16,
    /// Echoed in the response so the client can match it to the request.
    pub correlation_id: i32,
    /// The client's self-chosen name (header v1+; `None` if null or header v0).
    pub client_id: Option<String>,
}

fn read_i16(buf: &mut Bytes, field: &'static str) -> Result<i16, ProtocolError> {
    if buf.remaining() < 2 {
        return Err(ProtocolError::TruncatedHeader { field });
    }
    Ok(buf.get_i16())
}

fn read_i32(buf: &mut Bytes, field: &'static str) -> Result<i32, ProtocolError> {
    if buf.remaining() < 4 {
        return Err(ProtocolError::TruncatedHeader { field });
    }
    Ok(buf.get_i32())
}

/// Reads an unsigned varint of at most 5 bytes (a u32).
pub(crate) fn read_uvarint(buf: &mut Bytes, field: &'static str) -> Result<u32, ProtocolError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        if !buf.has_remaining() {
            return Err(ProtocolError::TruncatedHeader { field });
        }
        let b = buf.get_u8();
        if i == 4 && b > 0x0f {
            return Err(ProtocolError::InvalidHeaderLength {
                field,
                len: i64::from(b),
            });
        }
        value |= u32::from(b & 0x7f) << (i * 7);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Ok(value)
}

/// Writes an unsigned varint.
pub(crate) fn put_uvarint(buf: &mut impl BufMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// Skips a tagged-field section (header v2 / response header v1), checking every size.
fn skip_tagged_fields(buf: &mut Bytes) -> Result<(), ProtocolError> {
    let count = read_uvarint(buf, "tagged field count")?;
    // Every field takes at least two bytes (tag and size), so a count beyond the bytes left
    // is a lie; refusing it early bounds the loop by the frame size.
    if count as usize > buf.remaining() / 2 {
        return Err(ProtocolError::TruncatedHeader {
            field: "tagged fields",
        });
    }
    for _ in 0..count {
        let _tag = read_uvarint(buf, "tagged field tag")?;
        let size = read_uvarint(buf, "tagged field size")? as usize;
        if buf.remaining() < size {
            return Err(ProtocolError::TruncatedHeader {
                field: "tagged field value",
            });
        }
        buf.advance(size);
    }
    Ok(())
}

fn read_client_id(buf: &mut Bytes) -> Result<Option<String>, ProtocolError> {
    const FIELD: &str = "client_id";
    let len = read_i16(buf, FIELD)?;
    match len {
        -1 => Ok(None),
        len if len < -1 => Err(ProtocolError::InvalidHeaderLength {
            field: FIELD,
            len: i64::from(len),
        }),
        len => {
            let len = len as usize;
            if buf.remaining() < len {
                return Err(ProtocolError::TruncatedHeader { field: FIELD });
            }
            let raw = buf.split_to(len);
            // The length is checked against the bytes present, so this allocation is bounded
            // by the frame.
            let s = std::str::from_utf8(&raw)
                .map_err(|_| ProtocolError::InvalidUtf8 { field: FIELD })?;
            Ok(Some(s.to_owned()))
        }
    }
}

/// Parses the request header at the front of `frame` (a frame payload without its size
/// prefix) and advances `frame` to the start of the body.
///
/// The header version comes from the api key and version (see
/// [`versions::request_header_version`]), so this succeeds for api keys and versions Rill does
/// not serve: check [`versions::is_supported`] next and answer UNSUPPORTED_VERSION with the
/// returned correlation id.
pub fn parse_request_header(frame: &mut Bytes) -> Result<RequestHeader, ProtocolError> {
    let api_key = read_i16(frame, "api_key")?;
    let api_version = read_i16(frame, "api_version")?;
    let correlation_id = read_i32(frame, "correlation_id")?;
    let header_version = versions::request_header_version(api_key, api_version);
    let client_id = if header_version >= 1 {
        read_client_id(frame)?
    } else {
        None
    };
    if header_version >= 2 {
        skip_tagged_fields(frame)?;
    }
    Ok(RequestHeader {
        api_key,
        api_version,
        correlation_id,
        client_id,
    })
}

/// Reads only the correlation id of a request frame, for answering a request whose header
/// could not be parsed in full. `None` if the frame is shorter than 8 bytes.
pub fn peek_correlation_id(frame: &[u8]) -> Option<i32> {
    let bytes: [u8; 4] = frame.get(4..8)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

/// The encoded size of a request header.
pub fn request_header_len(header: &RequestHeader) -> usize {
    let version = versions::request_header_version(header.api_key, header.api_version);
    let mut len = 8;
    if version >= 1 {
        len += 2 + header.client_id.as_ref().map_or(0, String::len);
    }
    if version >= 2 {
        len += 1;
    }
    len
}

/// Writes a request header (client side), choosing v0/v1/v2 from the api key and version.
///
/// Fails if the client id is longer than an i16 length can describe.
pub fn encode_request_header(
    buf: &mut BytesMut,
    header: &RequestHeader,
) -> Result<(), ProtocolError> {
    let version = versions::request_header_version(header.api_key, header.api_version);
    buf.put_i16(header.api_key);
    buf.put_i16(header.api_version);
    buf.put_i32(header.correlation_id);
    if version >= 1 {
        match &header.client_id {
            None => buf.put_i16(-1),
            Some(id) => {
                let len = i16::try_from(id.len()).map_err(|_| ProtocolError::Encode {
                    api_key: header.api_key,
                    api_version: header.api_version,
                    reason: format!("client id of {} bytes is too long", id.len()),
                })?;
                buf.put_i16(len);
                buf.put_slice(id.as_bytes());
            }
        }
    }
    if version >= 2 {
        // No tagged fields: never write a tagged field with its default value.
        put_uvarint(buf, 0);
    }
    Ok(())
}

/// The encoded size of a response header.
pub fn response_header_len(flexible: bool) -> usize {
    if flexible {
        5
    } else {
        4
    }
}

/// Writes a response header: the correlation id, then (if `flexible`, header v1) an empty
/// tagged-field section. Use [`versions::is_flexible_response`] to choose `flexible`.
pub fn write_response_header(buf: &mut BytesMut, correlation_id: i32, flexible: bool) {
    buf.put_i32(correlation_id);
    if flexible {
        put_uvarint(buf, 0);
    }
}

/// Parses a response header (client side) for a request sent with `api_key`/`api_version`,
/// returning the correlation id and advancing `frame` to the body.
pub fn parse_response_header(
    frame: &mut Bytes,
    api_key: i16,
    api_version: i16,
) -> Result<i32, ProtocolError> {
    let correlation_id = read_i32(frame, "correlation_id")?;
    if versions::is_flexible_response(api_key, api_version) {
        skip_tagged_fields(frame)?;
    }
    Ok(correlation_id)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // kafka-protocol's decoder is the reference here
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn kp_header(key: ApiKey, version: i16, client_id: Option<&'static str>) -> BytesMut {
        let header = kafka_protocol::messages::RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(0x0102_0304)
            .with_client_id(client_id.map(StrBytes::from_static_str));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        buf
    }

    #[test]
    fn parses_headers_encoded_by_kafka_protocol_in_every_version() {
        for (key, version) in [
            (ApiKey::Produce, 3),
            (ApiKey::Produce, 9),
            (ApiKey::Fetch, 11),
            (ApiKey::Fetch, 16),
            (ApiKey::ApiVersions, 0),
            (ApiKey::ApiVersions, 4),
            (ApiKey::Metadata, 12),
        ] {
            for client_id in [None, Some(""), Some("rdkafka")] {
                let mut frame = kp_header(key, version, client_id);
                frame.put_slice(b"BODY");
                let mut frame = frame.freeze();
                let header = parse_request_header(&mut frame).unwrap();
                assert_eq!(header.api_key, key as i16);
                assert_eq!(header.api_version, version);
                assert_eq!(header.correlation_id, 0x0102_0304);
                assert_eq!(header.client_id.as_deref(), client_id);
                assert_eq!(&frame[..], b"BODY", "{key:?} v{version}");
            }
        }
    }

    #[test]
    fn our_request_header_round_trips_and_matches_kafka_protocol() {
        for (key, version) in [
            (ApiKey::Fetch, 4),
            (ApiKey::Fetch, 12),
            (ApiKey::ApiVersions, 3),
        ] {
            let header = RequestHeader {
                api_key: key as i16,
                api_version: version,
                correlation_id: 0x0102_0304,
                client_id: Some("rdkafka".into()),
            };
            let mut ours = BytesMut::new();
            encode_request_header(&mut ours, &header).unwrap();
            assert_eq!(ours.len(), request_header_len(&header));
            assert_eq!(ours, kp_header(key, version, Some("rdkafka")));
            let mut frozen = ours.freeze();
            assert_eq!(parse_request_header(&mut frozen).unwrap(), header);
            assert!(frozen.is_empty());
        }
    }

    #[test]
    fn header_v2_tagged_fields_are_skipped() {
        let mut buf = BytesMut::new();
        buf.put_i16(ApiKey::Fetch as i16);
        buf.put_i16(12);
        buf.put_i32(7);
        buf.put_i16(-1);
        put_uvarint(&mut buf, 2);
        put_uvarint(&mut buf, 0);
        put_uvarint(&mut buf, 3);
        buf.put_slice(b"abc");
        put_uvarint(&mut buf, 300);
        put_uvarint(&mut buf, 0);
        buf.put_slice(b"rest");
        let mut frame = buf.freeze();
        let header = parse_request_header(&mut frame).unwrap();
        assert_eq!(header.correlation_id, 7);
        assert_eq!(header.client_id, None);
        assert_eq!(&frame[..], b"rest");
    }

    #[test]
    fn every_truncation_of_a_header_is_a_typed_error() {
        let full = kp_header(ApiKey::Fetch, 12, Some("client")).freeze();
        for len in 0..full.len() {
            let mut frame = full.slice(..len);
            let err = parse_request_header(&mut frame).unwrap_err();
            assert!(
                matches!(err, ProtocolError::TruncatedHeader { .. }),
                "len {len}: {err}"
            );
        }
    }

    #[test]
    fn garbage_headers_are_rejected() {
        // client id length -2
        let mut buf = BytesMut::new();
        buf.put_i16(ApiKey::Metadata as i16);
        buf.put_i16(1);
        buf.put_i32(1);
        buf.put_i16(-2);
        let err = parse_request_header(&mut buf.freeze()).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidHeaderLength { .. }));

        // client id not UTF-8
        let mut buf = BytesMut::new();
        buf.put_i16(ApiKey::Metadata as i16);
        buf.put_i16(1);
        buf.put_i32(1);
        buf.put_i16(2);
        buf.put_slice(&[0xff, 0xfe]);
        let err = parse_request_header(&mut buf.freeze()).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidUtf8 { .. }));

        // huge tagged field count in 9 bytes
        let mut buf = BytesMut::new();
        buf.put_i16(ApiKey::Fetch as i16);
        buf.put_i16(12);
        buf.put_i32(1);
        buf.put_i16(-1);
        buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let err = parse_request_header(&mut buf.freeze()).unwrap_err();
        assert!(matches!(err, ProtocolError::TruncatedHeader { .. }));

        // varint longer than 5 bytes / overflowing u32
        let mut buf = BytesMut::new();
        buf.put_i16(ApiKey::Fetch as i16);
        buf.put_i16(12);
        buf.put_i32(1);
        buf.put_i16(-1);
        buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(parse_request_header(&mut buf.freeze()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_request_header_round_trips(
            api_key in proptest::prelude::any::<i16>(),
            api_version in proptest::prelude::any::<i16>(),
            correlation_id in proptest::prelude::any::<i32>(),
            client_id in proptest::option::of("\\PC{0,40}"),
        ) {
            let header = RequestHeader { api_key, api_version, correlation_id, client_id };
            let mut buf = BytesMut::new();
            encode_request_header(&mut buf, &header).unwrap();
            proptest::prop_assert_eq!(buf.len(), request_header_len(&header));
            buf.put_slice(b"body");
            let mut frame = buf.freeze();
            let parsed = parse_request_header(&mut frame).unwrap();
            // Header v0 (no client id) exists only for ControlledShutdown v0.
            if versions::request_header_version(api_key, api_version) >= 1 {
                proptest::prop_assert_eq!(parsed, header);
            } else {
                proptest::prop_assert_eq!(parsed.correlation_id, correlation_id);
            }
            proptest::prop_assert_eq!(&frame[..], b"body");
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_header_parsers(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_request_header(&mut Bytes::from(data.clone()));
            let _ = parse_response_header(&mut Bytes::from(data), ApiKey::Fetch as i16, 12);
        }
    }

    #[test]
    fn unknown_api_keys_still_yield_the_correlation_id() {
        let mut buf = BytesMut::new();
        buf.put_i16(4242);
        buf.put_i16(77);
        buf.put_i32(99);
        buf.put_i16(3);
        buf.put_slice(b"abc");
        let header = parse_request_header(&mut buf.freeze()).unwrap();
        assert_eq!(header.correlation_id, 99);
        assert_eq!(header.client_id.as_deref(), Some("abc"));
        assert_eq!(peek_correlation_id(&[0, 1, 0, 2, 0, 0, 0, 99]), Some(99));
        assert_eq!(peek_correlation_id(&[0, 1, 0, 2, 0, 0, 0]), None);
    }

    #[test]
    fn response_headers_match_kafka_protocol() {
        for flexible in [false, true] {
            let mut ours = BytesMut::new();
            write_response_header(&mut ours, -5, flexible);
            assert_eq!(ours.len(), response_header_len(flexible));
            let theirs =
                kafka_protocol::messages::ResponseHeader::default().with_correlation_id(-5);
            let mut buf = BytesMut::new();
            theirs.encode(&mut buf, i16::from(flexible)).unwrap();
            assert_eq!(ours, buf);
            let mut b = buf.clone().freeze();
            let decoded =
                kafka_protocol::messages::ResponseHeader::decode(&mut b, i16::from(flexible))
                    .unwrap();
            assert_eq!(decoded.correlation_id, -5);
        }
        let mut frame = Bytes::from_static(&[0, 0, 0, 9, 0, b'x']);
        assert_eq!(
            parse_response_header(&mut frame, ApiKey::Fetch as i16, 12).unwrap(),
            9
        );
        assert_eq!(&frame[..], b"x");
        let mut frame = Bytes::from_static(&[0, 0, 0, 9, 0, b'x']);
        assert_eq!(
            parse_response_header(&mut frame, ApiKey::ApiVersions as i16, 3).unwrap(),
            9
        );
        assert_eq!(&frame[..], &[0, b'x']);
    }
}
