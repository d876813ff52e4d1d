//! Kafka's zigzag varints (records use them for lengths, deltas and counts): bounded readers
//! that never read past their slice, and writers for builders.

use bytes::BufMut;

use crate::error::RecordError;

fn corrupt(reason: &'static str) -> RecordError {
    RecordError::CorruptRecord { reason }
}

/// Reads an unsigned LEB128 of at most `bytes_max` bytes, advancing `buf`. One- and
/// two-byte encodings (most lengths, deltas and counts of a batch of small or 1 KiB
/// records) take an inlined path: a consumer decodes several varints per record.
#[inline(always)]
fn read_unsigned(buf: &mut &[u8], bytes_max: usize) -> Result<u64, RecordError> {
    if let Some(&b0) = buf.first() {
        if b0 < 0x80 {
            *buf = &buf[1..];
            return Ok(u64::from(b0));
        }
        if let Some(&b1) = buf.get(1) {
            if b1 < 0x80 {
                *buf = &buf[2..];
                return Ok(u64::from(b0 & 0x7f) | (u64::from(b1) << 7));
            }
        }
    }
    read_unsigned_slow(buf, bytes_max)
}

#[inline(never)]
fn read_unsigned_slow(buf: &mut &[u8], bytes_max: usize) -> Result<u64, RecordError> {
    let mut value: u64 = 0;
    for i in 0..bytes_max {
        let (&b, rest) = buf.split_first().ok_or(corrupt("truncated varint"))?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (i * 7);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(corrupt("varint longer than its type allows"))
}

/// Reads a zigzag varlong (at most 10 bytes, as Kafka's `readVarlong`), advancing `buf`.
#[inline]
pub fn read_varlong(buf: &mut &[u8]) -> Result<i64, RecordError> {
    let z = read_unsigned(buf, 10)?;
    Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
}

/// Reads a zigzag varint (at most 5 bytes and within i32, as Kafka's `readVarint`),
/// advancing `buf`.
#[inline]
pub fn read_varint(buf: &mut &[u8]) -> Result<i32, RecordError> {
    let z = read_unsigned(buf, 5)?;
    let z = u32::try_from(z).map_err(|_| corrupt("varint out of i32 range"))?;
    Ok(((z >> 1) as i32) ^ -((z & 1) as i32))
}

/// Writes `value` as a zigzag varlong.
pub fn put_varlong(buf: &mut impl BufMut, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

/// Bytes [`put_varlong`] writes for `value`.
pub fn varlong_len(value: i64) -> usize {
    let z = ((value << 1) ^ (value >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlongs_round_trip_and_report_their_length() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            300,
            i64::MAX,
            i64::MIN,
            1 << 40,
        ] {
            let mut b = Vec::new();
            put_varlong(&mut b, v);
            assert_eq!(b.len(), varlong_len(v), "{v}");
            let mut s = &b[..];
            assert_eq!(read_varlong(&mut s).unwrap(), v);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn varints_refuse_values_and_encodings_beyond_i32() {
        let mut b = Vec::new();
        put_varlong(&mut b, i64::from(i32::MIN));
        assert_eq!(read_varint(&mut &b[..]).unwrap(), i32::MIN);
        b.clear();
        put_varlong(&mut b, i64::from(i32::MAX) + 1);
        assert!(read_varint(&mut &b[..]).is_err());
        assert!(read_varint(&mut &[0x80u8, 0x80, 0x80, 0x80, 0x80, 0x01][..]).is_err());
        assert!(read_varlong(&mut &[0x80u8; 11][..]).is_err());
        assert!(read_varint(&mut &[0x80u8][..]).is_err());
    }
}
