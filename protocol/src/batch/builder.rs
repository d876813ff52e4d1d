//! [`BatchBuilder`]: builds one RecordBatch v2 from records (client side), writing the
//! header through `rill-record` and compressing through [`super::compress`].

use bytes::{BufMut, Bytes, BytesMut};
use rill_record::layout::{ATTR_TRANSACTIONAL, HEADER_BYTES as BATCH_HEADER_BYTES};
use rill_record::varint::{put_varlong, varlong_len};
use rill_record::write::{finish_batch, BatchFields};

use super::compress;
use super::Compression;
use crate::error::ProtocolError;

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

fn nullable_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

/// Longest zigzag varlong (an i64 in 7-bit groups).
const VARLONG_BYTES_MAX: usize = 10;

/// Writes `value` as a zigzag varlong at the start of `out` (at least
/// `VARLONG_BYTES_MAX` long); returns the bytes written.
fn varlong_into(out: &mut [u8], value: i64) -> usize {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 0;
    while z >= 0x80 {
        out[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    out[n] = z as u8;
    n + 1
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
        BatchBuilder::with_buffer(
            compression,
            BytesMut::with_capacity(BATCH_HEADER_BYTES + 1024),
        )
    }

    /// An empty, non-idempotent batch using `compression` that writes into `buf`, cleared
    /// first: its capacity is reused, so a caller that recycles batch buffers spares the
    /// allocator, the growth copies and the kernel's page faults of fresh memory.
    pub fn with_buffer(compression: Compression, mut buf: BytesMut) -> BatchBuilder {
        buf.clear();
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
        // The fields before the key go out as one slice: per-byte puts, each checking
        // capacity, cost more than the rest of a small record's framing.
        let mut head = [0u8; 4 * VARLONG_BYTES_MAX + 1];
        let mut at = 0;
        at += varlong_into(&mut head[at..], body_len as i64);
        head[at] = 0; // record attributes: unused
        at += 1;
        at += varlong_into(&mut head[at..], timestamp_delta);
        at += varlong_into(&mut head[at..], offset_delta);
        at += varlong_into(&mut head[at..], key.map_or(-1, |k| k.len() as i64));
        self.buf.put_slice(&head[..at]);
        if let Some(k) = key {
            self.buf.put_slice(k);
        }
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
        let mut attributes = self.compression.id();
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        let fields = BatchFields {
            base_offset: 0,
            partition_leader_epoch: -1, // the broker stamps it
            attributes,
            last_offset_delta: self.records_count - 1,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            records_count: self.records_count,
        };
        finish_batch(&mut buf, &fields).map_err(|_| ProtocolError::CorruptBatch {
            reason: "batch larger than 2 GiB",
        })?;
        Ok(buf.freeze())
    }
}
