//! Rill's own decoders for every Kafka message body it reads from a peer.
//!
//! `kafka-protocol`'s generated decoders trust counts from the wire and preallocate them (an
//! 18-byte Metadata request can ask for 150 GB), so nothing a peer sends goes through them.
//! Each message here is decoded by hand against the [`Source`] trait, field by field in
//! schema order, into `kafka-protocol`'s structs (built from `Default`, fields assigned), so
//! handlers and the encoders keep using the upstream types.
//!
//! # Layout
//!
//! * [`source`] — the [`Source`] trait (primitive reads) and the [`source::array`] /
//!   [`source::nullable_array`] / [`source::no_known_tags`] helpers.
//! * [`wire`] — [`WireReader`], the bounded reader over a received frame: every length and
//!   count is checked against the bytes left before anything is allocated, preallocation is
//!   capped at [`source::PREALLOC_BYTES_MAX`], strings and bytes are zero-copy slices, unknown
//!   tagged fields are kept as raw slices. Bytes after a response are an error; after a
//!   request they are ignored, as Kafka's broker does (librdkafka relies on it).
//! * [`consumer_protocol`] — the subscription and assignment that consumer-group members
//!   embed in JoinGroup/SyncGroup (peer input too: another member wrote them).
//! * One module per API (`metadata`, `produce`, …): `impl Decode` for its request and
//!   response and their nested structs. Every API Rill serves or its client reads has one;
//!   an API added later gets its module here.
//! * [`consumer_protocol`] — Kafka's ConsumerProtocol subscription and assignment (the
//!   opaque member metadata and assignment bytes of a "consumer" group).
//! * [`random`] — [`random::RandomSource`], a [`Source`] that makes up values, so a decoder
//!   run over it builds a random valid message (for tests and fuzzers).
//! * (tests) `oracle` checks, for every served version, that our decoder and
//!   `kafka-protocol`'s agree on what `kafka-protocol`'s encoder wrote.

use std::ops::RangeInclusive;

use bytes::Bytes;

pub mod source;
pub mod wire;

mod alter_configs;
mod api_versions;
pub mod consumer_protocol;
mod create_partitions;
mod create_topics;
mod delete_groups;
mod delete_records;
mod delete_topics;
mod describe_cluster;
mod describe_configs;
mod describe_groups;
mod fetch;
mod find_coordinator;
mod heartbeat;
mod incremental_alter_configs;
mod init_producer_id;
mod join_group;
mod leave_group;
mod list_groups;
mod list_offsets;
mod metadata;
mod offset_commit;
mod offset_delete;
mod offset_fetch;
mod offset_for_leader_epoch;
mod produce;
mod sync_group;

#[cfg(test)]
mod oracle;
/// Random valid messages, for tests and fuzzers (the oracle test, `tests/fuzz_decoder.rs`):
/// not used on any path that handles peer input.
pub mod random;

pub use source::Source;
pub use wire::WireReader;

/// Why a message body could not be decoded. Every variant is the peer's fault; none is
/// raised after allocating anything sized by the offending number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended before a field.
    #[error("truncated: {needed} bytes needed, {left} left")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes left in the body.
        left: usize,
    },
    /// An array or tagged-field count larger than the bytes left could hold.
    #[error("count {count} of elements of at least {element_bytes_min} bytes, {left} bytes left")]
    CountTooLarge {
        /// The count read off the wire.
        count: u64,
        /// The fewest bytes one element takes.
        element_bytes_min: usize,
        /// Bytes left in the body.
        left: usize,
    },
    /// A length below -1.
    #[error("invalid length {len}")]
    InvalidLength {
        /// The length read off the wire.
        len: i64,
    },
    /// Null where the schema does not allow it in this version.
    #[error("null in a non-nullable field")]
    UnexpectedNull,
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// An unsigned varint longer than 32 bits.
    #[error("unsigned varint longer than 32 bits")]
    VarintTooLong,
    /// A tag number above `i32::MAX`.
    #[error("tag {tag} out of range")]
    InvalidTag {
        /// The tag read off the wire.
        tag: u32,
    },
    /// A known tagged field whose value does not fill its declared size.
    #[error("tagged field {tag} declares {size} bytes but {left} were not used")]
    TaggedFieldSize {
        /// The tag.
        tag: i32,
        /// The declared size.
        size: usize,
        /// Bytes of it left over.
        left: usize,
    },
    /// Bytes left after the message ended.
    #[error("{left} bytes after the end of the message")]
    TrailingBytes {
        /// How many.
        left: usize,
    },
    /// A version this decoder does not know (the caller checks versions first; this is a
    /// second line of defence).
    #[error("version {version} not decodable")]
    UnknownVersion {
        /// The version asked for.
        version: i16,
    },
}

/// A message (or nested struct) that Rill decodes itself, in any of its versions.
pub trait Decode: Sized {
    /// Reads `Self` at `version` from `source`, in schema order.
    fn decode<S: Source>(source: &mut S, version: i16) -> Result<Self, DecodeError>;
}

/// Refuses a version outside `known`, the versions whose layout a message's decoder
/// implements (older or newer versions may lay fields out differently, which the shared
/// `kafka-protocol` structs cannot tell apart).
pub(crate) fn check_version(version: i16, known: RangeInclusive<i16>) -> Result<(), DecodeError> {
    if known.contains(&version) {
        Ok(())
    } else {
        Err(DecodeError::UnknownVersion { version })
    }
}

/// Decodes a whole message body: `T` at `version`, with no bytes left over.
pub fn decode_body<T: Decode>(body: Bytes, version: i16) -> Result<T, DecodeError> {
    let (message, trailing_bytes) = decode_prefix(body, version)?;
    match trailing_bytes {
        0 => Ok(message),
        left => Err(DecodeError::TrailingBytes { left }),
    }
}

/// Decodes `T` at `version` from the start of `body`; returns it and the number of bytes
/// after it. For request bodies, where Kafka's broker ignores such bytes and clients rely
/// on it (see `codec::decode_request`).
pub fn decode_prefix<T: Decode>(body: Bytes, version: i16) -> Result<(T, usize), DecodeError> {
    let mut reader = WireReader::new(body);
    let message = T::decode(&mut reader, version)?;
    Ok((message, reader.remaining()))
}
