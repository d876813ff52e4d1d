//! [`RandomSource`] (for tests and fuzzers): a [`Source`] that makes values up, so that
//! running a message decoder over it builds a random, valid message of that version:
//! `<T as Decode>::decode(&mut RandomSource::new(seed), version)`. The oracle test
//! (`super::oracle`) encodes such messages with `kafka-protocol` and checks that our wire
//! decoder and upstream's agree on the bytes; `tests/fuzz_decoder.rs` mutates them.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::{DecodeError, Source};

/// Arrays get at most this many elements (nesting keeps messages small).
const ARRAY_LEN_MAX: usize = 3;
/// Known tags tried in every tagged-field section (no message Rill reads defines more).
const KNOWN_TAG_CANDIDATES: i32 = 4;
/// Unknown tags are made up at or above this number, so they never collide with known ones.
const UNKNOWN_TAG_BASE: i32 = 1000;

/// A seeded generator of field values.
#[derive(Debug)]
pub struct RandomSource {
    rng: StdRng,
}

impl RandomSource {
    /// A generator replaying `seed`.
    pub fn new(seed: u64) -> RandomSource {
        RandomSource {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn text(&mut self) -> StrBytes {
        let len = self.rng.gen_range(0..8);
        let text: String = (0..len)
            .map(|_| char::from(self.rng.gen_range(b'a'..=b'z')))
            .collect();
        StrBytes::from_string(text)
    }

    fn blob(&mut self) -> Bytes {
        let len = self.rng.gen_range(0..16);
        (0..len).map(|_| self.rng.gen::<u8>()).collect()
    }

    fn is_null(&mut self) -> bool {
        self.rng.gen_bool(0.2)
    }
}

impl Source for RandomSource {
    fn int8(&mut self) -> Result<i8, DecodeError> {
        Ok(self.rng.gen())
    }
    fn int16(&mut self) -> Result<i16, DecodeError> {
        Ok(self.rng.gen())
    }
    fn int32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.rng.gen())
    }
    fn int64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.rng.gen())
    }
    fn uint16(&mut self) -> Result<u16, DecodeError> {
        Ok(self.rng.gen())
    }
    fn float64(&mut self) -> Result<f64, DecodeError> {
        // Finite values only: NaN is not equal to itself.
        Ok(self.rng.gen_range(-1e9..1e9))
    }
    fn boolean(&mut self) -> Result<bool, DecodeError> {
        Ok(self.rng.gen())
    }
    fn uuid(&mut self) -> Result<Uuid, DecodeError> {
        Ok(Uuid::from_u128(self.rng.gen()))
    }
    fn string(&mut self, _flexible: bool) -> Result<StrBytes, DecodeError> {
        Ok(self.text())
    }
    fn nullable_string(&mut self, _flexible: bool) -> Result<Option<StrBytes>, DecodeError> {
        Ok((!self.is_null()).then(|| self.text()))
    }
    fn bytes(&mut self, _flexible: bool) -> Result<Bytes, DecodeError> {
        Ok(self.blob())
    }
    fn nullable_bytes(&mut self, _flexible: bool) -> Result<Option<Bytes>, DecodeError> {
        Ok((!self.is_null()).then(|| self.blob()))
    }
    fn array_len(&mut self, _flexible: bool, _min: usize) -> Result<usize, DecodeError> {
        Ok(self.rng.gen_range(0..=ARRAY_LEN_MAX))
    }
    fn nullable_array_len(
        &mut self,
        _flexible: bool,
        _min: usize,
    ) -> Result<Option<usize>, DecodeError> {
        if self.is_null() {
            return Ok(None);
        }
        Ok(Some(self.rng.gen_range(0..=ARRAY_LEN_MAX)))
    }
    fn tagged_fields(
        &mut self,
        unknown: &mut BTreeMap<i32, Bytes>,
        mut known: impl FnMut(&mut Self, i32) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError> {
        for tag in 0..KNOWN_TAG_CANDIDATES {
            // A known tag left out keeps its default, which is what the encoder omits.
            if self.rng.gen_bool(0.5) {
                known(self, tag)?;
            }
        }
        if self.rng.gen_bool(0.2) {
            let tag = UNKNOWN_TAG_BASE + self.rng.gen_range(0..10);
            let value = self.blob();
            unknown.insert(tag, value);
        }
        Ok(())
    }
}
