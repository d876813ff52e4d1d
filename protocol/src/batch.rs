//! RecordBatch v2 (magic 2) helpers: read a batch's header without decoding its records,
//! check its CRC, walk the batches of a records blob, iterate records, and build batches.
//!
//! Layout of a batch (big-endian; offsets in bytes from the batch start):
//!
//! | offset | field                    | type  |
//! |-------:|--------------------------|-------|
//! |      0 | base_offset              | i64   |
//! |      8 | batch_length             | i32   | bytes after this field
//! |     12 | partition_leader_epoch   | i32   |
//! |     16 | magic (= 2)              | i8    |
//! |     17 | crc (CRC32C of 21..end)  | u32   |
//! |     21 | attributes               | i16   | bits 0-2 codec, 3 log-append time, 4 transactional, 5 control
//! |     23 | last_offset_delta        | i32   |
//! |     27 | base_timestamp           | i64   |
//! |     35 | max_timestamp            | i64   |
//! |     43 | producer_id              | i64   |
//! |     51 | producer_epoch           | i16   |
//! |     53 | base_sequence            | i32   |
//! |     57 | records_count            | i32   |
//! |     61 | records (maybe compressed) |     |
//!
//! base_offset and partition_leader_epoch lie outside the CRC, so a broker can stamp them
//! into a batch without recomputing it ([`set_base_offset`], [`set_partition_leader_epoch`]).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Bytes of a batch header, up to and including records_count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before (and including) the batch_length field; `batch_length` counts what follows.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
/// The smallest valid batch_length (a header with no records).
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32;
/// The message format this crate supports.
pub const MAGIC_V2: i8 = 2;

const OFF_BATCH_LENGTH: usize = 8;
const OFF_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORDS_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Record compression codecs, by their id in the batch attributes.
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
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// A read-only view of one RecordBatch v2, reading header fields in place.
///
/// Constructing it checks only what is needed for the accessors to be in bounds (length,
/// batch_length, magic); call [`BatchView::validate`] to check the CRC and the rest before
/// trusting the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Views the batch at the start of `buf`. `buf` may continue past the batch; the view
    /// covers exactly `12 + batch_length` bytes.
    pub fn new(buf: &'a [u8]) -> Result<BatchView<'a>, ProtocolError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(ProtocolError::CorruptBatch {
                reason: "shorter than a batch header",
            });
        }
        let magic = buf[OFF_MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(ProtocolError::UnsupportedMagic { magic });
        }
        let batch_length = be_i32(buf, OFF_BATCH_LENGTH);
        if batch_length < BATCH_LENGTH_MIN {
            return Err(ProtocolError::CorruptBatch {
                reason: "batch_length smaller than a batch header",
            });
        }
        let total = BATCH_LENGTH_PREFIX_BYTES + batch_length as usize;
        if buf.len() < total {
            return Err(ProtocolError::CorruptBatch {
                reason: "batch_length runs past the end of the data",
            });
        }
        Ok(BatchView {
            bytes: &buf[..total],
        })
    }

    /// The batch's bytes, exactly `12 + batch_length` of them.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Total size of the batch in bytes (`12 + batch_length`).
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, 0)
    }
    /// Bytes after the batch_length field.
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, OFF_BATCH_LENGTH)
    }
    /// Leader epoch stamped by the broker that appended the batch.
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, OFF_LEADER_EPOCH)
    }
    /// Message format version (always 2 for a view).
    pub fn magic(&self) -> i8 {
        self.bytes[OFF_MAGIC] as i8
    }
    /// CRC32C stored in the header (over bytes 21..end).
    pub fn crc(&self) -> u32 {
        be_i32(self.bytes, OFF_CRC) as u32
    }
    /// Raw attributes.
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, OFF_ATTRIBUTES)
    }
    /// Compression codec id (bits 0-2 of the attributes).
    pub fn compression_id(&self) -> i16 {
        self.attributes() & ATTR_COMPRESSION_MASK
    }
    /// Compression codec, `None` if the id is unknown.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_id(self.compression_id())
    }
    /// Whether timestamps are log-append times (attribute bit 3) rather than create times.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_LOG_APPEND_TIME != 0
    }
    /// Whether the batch belongs to a transaction (attribute bit 4).
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    /// Whether the batch holds control records (commit/abort markers; attribute bit 5).
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    /// Offset of the last record relative to the base offset.
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, OFF_LAST_OFFSET_DELTA)
    }
    /// Offset of the last record (`base_offset + last_offset_delta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset()
            .wrapping_add(i64::from(self.last_offset_delta()))
    }
    /// Offset after the batch (`last_offset + 1`).
    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, OFF_BASE_TIMESTAMP)
    }
    /// Largest timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, OFF_MAX_TIMESTAMP)
    }
    /// Producer id (-1 if not idempotent).
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, OFF_PRODUCER_ID)
    }
    /// Producer epoch (-1 if not idempotent).
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, OFF_PRODUCER_EPOCH)
    }
    /// Sequence number of the first record (-1 if not idempotent).
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, OFF_BASE_SEQUENCE)
    }
    /// Number of records in the batch.
    pub fn records_count(&self) -> i32 {
        be_i32(self.bytes, OFF_RECORDS_COUNT)
    }
    /// The (possibly compressed) records section.
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[BATCH_HEADER_BYTES..]
    }

    /// CRC32C of the bytes the CRC covers (attributes to the end).
    pub fn compute_crc(&self) -> u32 {
        crc32c::crc32c(&self.bytes[OFF_ATTRIBUTES..])
    }

    /// Checks the CRC.
    pub fn validate_crc(&self) -> Result<(), ProtocolError> {
        let (stored, computed) = (self.crc(), self.compute_crc());
        if stored != computed {
            return Err(ProtocolError::CrcMismatch { stored, computed });
        }
        Ok(())
    }

    /// Checks the header for consistency and the CRC, without decoding records: a known codec,
    /// non-negative counts and deltas, at least one record, no more records than
    /// `last_offset_delta + 1` allows, and (uncompressed) no more records than bytes.
    /// This is what a broker checks before appending a produced batch (CORRUPT_MESSAGE if not).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let codec = self.compression_id();
        if Compression::from_id(codec).is_none() {
            return Err(ProtocolError::CorruptBatch {
                reason: "unknown compression codec",
            });
        }
        let count = self.records_count();
        let delta = self.last_offset_delta();
        if count <= 0 {
            return Err(ProtocolError::CorruptBatch {
                reason: "batch has no records",
            });
        }
        if delta < 0 || i64::from(count) > i64::from(delta) + 1 {
            return Err(ProtocolError::CorruptBatch {
                reason: "records_count does not fit last_offset_delta",
            });
        }
        // Every uncompressed record takes at least 7 bytes (length, attributes, timestamp
        // delta, offset delta, key length, value length, header count).
        if codec == 0 && (count as usize).saturating_mul(7) > self.records_bytes().len() {
            return Err(ProtocolError::CorruptBatch {
                reason: "more records than the batch has bytes for",
            });
        }
        self.validate_crc()
    }

    /// Iterates over the records of an uncompressed batch (for a compressed one, decompress
    /// with [`BatchView::decompress_records`] and use [`Records::new`]).
    pub fn records(&self) -> Result<Records<'a>, ProtocolError> {
        if self.compression_id() != 0 {
            return Err(ProtocolError::CompressionUnavailable {
                codec: self.compression_id(),
            });
        }
        Ok(Records::new(self.records_bytes(), self))
    }

    /// Decompresses the records section, refusing more than
    /// [`DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT`] bytes of output; see
    /// [`BatchView::decompress_records_bounded`].
    pub fn decompress_records(&self) -> Result<Bytes, ProtocolError> {
        self.decompress_records_bounded(DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT)
    }

    /// Decompresses the records section (requires the `compression` feature for anything but
    /// [`Compression::None`], which is returned as a copy).
    ///
    /// Compressed data comes from a peer and can expand a thousandfold (gzip, zstd), so the
    /// output is capped at `decompressed_bytes_max`: more is
    /// [`ProtocolError::DecompressedTooLarge`]. Memory used stays within about twice the cap,
    /// plus for zstd a window of at most the cap rounded up to a power of two, or 8 MiB.
    pub fn decompress_records_bounded(
        &self,
        decompressed_bytes_max: usize,
    ) -> Result<Bytes, ProtocolError> {
        let codec = self
            .compression()
            .ok_or(ProtocolError::CompressionUnavailable {
                codec: self.compression_id(),
            })?;
        compress::decompress(codec, self.records_bytes(), decompressed_bytes_max)
    }
}

/// Default cap on a batch's decompressed records ([`BatchView::decompress_records`]):
/// generous for real batches (Kafka's `message.max.bytes` defaults to 1 MiB compressed), but
/// a bound on what a few compressed bytes can make a consumer allocate.
pub const DECOMPRESSED_RECORDS_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;

/// Overwrites a batch's base offset in place (outside the CRC). Panics if `batch` is shorter
/// than a batch header: callers pass batches that [`BatchView::new`] accepted.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites a batch's partition leader epoch in place (outside the CRC). Panics if `batch` is
/// shorter than a batch header.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[OFF_LEADER_EPOCH..OFF_LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks a batch as using log-append time with `timestamp_ms` as its max timestamp (what a
/// broker does for topics with `message.timestamp.type=LogAppendTime`) and recomputes the CRC.
/// Panics if `batch` is shorter than a batch header.
pub fn set_log_append_time(batch: &mut [u8], timestamp_ms: i64) {
    let attributes = be_i16(batch, OFF_ATTRIBUTES) | ATTR_LOG_APPEND_TIME;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[OFF_ATTRIBUTES..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Iterator over the batches concatenated in a records blob (a produce request's or fetch
/// response's `records`, or a log segment's bytes).
///
/// Stops (`None`) at a truncated tail, i.e. when fewer than 12 bytes remain or the last batch's
/// `batch_length` runs past the end — Kafka's fetch answers may end with a partial batch. A
/// batch whose header is garbage yields one `Err` and ends the iteration.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
    position: usize,
    failed: bool,
}

/// Iterates over the batches in `blob`; see [`Batches`].
pub fn batches(blob: &[u8]) -> Batches<'_> {
    Batches {
        rest: blob,
        position: 0,
        failed: false,
    }
}

impl<'a> Batches<'a> {
    /// Byte position in the blob of the next batch (after the iteration stops: the length of
    /// the complete batches, i.e. where a truncated tail starts).
    pub fn position(&self) -> usize {
        self.position
    }

    /// The bytes not yet iterated (a truncated tail once the iteration has stopped).
    pub fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<BatchView<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.len() < BATCH_LENGTH_PREFIX_BYTES {
            return None;
        }
        let batch_length = be_i32(self.rest, OFF_BATCH_LENGTH);
        if batch_length >= BATCH_LENGTH_MIN
            && self.rest.len() < BATCH_LENGTH_PREFIX_BYTES + batch_length as usize
        {
            return None; // truncated tail
        }
        match BatchView::new(self.rest) {
            Ok(view) => {
                self.rest = &self.rest[view.size_bytes()..];
                self.position += view.size_bytes();
                Some(Ok(view))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One record of a batch, borrowed from the (decompressed) records bytes. To keep a key or
/// value without copying, slice the `Bytes` it came from with `Bytes::slice_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset (`base_offset + offset_delta`).
    pub offset: i64,
    /// Absolute timestamp (`base_timestamp + timestamp_delta`, or the batch's max timestamp
    /// for log-append-time batches).
    pub timestamp: i64,
    /// Key, `None` if null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` if null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in wire order (duplicate keys are kept, as Kafka allows).
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Iterator over the records of an uncompressed records section.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    remaining: i32,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    failed: bool,
}

fn corrupt(reason: &str) -> ProtocolError {
    ProtocolError::CorruptRecord {
        reason: reason.to_owned(),
    }
}

fn take_uvarint64(buf: &mut &[u8]) -> Result<u64, ProtocolError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf
            .split_first()
            .ok_or_else(|| corrupt("truncated varint"))?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (i * 7);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(corrupt("varint longer than 10 bytes"))
}

fn take_varlong(buf: &mut &[u8]) -> Result<i64, ProtocolError> {
    let z = take_uvarint64(buf)?;
    Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
}

fn take_varint(buf: &mut &[u8]) -> Result<i32, ProtocolError> {
    let v = take_varlong(buf)?;
    i32::try_from(v).map_err(|_| corrupt("varint out of i32 range"))
}

fn take_bytes<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], ProtocolError> {
    if buf.len() < len {
        return Err(corrupt("length runs past the record"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn take_nullable<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ProtocolError> {
    match take_varint(buf)? {
        -1 => Ok(None),
        n if n < -1 => Err(corrupt("negative length")),
        n => take_bytes(buf, n as usize).map(Some),
    }
}

impl<'a> Records<'a> {
    /// Iterates `records_count` records from an uncompressed records section of `batch`.
    pub fn new(records: &'a [u8], batch: &BatchView<'_>) -> Records<'a> {
        Records {
            rest: records,
            remaining: batch.records_count().max(0),
            base_offset: batch.base_offset(),
            base_timestamp: batch.base_timestamp(),
            log_append_time: batch.is_log_append_time().then(|| batch.max_timestamp()),
            failed: false,
        }
    }

    fn parse_one(&mut self) -> Result<RecordView<'a>, ProtocolError> {
        let len = take_varint(&mut self.rest)?;
        if len < 0 {
            return Err(corrupt("negative record length"));
        }
        let mut rec = take_bytes(&mut self.rest, len as usize)?;
        let _attributes = take_bytes(&mut rec, 1)?;
        let timestamp_delta = take_varlong(&mut rec)?;
        let offset_delta = take_varint(&mut rec)?;
        let key = take_nullable(&mut rec)?;
        let value = take_nullable(&mut rec)?;
        let header_count = take_varint(&mut rec)?;
        if header_count < 0 {
            return Err(corrupt("negative header count"));
        }
        // Each header takes at least two bytes; refuse counts the record cannot hold before
        // sizing anything by them.
        if header_count as usize > rec.len() / 2 {
            return Err(corrupt("more headers than the record has bytes for"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key_len = take_varint(&mut rec)?;
            if key_len < 0 {
                return Err(corrupt("negative header key length"));
            }
            let key = std::str::from_utf8(take_bytes(&mut rec, key_len as usize)?)
                .map_err(|_| corrupt("header key is not UTF-8"))?;
            let value = take_nullable(&mut rec)?;
            headers.push((key, value));
        }
        if !rec.is_empty() {
            return Err(corrupt("trailing bytes in record"));
        }
        Ok(RecordView {
            offset: self.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp: self
                .log_append_time
                .unwrap_or_else(|| self.base_timestamp.wrapping_add(timestamp_delta)),
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let item = self.parse_one();
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

/// Builds one RecordBatch v2 from records (client side). Records are encoded as they are
/// pushed; [`BatchBuilder::build`] writes the header, compresses if asked, and fills the CRC.
///
/// The base offset is 0 (the broker assigns offsets); the base timestamp is the first record's.
#[derive(Debug)]
pub struct BatchBuilder {
    /// Header space at the front, then the uncompressed records.
    buf: BytesMut,
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    records_count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new(Compression::None)
    }
}

fn put_varlong(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn nullable_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varlong(buf, -1),
        Some(b) => {
            put_varlong(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

impl BatchBuilder {
    /// An empty, non-idempotent batch using `compression`.
    pub fn new(compression: Compression) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + 1024);
        buf.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            buf,
            compression,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            records_count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
        }
    }

    /// Marks the batch idempotent: the producer id and epoch, and the sequence of its first
    /// record.
    pub fn with_producer(
        mut self,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
    ) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch transactional.
    pub fn with_transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// Records pushed so far.
    pub fn records_count(&self) -> i32 {
        self.records_count
    }

    /// Uncompressed size so far, header included (for batch-size limits).
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.records_count == 0
    }

    /// Appends a record. Fails only when the batch would exceed what its i32 fields can count.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<(), ProtocolError> {
        if self.records_count == i32::MAX {
            return Err(ProtocolError::CorruptBatch {
                reason: "too many records for one batch",
            });
        }
        if self.records_count == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp);
        let offset_delta = i64::from(self.records_count);
        let mut body_len = 1 + varlong_len(timestamp_delta) + varlong_len(offset_delta);
        body_len += nullable_len(key) + nullable_len(value);
        body_len += varlong_len(headers.len() as i64);
        for (k, v) in headers {
            body_len += nullable_len(Some(k.as_bytes())) + nullable_len(*v);
        }
        if self.buf.len() + body_len + 5 > i32::MAX as usize {
            return Err(ProtocolError::CorruptBatch {
                reason: "batch larger than 2 GiB",
            });
        }
        self.buf.reserve(varlong_len(body_len as i64) + body_len);
        put_varlong(&mut self.buf, body_len as i64);
        self.buf.put_u8(0); // record attributes: unused
        put_varlong(&mut self.buf, timestamp_delta);
        put_varlong(&mut self.buf, offset_delta);
        put_nullable(&mut self.buf, key);
        put_nullable(&mut self.buf, value);
        put_varlong(&mut self.buf, headers.len() as i64);
        for (k, v) in headers {
            put_nullable(&mut self.buf, Some(k.as_bytes()));
            put_nullable(&mut self.buf, *v);
        }
        self.records_count += 1;
        Ok(())
    }

    /// Finishes the batch: header, compression, CRC. An empty builder yields an error (Kafka
    /// has no empty batches outside compaction).
    pub fn build(self) -> Result<Bytes, ProtocolError> {
        if self.records_count == 0 {
            return Err(ProtocolError::CorruptBatch {
                reason: "batch has no records",
            });
        }
        let mut buf = match self.compression {
            Compression::None => self.buf,
            codec => {
                let mut out = BytesMut::with_capacity(self.buf.len() / 2 + BATCH_HEADER_BYTES);
                out.put_bytes(0, BATCH_HEADER_BYTES);
                compress::compress(codec, &self.buf[BATCH_HEADER_BYTES..], &mut out)?;
                out
            }
        };
        let batch_length = i32::try_from(buf.len() - BATCH_LENGTH_PREFIX_BYTES).map_err(|_| {
            ProtocolError::CorruptBatch {
                reason: "batch larger than 2 GiB",
            }
        })?;
        let mut attributes = self.compression.id();
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        let mut header = &mut buf[..BATCH_HEADER_BYTES];
        header.put_i64(0);
        header.put_i32(batch_length);
        header.put_i32(-1); // partition leader epoch: the broker stamps it
        header.put_i8(MAGIC_V2);
        header.put_u32(0); // CRC, filled below
        header.put_i16(attributes);
        header.put_i32(self.records_count - 1);
        header.put_i64(self.base_timestamp);
        header.put_i64(self.max_timestamp);
        header.put_i64(self.producer_id);
        header.put_i16(self.producer_epoch);
        header.put_i32(self.base_sequence);
        header.put_i32(self.records_count);
        let crc = crc32c::crc32c(&buf[OFF_ATTRIBUTES..]);
        buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(buf.freeze())
    }
}

#[cfg(feature = "compression")]
mod compress {
    use std::io::Read;

    use super::Compression;
    use crate::error::ProtocolError;
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};

    // kafka-protocol's codecs report anyhow errors; we keep their text.
    fn err(e: impl std::fmt::Display) -> ProtocolError {
        ProtocolError::Compression {
            reason: format!("{e:#}"),
        }
    }

    pub(super) fn compress(
        codec: Compression,
        records: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        let fill = |b: &mut BytesMut| {
            b.put_slice(records);
            Ok(())
        };
        let result = match codec {
            Compression::None => {
                out.put_slice(records);
                Ok(())
            }
            Compression::Gzip => Gzip::compress(out, fill),
            Compression::Snappy => Snappy::compress(out, fill),
            Compression::Lz4 => Lz4::compress(out, fill),
            Compression::Zstd => Zstd::compress(out, fill),
        };
        result.map_err(err)
    }

    /// Reads `reader` to the end, failing once the output passes `limit`. The buffer grows with
    /// the output actually produced (never sized from a length in the data).
    fn read_bounded(
        reader: impl Read,
        compressed_len: usize,
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        let mut out = Vec::with_capacity(compressed_len.saturating_mul(4).min(limit));
        reader
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(err)?;
        if out.len() > limit {
            return Err(ProtocolError::DecompressedTooLarge { limit });
        }
        Ok(Bytes::from(out))
    }

    /// Kafka's snappy: xerial framing (8-byte magic, version, compatible version, then blocks
    /// each prefixed by a u32 length), or a raw snappy block when the magic is absent (as
    /// Java's SnappyInputStream falls back).
    fn snappy(data: &[u8], limit: usize) -> Result<Bytes, ProtocolError> {
        const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
        const XERIAL_HEADER_BYTES: usize = 16;
        let mut out = Vec::new();
        let decode_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), ProtocolError> {
            let len = snap::raw::decompress_len(block).map_err(err)?;
            if len > limit - out.len() {
                return Err(ProtocolError::DecompressedTooLarge { limit });
            }
            let start = out.len();
            out.resize(start + len, 0);
            let n = snap::raw::Decoder::new()
                .decompress(block, &mut out[start..])
                .map_err(err)?;
            out.truncate(start + n);
            Ok(())
        };
        if data.len() >= XERIAL_HEADER_BYTES && data.starts_with(XERIAL_MAGIC) {
            let mut rest = &data[XERIAL_HEADER_BYTES..];
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(err("truncated snappy block length"));
                };
                let len = u32::from_be_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(err("truncated snappy block"));
                }
                decode_block(&tail[..len], &mut out)?;
                rest = &tail[len..];
            }
        } else {
            decode_block(data, &mut out)?;
        }
        Ok(Bytes::from(out))
    }

    pub(super) fn decompress(
        codec: Compression,
        data: &[u8],
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        match codec {
            Compression::None => {
                if data.len() > limit {
                    return Err(ProtocolError::DecompressedTooLarge { limit });
                }
                Ok(Bytes::copy_from_slice(data))
            }
            // Java's GZIPInputStream reads concatenated members, so MultiGzDecoder.
            Compression::Gzip => {
                read_bounded(flate2::read::MultiGzDecoder::new(data), data.len(), limit)
            }
            Compression::Snappy => snappy(data, limit),
            Compression::Lz4 => {
                read_bounded(lz4::Decoder::new(data).map_err(err)?, data.len(), limit)
            }
            Compression::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(err)?;
                // The window zstd allocates comes from the frame header. Output within the cap
                // never needs a window larger than the cap, but streaming compressors declare
                // windows from their level (2 MiB at level 3, 8 MiB at level 19) regardless of
                // the size, so allow at least 8 MiB.
                let window_log = usize::BITS - limit.saturating_sub(1).leading_zeros();
                decoder
                    .window_log_max(window_log.clamp(23, 31))
                    .map_err(err)?;
                read_bounded(decoder, data.len(), limit)
            }
        }
    }
}

#[cfg(not(feature = "compression"))]
mod compress {
    use super::Compression;
    use crate::error::ProtocolError;
    use bytes::{Bytes, BytesMut};

    pub(super) fn compress(
        codec: Compression,
        _records: &[u8],
        _out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        Err(ProtocolError::CompressionUnavailable { codec: codec.id() })
    }

    pub(super) fn decompress(
        codec: Compression,
        data: &[u8],
        limit: usize,
    ) -> Result<Bytes, ProtocolError> {
        match codec {
            Compression::None if data.len() > limit => {
                Err(ProtocolError::DecompressedTooLarge { limit })
            }
            Compression::None => Ok(Bytes::copy_from_slice(data)),
            other => Err(ProtocolError::CompressionUnavailable { codec: other.id() }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // kafka-protocol's decoder is the reference here
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as KpCompression, Record, RecordBatchDecoder, RecordBatchEncoder,
        RecordEncodeOptions, TimestampType,
    };

    fn sample_batch(compression: Compression) -> Bytes {
        let mut b = BatchBuilder::new(compression).with_producer(77, 3, 10);
        b.push(1_000, Some(b"k0"), Some(b"v0"), &[]).unwrap();
        b.push(
            999,
            None,
            Some(b"v1"),
            &[("h", Some(b"x")), ("h", None), ("other", Some(b""))],
        )
        .unwrap();
        b.push(1_005, Some(b""), None, &[]).unwrap();
        b.build().unwrap()
    }

    #[test]
    fn built_batch_has_the_header_kafka_expects_and_a_valid_crc() {
        let bytes = sample_batch(Compression::None);
        let view = BatchView::new(&bytes).unwrap();
        assert_eq!(view.size_bytes(), bytes.len());
        assert_eq!(view.base_offset(), 0);
        assert_eq!(view.batch_length() as usize, bytes.len() - 12);
        assert_eq!(view.partition_leader_epoch(), -1);
        assert_eq!(view.magic(), 2);
        assert_eq!(view.compression(), Some(Compression::None));
        assert!(!view.is_transactional() && !view.is_control() && !view.is_log_append_time());
        assert_eq!(view.last_offset_delta(), 2);
        assert_eq!(view.base_timestamp(), 1_000);
        assert_eq!(view.max_timestamp(), 1_005);
        assert_eq!(view.producer_id(), 77);
        assert_eq!(view.producer_epoch(), 3);
        assert_eq!(view.base_sequence(), 10);
        assert_eq!(view.records_count(), 3);
        view.validate().unwrap();
    }

    #[test]
    fn our_records_decode_with_kafka_protocol_and_with_our_iterator() {
        let bytes = sample_batch(Compression::None);
        let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[1].offset, 1);
        assert_eq!(set.records[1].timestamp, 999);
        assert_eq!(set.records[1].sequence, 11);
        assert_eq!(set.records[1].value.as_deref(), Some(&b"v1"[..]));
        assert_eq!(set.records[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(set.records[2].value, None);

        let view = BatchView::new(&bytes).unwrap();
        let records: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].key, Some(&b"k0"[..]));
        assert_eq!(records[0].timestamp, 1_000);
        assert_eq!(records[1].offset, 1);
        assert_eq!(records[1].timestamp, 999);
        assert_eq!(
            records[1].headers,
            vec![
                ("h", Some(&b"x"[..])),
                ("h", None),
                ("other", Some(&b""[..]))
            ]
        );
        assert_eq!(records[2].value, None);
    }

    #[test]
    fn batches_encoded_by_kafka_protocol_are_read_in_place() {
        let records: Vec<Record> = (0..5)
            .map(|i| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 9,
                producer_id: 5,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: 100 + i,
                sequence: i as i32,
                timestamp: 50 + i,
                key: None,
                value: Some(Bytes::from(vec![i as u8; 10])),
                headers: IndexMap::from([(StrBytes::from_static_str("a"), None)]),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: KpCompression::None,
            },
        )
        .unwrap();
        let view = BatchView::new(&buf).unwrap();
        view.validate().unwrap();
        assert_eq!(view.base_offset(), 100);
        assert_eq!(view.last_offset(), 104);
        assert_eq!(view.next_offset(), 105);
        assert_eq!(view.partition_leader_epoch(), 9);
        assert!(view.is_transactional());
        let ours: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
        for (r, o) in records.iter().zip(&ours) {
            assert_eq!(o.offset, r.offset);
            assert_eq!(o.timestamp, r.timestamp);
            assert_eq!(o.value, r.value.as_deref());
            assert_eq!(o.headers, vec![("a", None)]);
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_crc_but_stamping_offset_and_epoch_does_not() {
        let bytes = sample_batch(Compression::None);
        let mut copy = bytes.to_vec();
        set_base_offset(&mut copy, 1234);
        set_partition_leader_epoch(&mut copy, 7);
        let view = BatchView::new(&copy).unwrap();
        view.validate().unwrap();
        assert_eq!(
            (view.base_offset(), view.partition_leader_epoch()),
            (1234, 7)
        );
        assert_eq!(
            view.records().unwrap().nth(2).unwrap().unwrap().offset,
            1236
        );

        for at in [21, 30, 60, copy.len() - 1] {
            let mut bad = copy.clone();
            bad[at] ^= 0x10;
            let err = BatchView::new(&bad).unwrap().validate_crc().unwrap_err();
            assert!(
                matches!(err, ProtocolError::CrcMismatch { .. }),
                "byte {at}"
            );
            assert_eq!(err.kafka_error_code(), Some(2));
        }
    }

    #[test]
    fn log_append_time_rewrites_timestamps_and_keeps_the_crc_valid() {
        let mut copy = sample_batch(Compression::None).to_vec();
        set_log_append_time(&mut copy, 42_000);
        let view = BatchView::new(&copy).unwrap();
        view.validate().unwrap();
        assert!(view.is_log_append_time());
        assert!(view
            .records()
            .unwrap()
            .all(|r| r.unwrap().timestamp == 42_000));
    }

    #[test]
    fn garbage_batches_are_rejected_with_typed_errors() {
        let good = sample_batch(Compression::None).to_vec();
        assert!(matches!(
            BatchView::new(&good[..60]),
            Err(ProtocolError::CorruptBatch { .. })
        ));
        let mut bad = good.clone();
        bad[16] = 1;
        assert!(matches!(
            BatchView::new(&bad),
            Err(ProtocolError::UnsupportedMagic { magic: 1 })
        ));
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&48i32.to_be_bytes());
        assert!(BatchView::new(&bad).is_err());
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(BatchView::new(&bad).is_err());
        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(BatchView::new(&bad).is_err());

        // Header inconsistencies are caught by validate() even with a matching CRC.
        let fix_crc = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[21..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        };
        for (at, value) in [(57usize, 0i32), (57, -5), (57, 1_000_000), (23, -1)] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&value.to_be_bytes());
            fix_crc(&mut bad);
            assert!(
                matches!(
                    BatchView::new(&bad).unwrap().validate(),
                    Err(ProtocolError::CorruptBatch { .. })
                ),
                "field at {at} = {value}"
            );
        }
        let mut bad = good.clone();
        bad[22] |= 0x07; // codec 7
        fix_crc(&mut bad);
        assert!(BatchView::new(&bad).unwrap().validate().is_err());

        // A record whose length runs past the batch is a typed error, not a panic.
        let mut bad = good.clone();
        bad[61] = 0x7e; // record length 63
        let err = BatchView::new(&bad)
            .unwrap()
            .records()
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, ProtocolError::CorruptRecord { .. }));
    }

    #[test]
    fn batches_iterator_stops_at_a_truncated_tail() {
        let one = sample_batch(Compression::None);
        let mut blob = Vec::new();
        for _ in 0..3 {
            blob.extend_from_slice(&one);
        }
        for cut in 0..=blob.len() {
            let mut it = batches(&blob[..cut]);
            let n = it.by_ref().inspect(|b| assert!(b.is_ok())).count();
            assert_eq!(n, cut / one.len(), "cut at {cut}");
            assert_eq!(it.position(), n * one.len());
            assert_eq!(it.remainder().len(), cut - n * one.len());
        }
    }

    #[test]
    fn batches_iterator_reports_garbage_once() {
        let one = sample_batch(Compression::None);
        let mut blob = one.to_vec();
        blob.extend_from_slice(&[0u8; 70]); // batch_length 0: garbage, not a truncation
        let results: Vec<_> = batches(&blob).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(results[1].is_err());
    }

    type RecordSpec = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn record_spec() -> impl proptest::strategy::Strategy<Value = RecordSpec> {
        use proptest::prelude::*;
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(
                (
                    "[a-z.]{0,6}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
                ),
                0..3,
            ),
        )
    }

    proptest::proptest! {
        #[test]
        fn any_records_round_trip_through_builder_view_and_iterator(
            specs in proptest::collection::vec(record_spec(), 1..20),
            producer_id in -1i64..1000,
            base_sequence in -1i32..i32::MAX,
        ) {
            let mut builder = BatchBuilder::new(Compression::None).with_producer(producer_id, 0, base_sequence);
            for (ts, key, value, headers) in &specs {
                let headers: Vec<(&str, Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                builder.push(*ts, key.as_deref(), value.as_deref(), &headers).unwrap();
            }
            let bytes = builder.build().unwrap();
            let view = BatchView::new(&bytes).unwrap();
            view.validate().unwrap();
            proptest::prop_assert_eq!(view.records_count() as usize, specs.len());
            proptest::prop_assert_eq!(view.max_timestamp(), specs.iter().map(|s| s.0).max().unwrap());
            let records: Vec<_> = view.records().unwrap().map(Result::unwrap).collect();
            proptest::prop_assert_eq!(records.len(), specs.len());
            for (i, (r, (ts, key, value, headers))) in records.iter().zip(&specs).enumerate() {
                proptest::prop_assert_eq!(r.offset, i as i64);
                proptest::prop_assert_eq!(r.timestamp, *ts);
                proptest::prop_assert_eq!(r.key, key.as_deref());
                proptest::prop_assert_eq!(r.value, value.as_deref());
                let expected: Vec<(&str, Option<&[u8]>)> =
                    headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                proptest::prop_assert_eq!(&r.headers, &expected);
            }
            // kafka-protocol's decoder agrees on offsets, timestamps and values. It adds
            // timestamp deltas without wrapping (a panic in debug builds), so it is asked
            // only when no delta from the batch's base timestamp overflows.
            let base_ts = view.base_timestamp();
            if specs.iter().any(|s| s.0.checked_sub(base_ts).is_none()) {
                return Ok(());
            }
            let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
            for (theirs, ours) in set.records.iter().zip(&records) {
                proptest::prop_assert_eq!(theirs.offset, ours.offset);
                proptest::prop_assert_eq!(theirs.timestamp, ours.timestamp);
                proptest::prop_assert_eq!(theirs.value.as_deref(), ours.value);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_batch_helpers(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for view in batches(&data) {
                let Ok(view) = view else { break };
                let _ = view.validate();
                if let Ok(records) = view.records() {
                    for r in records {
                        if r.is_err() { break; }
                    }
                }
            }
        }
    }

    #[test]
    fn empty_builder_refuses_to_build() {
        assert!(BatchBuilder::default().build().is_err());
    }

    #[test]
    fn varlong_len_matches_encoding() {
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
            let mut b = BytesMut::new();
            put_varlong(&mut b, v);
            assert_eq!(b.len(), varlong_len(v), "{v}");
            let mut s = &b[..];
            assert_eq!(take_varlong(&mut s).unwrap(), v);
        }
    }

    #[cfg(not(feature = "compression"))]
    #[test]
    fn compression_without_the_feature_is_a_typed_error() {
        let mut b = BatchBuilder::new(Compression::Gzip);
        b.push(0, None, Some(b"x"), &[]).unwrap();
        assert!(matches!(
            b.build(),
            Err(ProtocolError::CompressionUnavailable { codec: 1 })
        ));
    }

    #[cfg(feature = "compression")]
    #[test]
    fn decompression_bombs_are_refused_at_the_cap() {
        let zeros = vec![0u8; 4 << 20];
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(codec);
            b.push(0, None, Some(&zeros), &[]).unwrap();
            let bytes = b.build().unwrap();
            assert!(bytes.len() < 1 << 20, "{codec:?}: {} bytes", bytes.len());
            let view = BatchView::new(&bytes).unwrap();
            assert!(
                matches!(
                    view.decompress_records_bounded(1 << 20),
                    Err(ProtocolError::DecompressedTooLarge { limit }) if limit == 1 << 20
                ),
                "{codec:?}"
            );
            let plain = view.decompress_records().unwrap();
            assert!(plain.len() > 4 << 20);
            let record = Records::new(&plain, &view).next().unwrap().unwrap();
            assert_eq!(record.value.unwrap().len(), 4 << 20);
        }
    }

    #[cfg(feature = "compression")]
    #[test]
    fn raw_snappy_without_xerial_framing_is_accepted() {
        let plain_batch = sample_batch(Compression::None);
        let records = &plain_batch[BATCH_HEADER_BYTES..];
        let compressed = snap::raw::Encoder::new().compress_vec(records).unwrap();
        let mut batch = plain_batch[..BATCH_HEADER_BYTES].to_vec();
        batch.extend_from_slice(&compressed);
        let batch_length = (batch.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
        batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
        batch[21..23].copy_from_slice(&Compression::Snappy.id().to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let view = BatchView::new(&batch).unwrap();
        view.validate().unwrap();
        assert_eq!(&view.decompress_records().unwrap()[..], records);
        // A raw block that claims a huge length is refused before anything is allocated.
        let mut lying = batch.clone();
        lying.truncate(BATCH_HEADER_BYTES);
        lying.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
        let batch_length = (lying.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
        lying[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let view = BatchView::new(&lying).unwrap();
        assert!(matches!(
            view.decompress_records_bounded(1 << 20),
            Err(ProtocolError::DecompressedTooLarge { .. })
        ));
    }

    #[cfg(feature = "compression")]
    #[test]
    fn every_codec_round_trips_and_kafka_protocol_agrees() {
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(codec);
            for i in 0..100u32 {
                let value = format!("value-{i}-{}", "x".repeat(50));
                b.push(i64::from(i), None, Some(value.as_bytes()), &[])
                    .unwrap();
            }
            let bytes = b.build().unwrap();
            let view = BatchView::new(&bytes).unwrap();
            view.validate().unwrap();
            assert_eq!(view.compression(), Some(codec));
            assert!(bytes.len() < 100 * 50, "{codec:?} did not compress");
            let plain = view.decompress_records().unwrap();
            let records: Vec<_> = Records::new(&plain, &view).map(Result::unwrap).collect();
            assert_eq!(records.len(), 100);
            assert_eq!(records[99].offset, 99);
            let set = RecordBatchDecoder::decode(&mut bytes.clone()).unwrap();
            assert_eq!(set.records.len(), 100);
            assert_eq!(
                set.records[7].value,
                Some(Bytes::from(format!("value-7-{}", "x".repeat(50))))
            );
        }
    }
}
