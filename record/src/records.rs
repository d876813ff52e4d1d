//! [`Records`]: the records of an uncompressed records section, decoded in place.
//!
//! Record layout (varints are zigzag; lengths of -1 mean null):
//! `length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//!  keyLength varint | key | valueLength varint | value | headerCount varint |
//!  headers: (keyLength varint | key utf8 | valueLength varint | value)*`
//!
//! Nothing here allocates: every length and count read from the bytes is checked against
//! the bytes left before it is used, and a record's headers are validated once and then
//! handed out as a lazy [`Headers`] iterator over the record's own bytes.

use crate::error::RecordError;
use crate::varint::{read_varint, read_varlong};
use crate::view::BatchView;

fn corrupt(reason: &'static str) -> RecordError {
    RecordError::CorruptRecord { reason }
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], RecordError> {
    if buf.len() < len {
        return Err(corrupt("length runs past the record"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn take_nullable<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, RecordError> {
    match read_varint(buf)? {
        -1 => Ok(None),
        n if n < -1 => Err(corrupt("negative length")),
        n => take(buf, n as usize).map(Some),
    }
}

fn take_header<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, Option<&'a [u8]>), RecordError> {
    let key_len = read_varint(buf)?;
    if key_len < 0 {
        return Err(corrupt("negative header key length"));
    }
    let key = std::str::from_utf8(take(buf, key_len as usize)?)
        .map_err(|_| corrupt("header key is not UTF-8"))?;
    let value = take_nullable(buf)?;
    Ok((key, value))
}

/// One record, borrowed from the (decompressed) records bytes. To keep a key or value
/// without copying, slice the `Bytes` it came from with `Bytes::slice_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Absolute offset (`baseOffset + offsetDelta`).
    pub offset: i64,
    /// Absolute timestamp (`baseTimestamp + timestampDelta`, or the batch's maxTimestamp for
    /// log-append-time batches).
    pub timestamp: i64,
    /// Key, `None` if null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` if null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in wire order (duplicate keys are kept, as Kafka allows); already validated.
    pub headers: Headers<'a>,
}

/// The headers of one record: `(key, value)` pairs in wire order, decoded lazily from the
/// record's bytes, which [`Records`] validated before handing the record out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers<'a> {
    rest: &'a [u8],
    remaining: usize,
}

impl<'a> Headers<'a> {
    /// `count` headers at the front of `bytes` (a record's headers section, after its
    /// count), decoded lazily; the iteration ends early at a malformed one. [`Records`]
    /// hands out only headers it validated; a caller that keeps a record's headers as
    /// [`Headers::as_bytes`] and its count can rebuild them with this.
    pub fn new(bytes: &'a [u8], count: usize) -> Headers<'a> {
        Headers {
            rest: bytes,
            remaining: count,
        }
    }

    /// The bytes of the headers not iterated yet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rest
    }

    /// Headers left to iterate.
    pub fn len(&self) -> usize {
        self.remaining
    }
    /// Whether no header is left.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Validated when the record was decoded; should it ever fail, the iteration
        // ends (and stays ended).
        let header = take_header(&mut self.rest).ok();
        if header.is_none() {
            self.remaining = 0;
        }
        header
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Headers<'_> {}

/// Iterator over the records of an uncompressed records section. After an error it ends.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    remaining: i32,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time_ms: Option<i64>,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Iterates the records of `batch` found in `records`: the batch's own records section
    /// if uncompressed ([`BatchView::records`]), or its decompressed bytes.
    pub fn new(records: &'a [u8], batch: &BatchView<'_>) -> Records<'a> {
        Records {
            rest: records,
            remaining: batch.records_count().max(0),
            base_offset: batch.base_offset(),
            base_timestamp: batch.base_timestamp(),
            log_append_time_ms: batch.is_log_append_time().then(|| batch.max_timestamp()),
            failed: false,
        }
    }

    fn parse_one(&mut self) -> Result<RecordView<'a>, RecordError> {
        let len = read_varint(&mut self.rest)?;
        if len < 0 {
            return Err(corrupt("negative record length"));
        }
        let mut rec = take(&mut self.rest, len as usize)?;
        let _attributes = take(&mut rec, 1)?; // unused by every Kafka version so far
        let timestamp_delta = read_varlong(&mut rec)?;
        let offset_delta = read_varint(&mut rec)?;
        let key = take_nullable(&mut rec)?;
        let value = take_nullable(&mut rec)?;
        let header_count = read_varint(&mut rec)?;
        if header_count < 0 {
            return Err(corrupt("negative header count"));
        }
        // Each header takes at least two bytes; a count the record cannot hold is refused
        // before the walk, so a huge count costs nothing.
        if header_count as usize > rec.len() / 2 {
            return Err(corrupt("more headers than the record has bytes for"));
        }
        let headers = Headers {
            rest: rec,
            remaining: header_count as usize,
        };
        for _ in 0..header_count {
            take_header(&mut rec)?;
        }
        if !rec.is_empty() {
            return Err(corrupt("trailing bytes in record"));
        }
        Ok(RecordView {
            offset: self.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp: self
                .log_append_time_ms
                .unwrap_or_else(|| self.base_timestamp.wrapping_add(timestamp_delta)),
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, RecordError>;

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
