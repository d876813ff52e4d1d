//! Kafka framing: a 4-byte big-endian size, then that many bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;

/// Bytes of the size prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;

/// Default largest frame accepted (`socket_request_max_bytes`, 100 MiB as in Kafka).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 100 * 1024 * 1024;

/// Most buffer space reserved ahead of received bytes for a partial frame (see
/// [`FrameCodec`]).
pub const FRAME_RESERVE_STEP_BYTES: usize = 64 * 1024;

/// A tokio-util codec for Kafka frames.
///
/// * Decoding yields each frame's payload (without the size prefix). A size above
///   `frame_bytes_max`, or negative, is refused with [`ProtocolError::FrameTooLarge`] as soon as
///   the 4-byte prefix has arrived, before any space is reserved for the body. A partial frame
///   is `Ok(None)`: wait for more bytes. While a frame is partial the buffer grows with the
///   bytes received (at most doubling, or by [`FRAME_RESERVE_STEP_BYTES`]), never straight to
///   the announced size.
/// * Encoding takes a *complete* frame, prefix included, as produced by
///   [`crate::codec::encode_response`] and [`crate::codec::encode_request`]: every `Bytes` that
///   goes on the wire in this crate is a whole frame. The prefix is checked against the length.
///   (Fetch responses are better written with vectored I/O, see [`crate::fetch`].)
#[derive(Debug, Clone)]
pub struct FrameCodec {
    frame_bytes_max: usize,
}

impl FrameCodec {
    /// A codec refusing frames whose payload is larger than `frame_bytes_max` bytes.
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameCodec { frame_bytes_max }
    }

    /// The largest payload accepted, in bytes.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        if src.len() < FRAME_PREFIX_BYTES {
            return Ok(None);
        }
        let size = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        // Checked before reserving: a peer's size prefix must never size an allocation
        // beyond the configured maximum.
        if size < 0 || size as usize > self.frame_bytes_max {
            return Err(ProtocolError::FrameTooLarge {
                size: i64::from(size),
                max: self.frame_bytes_max,
            });
        }
        let frame_len = FRAME_PREFIX_BYTES + size as usize;
        if src.len() < frame_len {
            // Make room for the rest of the frame, but never more than the bytes already
            // received (or one step): memory follows what the peer actually sent, not what it
            // announced, so a peer that announces 100 MiB and stalls holds 64 KiB, not 100 MiB.
            // Growth is geometric, so a large frame costs a handful of reallocations.
            let needed = frame_len - src.len();
            src.reserve(needed.min(src.len().max(FRAME_RESERVE_STEP_BYTES)));
            return Ok(None);
        }
        src.advance(FRAME_PREFIX_BYTES);
        Ok(Some(src.split_to(size as usize)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        check_frame_prefix(&frame)?;
        dst.reserve(frame.len());
        dst.put_slice(&frame);
        Ok(())
    }
}

/// Checks that `frame` starts with a size prefix equal to the bytes that follow it.
pub fn check_frame_prefix(frame: &[u8]) -> Result<(), ProtocolError> {
    let prefix = match frame.get(..FRAME_PREFIX_BYTES) {
        Some(p) => i64::from(i32::from_be_bytes([p[0], p[1], p[2], p[3]])),
        None => -1,
    };
    if prefix < 0 || prefix as usize != frame.len() - FRAME_PREFIX_BYTES {
        return Err(ProtocolError::FramePrefixMismatch {
            len: frame.len(),
            prefix,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_back_to_back_frames_and_waits_for_partial_ones() {
        let mut codec = FrameCodec::new(1024);
        let mut wire = framed(b"hello");
        wire.extend(framed(b""));
        wire.extend(framed(b"world!"));
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        // Feed one byte at a time: every prefix of the stream is a valid partial state.
        for b in wire {
            src.put_u8(b);
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        assert!(src.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_from_the_prefix_before_reserving_the_body() {
        let mut codec = FrameCodec::new(100);
        let mut src = BytesMut::with_capacity(8);
        src.put_i32(101);
        let capacity_before = src.capacity();
        let err = codec.decode(&mut src).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            }
        ));
        assert_eq!(src.capacity(), capacity_before);

        let mut src = BytesMut::new();
        src.put_i32(i32::MAX);
        assert!(codec.decode(&mut src).is_err());
        assert!(src.capacity() < 1024);
    }

    #[test]
    fn a_stalled_large_frame_holds_memory_for_what_was_received_not_what_was_announced() {
        let max = 100 * 1024 * 1024;
        let mut codec = FrameCodec::new(max);
        let mut src = BytesMut::new();
        src.put_i32(max as i32);
        src.put_slice(b"first bytes");
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() <= 2 * FRAME_RESERVE_STEP_BYTES);
        // As bytes arrive the buffer keeps growing ahead of them, and the frame completes.
        let body = vec![7u8; 3 * FRAME_RESERVE_STEP_BYTES];
        let mut codec = FrameCodec::new(max);
        let mut src = BytesMut::new();
        src.put_i32(body.len() as i32);
        for chunk in body.chunks(1000) {
            assert!(codec.decode(&mut src).unwrap().is_none());
            // Vec-style doubling may overshoot the reserve request, but stays geometric.
            assert!(
                src.capacity() <= 4 * src.len() + 2 * FRAME_RESERVE_STEP_BYTES,
                "capacity {} for {} bytes received",
                src.capacity(),
                src.len()
            );
            src.put_slice(chunk);
        }
        assert_eq!(codec.decode(&mut src).unwrap().unwrap().len(), body.len());
    }

    #[test]
    fn negative_frame_size_is_refused() {
        let mut codec = FrameCodec::new(100);
        let mut src = BytesMut::new();
        src.put_i32(-1);
        assert!(matches!(
            codec.decode(&mut src).unwrap_err(),
            ProtocolError::FrameTooLarge { size: -1, .. }
        ));
    }

    #[test]
    fn frame_of_exactly_the_maximum_is_accepted() {
        let mut codec = FrameCodec::new(3);
        let mut src = BytesMut::from(&framed(b"abc")[..]);
        assert_eq!(codec.decode(&mut src).unwrap().unwrap(), &b"abc"[..]);
    }

    #[test]
    fn encoder_writes_complete_frames_and_rejects_bad_prefixes() {
        let mut codec = FrameCodec::new(100);
        let mut dst = BytesMut::new();
        codec.encode(Bytes::from(framed(b"xyz")), &mut dst).unwrap();
        assert_eq!(&dst[..], &framed(b"xyz")[..]);
        assert!(codec.encode(Bytes::from_static(b"xyz"), &mut dst).is_err());
        assert!(codec
            .encode(Bytes::from_static(&[0, 0, 0, 5, 1]), &mut dst)
            .is_err());
        assert!(codec
            .encode(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]), &mut dst)
            .is_err());
    }
}
