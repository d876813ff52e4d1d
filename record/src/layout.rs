//! Byte positions and sizes of the RecordBatch v2 header (all fields big-endian):
//!
//! | position | field                    | type  |
//! |---------:|--------------------------|-------|
//! |        0 | baseOffset               | i64   |
//! |        8 | batchLength              | i32   | bytes after this field
//! |       12 | partitionLeaderEpoch     | i32   |
//! |       16 | magic (= 2)              | i8    |
//! |       17 | crc (CRC32C of 21..end)  | u32   |
//! |       21 | attributes               | i16   | bits 0-2 codec, 3 log-append time, 4 transactional, 5 control
//! |       23 | lastOffsetDelta          | i32   |
//! |       27 | baseTimestamp            | i64   |
//! |       35 | maxTimestamp             | i64   |
//! |       43 | producerId               | i64   |
//! |       51 | producerEpoch            | i16   |
//! |       53 | baseSequence             | i32   |
//! |       57 | recordsCount             | i32   |
//! |       61 | records (maybe compressed) |     |
//!
//! baseOffset and partitionLeaderEpoch lie outside the CRC, so a leader can stamp them in
//! place without recomputing it. The magic byte sits at position 16 in every message format
//! (v0/v1 too), which is why it can be checked before the rest of the layout is trusted.

/// Position of baseOffset (i64).
pub const BASE_OFFSET_POS: usize = 0;
/// Position of batchLength (i32): the number of bytes after this field.
pub const BATCH_LENGTH_POS: usize = 8;
/// Position of partitionLeaderEpoch (i32).
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
/// Position of the magic byte (i8).
pub const MAGIC_POS: usize = 16;
/// Position of the CRC32C (u32).
pub const CRC_POS: usize = 17;
/// Position of attributes (i16); also the first byte the CRC covers.
pub const ATTRIBUTES_POS: usize = 21;
/// Position of lastOffsetDelta (i32).
pub const LAST_OFFSET_DELTA_POS: usize = 23;
/// Position of baseTimestamp (i64).
pub const BASE_TIMESTAMP_POS: usize = 27;
/// Position of maxTimestamp (i64).
pub const MAX_TIMESTAMP_POS: usize = 35;
/// Position of producerId (i64).
pub const PRODUCER_ID_POS: usize = 43;
/// Position of producerEpoch (i16).
pub const PRODUCER_EPOCH_POS: usize = 51;
/// Position of baseSequence (i32).
pub const BASE_SEQUENCE_POS: usize = 53;
/// Position of recordsCount (i32).
pub const RECORDS_COUNT_POS: usize = 57;

/// Bytes of the fixed header, up to and including recordsCount; the records start here.
pub const HEADER_BYTES: usize = 61;
/// Bytes up to and including batchLength (baseOffset + batchLength): what `batchLength`
/// does not count. Kafka calls it LOG_OVERHEAD.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// First byte covered by the CRC (attributes); it runs to the end of the batch.
pub const CRC_START_POS: usize = ATTRIBUTES_POS;
/// The smallest valid batchLength: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
/// The only message format this crate reads and writes.
pub const MAGIC_V2: i8 = 2;

/// Attribute bits 0-2: compression codec id.
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamps are log-append times (all records carry maxTimestamp).
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
/// Attribute bit 5: control batch (transaction markers, leader-change markers).
pub const ATTR_CONTROL: i16 = 1 << 5;

/// The smallest possible record in bytes: length, attributes, timestampDelta, offsetDelta,
/// key length, value length and header count are each at least one byte (a one-byte varint
/// or the attributes byte), and everything else may be empty.
pub const RECORD_BYTES_MIN: usize = 7;

/// Record compression codecs, by their id in the batch attributes. This crate knows only the
/// ids; the codecs themselves live in rill-protocol behind its `compression` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// No compression (id 0).
    #[default]
    None,
    /// gzip (id 1).
    Gzip,
    /// Snappy, in Kafka's xerial framing (id 2).
    Snappy,
    /// LZ4 frame format (id 3).
    Lz4,
    /// Zstandard (id 4).
    Zstd,
}

impl Compression {
    /// The codec for an attributes id, if known.
    pub fn from_id(id: i16) -> Option<Compression> {
        Some(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => return None,
        })
    }

    /// The id stored in bits 0-2 of the batch attributes.
    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// An upper bound on how many times larger than its input this codec's format can
    /// decompress to, used to bound a compressed batch's records count without decompressing
    /// it (the broker never decompresses). Each figure is at or above the format's
    /// theoretical maximum, so no valid batch is refused:
    /// deflate (gzip) tops out at 1032:1 (a 258-byte match in under 2 bits); a snappy
    /// element expands at most 64 bytes from 3 (21:1, bounded here by 64); an LZ4 sequence
    /// gains at most 255 bytes per extra length byte (bounded by 256); a zstd RLE block turns
    /// 4 bytes into at most 128 KiB (32768:1, no block type does better).
    pub fn expansion_ratio_max(self) -> u64 {
        match self {
            Compression::None => 1,
            Compression::Gzip => 1032,
            Compression::Snappy => 64,
            Compression::Lz4 => 256,
            Compression::Zstd => 32_768,
        }
    }
}
