//! Records as the application sees them.

use std::sync::Arc;

use bytes::Bytes;

/// A record header: a string key and an optional byte value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: String,
    /// Header value (`None` is Kafka's null).
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with a value.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Target topic.
    pub topic: String,
    /// Explicit partition; `None` lets the partitioner choose (by key, or sticky for
    /// null keys).
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Create time in ms since the Unix epoch; `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value for `topic`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }

    /// Sets the create timestamp (ms since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Upper bound of this record's encoded size inside a batch, used for batch
    /// sizing and the memory limit (varint framing counted at its maximum).
    pub(crate) fn size_estimate_bytes(&self) -> usize {
        const RECORD_OVERHEAD_BYTES: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
        let key = self.key.as_ref().map_or(0, Bytes::len);
        let value = self.value.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|h| 10 + h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum();
        RECORD_OVERHEAD_BYTES + key + value + headers
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// Partition index.
    pub partition: i32,
    /// Offset in the partition; `-1` with `acks=0`, where the broker does not say.
    pub offset: i64,
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct ConsumerRecord {
    /// Topic name (shared between the records of a partition).
    pub topic: Arc<str>,
    /// Partition index.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp in ms (create time or log-append time, per the topic).
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

/// A topic and partition index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds a `TopicPartition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One record of a decoded batch, as positions in the batch's bytes (its records
/// section, or the decompressed one): the records of a batch share one `Bytes`, and
/// nothing is allocated or reference-counted per record until the application asks
/// for an owned [`ConsumerRecord`]. Every position was checked against those bytes
/// when the batch was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordEntry {
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: i64,
    /// Start of the key in the batch's bytes.
    pub(crate) key_at: u32,
    /// Key length; -1 for a null key.
    pub(crate) key_len: i32,
    pub(crate) value_at: u32,
    /// Value length; -1 for a null value.
    pub(crate) value_len: i32,
    /// The headers section: from here to `headers_end`, `header_count` headers whose
    /// keys were checked to be UTF-8.
    pub(crate) headers_at: u32,
    pub(crate) headers_end: u32,
    pub(crate) header_count: u32,
}

/// `at..at + len` of `source`, or `None` for a null field (`len` -1).
fn field(source: &[u8], at: u32, len: i32) -> Option<&[u8]> {
    let len = usize::try_from(len).ok()?;
    let at = at as usize;
    source.get(at..at.checked_add(len)?)
}

/// The same field as a `Bytes` sharing `source`.
fn field_bytes(source: &Bytes, at: u32, len: i32) -> Option<Bytes> {
    field(source, at, len).map(|f| source.slice_ref(f))
}

impl RecordEntry {
    /// The owned record: one reference count per non-null key, value and header value,
    /// plus the topic's.
    pub(crate) fn to_record(
        self,
        source: &Bytes,
        topic: &Arc<str>,
        partition: i32,
    ) -> ConsumerRecord {
        ConsumerRecord {
            topic: topic.clone(),
            partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: field_bytes(source, self.key_at, self.key_len),
            value: field_bytes(source, self.value_at, self.value_len),
            headers: if self.header_count == 0 {
                Vec::new()
            } else {
                self.headers(source)
                    .map(|(k, v)| Header {
                        key: k.to_owned(),
                        value: v.map(|v| source.slice_ref(v)),
                    })
                    .collect()
            },
        }
    }

    fn headers<'a>(&self, source: &'a [u8]) -> RecordHeaders<'a> {
        RecordHeaders::new(
            source
                .get(self.headers_at as usize..self.headers_end as usize)
                .unwrap_or_default(),
            self.header_count as usize,
        )
    }
}

/// A record borrowed from the consumer (see [`crate::Consumer::next_batch`]): key,
/// value and headers are slices of the fetched bytes, no copy and no reference count.
/// [`RecordRef::to_record`] makes an owned [`ConsumerRecord`] of it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    entry: &'a RecordEntry,
    source: &'a Bytes,
    topic: &'a Arc<str>,
    partition: i32,
}

impl<'a> RecordRef<'a> {
    /// Offset.
    pub fn offset(&self) -> i64 {
        self.entry.offset
    }

    /// Timestamp in ms (create time or log-append time, per the topic).
    pub fn timestamp_ms(&self) -> i64 {
        self.entry.timestamp_ms
    }

    /// Key (`None` is Kafka's null).
    pub fn key(&self) -> Option<&'a [u8]> {
        field(self.source, self.entry.key_at, self.entry.key_len)
    }

    /// Value (`None` is a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        field(self.source, self.entry.value_at, self.entry.value_len)
    }

    /// Headers in wire order: `(key, value)`, value `None` for Kafka's null.
    pub fn headers(&self) -> RecordHeaders<'a> {
        self.entry.headers(self.source)
    }

    /// The owned record (shares the fetched bytes: one reference count per field).
    pub fn to_record(self) -> ConsumerRecord {
        self.entry
            .to_record(self.source, self.topic, self.partition)
    }
}

/// The headers of a [`RecordRef`]: `(key, value)` pairs in wire order, decoded lazily
/// from bytes the broker's record decoder validated when the batch was decoded.
pub type RecordHeaders<'a> = rill_protocol::batch::Headers<'a>;

/// The records of one record batch of one partition, borrowed from the consumer until
/// its next call (see [`crate::Consumer::next_batch`]). Holds at least one record.
#[derive(Debug, Clone, Copy)]
pub struct RecordBatchRef<'a> {
    pub(crate) topic: &'a Arc<str>,
    pub(crate) partition: i32,
    pub(crate) source: &'a Bytes,
    pub(crate) entries: &'a [RecordEntry],
}

impl<'a> RecordBatchRef<'a> {
    /// Topic name.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// Partition index.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no record (never, as handed out by the consumer).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, in offset order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'a>> + 'a {
        let (source, topic, partition) = (self.source, self.topic, self.partition);
        self.entries.iter().map(move |entry| RecordRef {
            entry,
            source,
            topic,
            partition,
        })
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> Option<i64> {
        self.entries.last().map(|e| e.offset)
    }
}
