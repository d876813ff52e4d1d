//! [`WireReader`]: the bounded reader over received bytes.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{DecodeError, Source};

/// Bytes a tagged field takes at least: its tag and its size, one varint byte each.
const TAGGED_FIELD_BYTES_MIN: usize = 2;
/// An unsigned varint of a 32-bit value takes at most five bytes.
const VARINT32_BYTES_MAX: usize = 5;

/// Reads a message body out of one received frame.
///
/// Every length and count is checked against the bytes left before anything is allocated,
/// as Kafka's generated Java decoders do; strings and bytes are zero-copy slices of the
/// frame (`Bytes::slice`); nothing is sized by a number from the wire alone.
#[derive(Debug, Clone)]
pub struct WireReader {
    buf: Bytes,
}

impl WireReader {
    /// A reader over `buf` (usually a frame after its request or response header).
    pub fn new(buf: Bytes) -> WireReader {
        WireReader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The bytes not read yet (a view of the frame, not a copy). Their address tells where in
    /// the frame the next field starts, which is how a test finds every length and count
    /// prefix of a message.
    pub fn remaining_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Ends the read: bytes left over are an error (trailing garbage).
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            left => Err(DecodeError::TrailingBytes { left }),
        }
    }

    fn need(&self, needed: usize) -> Result<(), DecodeError> {
        if needed > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed,
                left: self.buf.len(),
            });
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    /// An unsigned varint of at most 32 bits.
    pub fn unsigned_varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..VARINT32_BYTES_MAX {
            self.need(1)?;
            let byte = self.buf.get_u8();
            let bits = u32::from(byte & 0x7f);
            // The fifth byte may carry only the top four bits of a u32.
            if i == VARINT32_BYTES_MAX - 1 && bits > 0x0f {
                return Err(DecodeError::VarintTooLong);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong)
    }

    /// A length prefix: `Ok(None)` for null (-1), an error below -1 or, when `nullable` is
    /// false, for null. Compact lengths are stored plus one.
    fn length(&mut self, flexible: bool, nullable: bool) -> Result<Option<usize>, DecodeError> {
        let len: i64 = if flexible {
            i64::from(self.unsigned_varint()?) - 1
        } else {
            i64::from(self.int16()?)
        };
        self.checked_length(len, nullable)
    }

    /// Like `length`, with the INT32 prefix of non-compact BYTES and ARRAY.
    fn length32(&mut self, flexible: bool, nullable: bool) -> Result<Option<usize>, DecodeError> {
        let len: i64 = if flexible {
            i64::from(self.unsigned_varint()?) - 1
        } else {
            i64::from(self.int32()?)
        };
        self.checked_length(len, nullable)
    }

    fn checked_length(&self, len: i64, nullable: bool) -> Result<Option<usize>, DecodeError> {
        match len {
            -1 if nullable => Ok(None),
            -1 => Err(DecodeError::UnexpectedNull),
            len if len < -1 => Err(DecodeError::InvalidLength { len }),
            len => usize::try_from(len)
                .map(Some)
                .map_err(|_| DecodeError::InvalidLength { len }),
        }
    }

    fn utf8(bytes: Bytes) -> Result<StrBytes, DecodeError> {
        StrBytes::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }

    fn count(&self, count: usize, element_bytes_min: usize) -> Result<usize, DecodeError> {
        let left = self.buf.len();
        if count.saturating_mul(element_bytes_min.max(1)) > left {
            return Err(DecodeError::CountTooLarge {
                count: count as u64,
                element_bytes_min,
                left,
            });
        }
        Ok(count)
    }
}

macro_rules! fixed {
    ($name:ident, $ty:ty, $get:ident) => {
        fn $name(&mut self) -> Result<$ty, DecodeError> {
            self.need(std::mem::size_of::<$ty>())?;
            Ok(self.buf.$get())
        }
    };
}

impl Source for WireReader {
    fixed!(int8, i8, get_i8);
    fixed!(int16, i16, get_i16);
    fixed!(int32, i32, get_i32);
    fixed!(int64, i64, get_i64);
    fixed!(uint16, u16, get_u16);
    fixed!(float64, f64, get_f64);

    fn boolean(&mut self) -> Result<bool, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8() != 0)
    }

    fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        self.need(16)?;
        Ok(Uuid::from_u128(self.buf.get_u128()))
    }

    fn string(&mut self, flexible: bool) -> Result<StrBytes, DecodeError> {
        let len = self.length(flexible, false)?.unwrap_or_default();
        Self::utf8(self.take(len)?)
    }

    fn nullable_string(&mut self, flexible: bool) -> Result<Option<StrBytes>, DecodeError> {
        match self.length(flexible, true)? {
            None => Ok(None),
            Some(len) => Self::utf8(self.take(len)?).map(Some),
        }
    }

    fn bytes(&mut self, flexible: bool) -> Result<Bytes, DecodeError> {
        let len = self.length32(flexible, false)?.unwrap_or_default();
        self.take(len)
    }

    fn nullable_bytes(&mut self, flexible: bool) -> Result<Option<Bytes>, DecodeError> {
        match self.length32(flexible, true)? {
            None => Ok(None),
            Some(len) => self.take(len).map(Some),
        }
    }

    fn array_len(
        &mut self,
        flexible: bool,
        element_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.length32(flexible, false)?.unwrap_or_default();
        self.count(count, element_bytes_min)
    }

    fn nullable_array_len(
        &mut self,
        flexible: bool,
        element_bytes_min: usize,
    ) -> Result<Option<usize>, DecodeError> {
        match self.length32(flexible, true)? {
            None => Ok(None),
            Some(count) => self.count(count, element_bytes_min).map(Some),
        }
    }

    fn tagged_fields(
        &mut self,
        unknown: &mut BTreeMap<i32, Bytes>,
        mut known: impl FnMut(&mut Self, i32) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError> {
        let count = self.unsigned_varint()? as usize;
        self.count(count, TAGGED_FIELD_BYTES_MIN)?;
        for _ in 0..count {
            let tag = self.unsigned_varint()?;
            let tag = i32::try_from(tag).map_err(|_| DecodeError::InvalidTag { tag })?;
            let size = self.unsigned_varint()? as usize;
            let mut field = WireReader::new(self.take(size)?);
            if known(&mut field, tag)? {
                if field.remaining() != 0 {
                    return Err(DecodeError::TaggedFieldSize {
                        tag,
                        size,
                        left: field.remaining(),
                    });
                }
            } else {
                unknown.insert(tag, field.buf);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> WireReader {
        WireReader::new(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn varints_of_up_to_five_bytes_decode_and_longer_ones_are_refused() {
        assert_eq!(reader(&[0x00]).unsigned_varint().unwrap(), 0);
        assert_eq!(reader(&[0x96, 0x01]).unsigned_varint().unwrap(), 150);
        assert_eq!(
            reader(&[0xff, 0xff, 0xff, 0xff, 0x0f])
                .unsigned_varint()
                .unwrap(),
            u32::MAX
        );
        assert!(matches!(
            reader(&[0xff, 0xff, 0xff, 0xff, 0x1f]).unsigned_varint(),
            Err(DecodeError::VarintTooLong)
        ));
        assert!(matches!(
            reader(&[0x80, 0x80]).unsigned_varint(),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn counts_beyond_the_bytes_left_are_refused_before_allocating() {
        // i32::MAX elements of at least one byte, three bytes left.
        let mut r = reader(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert!(matches!(
            r.array_len(false, 1),
            Err(DecodeError::CountTooLarge {
                count: 2147483647,
                left: 3,
                ..
            })
        ));
        // The largest compact count.
        let mut r = reader(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            r.nullable_array_len(true, 1),
            Err(DecodeError::CountTooLarge { .. })
        ));
        // A count that fits one-byte elements but not four-byte ones.
        assert_eq!(reader(&[0, 0, 0, 2, 1, 2]).array_len(false, 1).unwrap(), 2);
        assert!(reader(&[0, 0, 0, 2, 1, 2]).array_len(false, 4).is_err());
    }

    #[test]
    fn strings_and_bytes_are_slices_of_the_frame() {
        let frame = Bytes::from_static(&[0, 3, b'a', b'b', b'c', 4, 1, 2, 3]);
        let mut r = WireReader::new(frame.clone());
        let s = r.string(false).unwrap();
        assert_eq!(s.as_str(), "abc");
        let b = r.bytes(true).unwrap();
        assert_eq!(&b[..], &[1, 2, 3]);
        assert_eq!(b.as_ptr(), frame[6..].as_ptr());
        r.finish().unwrap();
    }

    #[test]
    fn nulls_lengths_and_utf8_are_checked() {
        assert!(matches!(
            reader(&[0xff, 0xff]).string(false),
            Err(DecodeError::UnexpectedNull)
        ));
        assert_eq!(reader(&[0xff, 0xff]).nullable_string(false).unwrap(), None);
        assert_eq!(reader(&[0]).nullable_string(true).unwrap(), None);
        assert!(matches!(
            reader(&[0xff, 0xfe]).nullable_string(false),
            Err(DecodeError::InvalidLength { len: -2 })
        ));
        assert!(matches!(
            reader(&[0, 2, 0xc3, 0x28]).string(false),
            Err(DecodeError::InvalidUtf8)
        ));
        assert!(matches!(
            reader(&[0x7f, 0xff, 0xff, 0xff]).bytes(false),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            reader(&[1, 2]).finish(),
            Err(DecodeError::TrailingBytes { left: 2 })
        ));
    }

    #[test]
    fn tagged_fields_decode_known_tags_keep_unknown_ones_and_check_sizes() {
        // Two fields: tag 0 (an INT16, known) and tag 7 (unknown, two bytes).
        let mut r = reader(&[2, 0, 2, 0, 42, 7, 2, 9, 9]);
        let mut unknown = BTreeMap::new();
        let mut seen = None;
        r.tagged_fields(&mut unknown, |f, tag| {
            if tag != 0 {
                return Ok(false);
            }
            seen = Some(f.int16()?);
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, Some(42));
        assert_eq!(unknown.get(&7).map(|b| &b[..]), Some(&[9u8, 9][..]));
        r.finish().unwrap();

        // A known field that does not fill its declared size.
        let mut r = reader(&[1, 0, 3, 0, 42, 0]);
        let err = r
            .tagged_fields(&mut BTreeMap::new(), |f, _| f.int16().map(|_| true))
            .unwrap_err();
        assert!(matches!(err, DecodeError::TaggedFieldSize { tag: 0, .. }));
        // A huge field count.
        assert!(reader(&[0xff, 0xff, 0xff, 0xff, 0x0f])
            .tagged_fields(&mut BTreeMap::new(), |_, _| Ok(false))
            .is_err());
    }
}
