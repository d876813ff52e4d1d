//! [`Source`]: where a decoder's field values come from, and the array and tagged-field
//! helpers every message decoder is built from.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::DecodeError;

/// Most bytes an array decoder reserves up front, whatever the count says. Larger arrays
/// grow as their elements are decoded, so memory follows the bytes actually received.
pub const PREALLOC_BYTES_MAX: usize = 4096;

/// The primitive reads of the Kafka protocol's message grammar.
///
/// Message decoders ([`super::Decode`]) are written once against this trait.
/// [`super::WireReader`] implements it over received bytes, checking every length and count
/// against the bytes left before anything is allocated; the tests implement it with a seeded
/// random generator, so the same decoder also builds random valid messages for the oracle
/// test against `kafka-protocol`'s encoder and decoder.
///
/// `flexible` selects the compact encodings (unsigned-varint lengths, plus one) that
/// flexible versions use.
pub trait Source: Sized {
    /// An INT8.
    fn int8(&mut self) -> Result<i8, DecodeError>;
    /// An INT16.
    fn int16(&mut self) -> Result<i16, DecodeError>;
    /// An INT32.
    fn int32(&mut self) -> Result<i32, DecodeError>;
    /// An INT64.
    fn int64(&mut self) -> Result<i64, DecodeError>;
    /// A UINT16.
    fn uint16(&mut self) -> Result<u16, DecodeError>;
    /// A FLOAT64.
    fn float64(&mut self) -> Result<f64, DecodeError>;
    /// A BOOLEAN (any non-zero byte is true, as in Kafka).
    fn boolean(&mut self) -> Result<bool, DecodeError>;
    /// A UUID.
    fn uuid(&mut self) -> Result<Uuid, DecodeError>;
    /// A STRING / COMPACT_STRING: UTF-8, never null.
    fn string(&mut self, flexible: bool) -> Result<StrBytes, DecodeError>;
    /// A NULLABLE_STRING / COMPACT_NULLABLE_STRING.
    fn nullable_string(&mut self, flexible: bool) -> Result<Option<StrBytes>, DecodeError>;
    /// A BYTES / COMPACT_BYTES, never null.
    fn bytes(&mut self, flexible: bool) -> Result<Bytes, DecodeError>;
    /// A NULLABLE_BYTES / COMPACT_NULLABLE_BYTES (also RECORDS).
    fn nullable_bytes(&mut self, flexible: bool) -> Result<Option<Bytes>, DecodeError>;
    /// The element count of an ARRAY / COMPACT_ARRAY whose elements take at least
    /// `element_bytes_min` bytes each; a count the bytes left cannot hold is an error.
    fn array_len(&mut self, flexible: bool, element_bytes_min: usize)
        -> Result<usize, DecodeError>;
    /// The element count of a nullable array (`None` for null).
    fn nullable_array_len(
        &mut self,
        flexible: bool,
        element_bytes_min: usize,
    ) -> Result<Option<usize>, DecodeError>;
    /// The tagged-field section of a flexible struct. `known(source, tag)` decodes the field
    /// of a tag the struct defines and returns true, or returns false (without reading) for a
    /// tag it does not know, which then lands in `unknown` as its raw bytes.
    fn tagged_fields(
        &mut self,
        unknown: &mut BTreeMap<i32, Bytes>,
        known: impl FnMut(&mut Self, i32) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError>;
}

/// Initial capacity for `count` elements of `T`: never more than [`PREALLOC_BYTES_MAX`].
pub fn prealloc_capacity<T>(count: usize) -> usize {
    count.min(PREALLOC_BYTES_MAX / std::mem::size_of::<T>().max(1))
}

/// Decodes an array of elements taking at least `element_bytes_min` bytes each.
pub fn array<S: Source, T>(
    source: &mut S,
    flexible: bool,
    element_bytes_min: usize,
    mut element: impl FnMut(&mut S) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let count = source.array_len(flexible, element_bytes_min)?;
    elements(source, count, &mut element)
}

/// Decodes a nullable array of elements taking at least `element_bytes_min` bytes each.
pub fn nullable_array<S: Source, T>(
    source: &mut S,
    flexible: bool,
    element_bytes_min: usize,
    mut element: impl FnMut(&mut S) -> Result<T, DecodeError>,
) -> Result<Option<Vec<T>>, DecodeError> {
    match source.nullable_array_len(flexible, element_bytes_min)? {
        None => Ok(None),
        Some(count) => elements(source, count, &mut element).map(Some),
    }
}

fn elements<S: Source, T>(
    source: &mut S,
    count: usize,
    element: &mut impl FnMut(&mut S) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut out = Vec::with_capacity(prealloc_capacity::<T>(count));
    for _ in 0..count {
        out.push(element(source)?);
    }
    Ok(out)
}

/// The tagged fields of a struct that defines none of its own (all land in `unknown`);
/// nothing at all in a non-flexible version.
pub fn no_known_tags<S: Source>(
    source: &mut S,
    flexible: bool,
    unknown: &mut BTreeMap<i32, Bytes>,
) -> Result<(), DecodeError> {
    if flexible {
        source.tagged_fields(unknown, |_, _| Ok(false))?;
    }
    Ok(())
}
