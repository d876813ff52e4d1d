//! The client's only contact with `rill-protocol`: framing, request/response encoding,
//! the version table, and record batches. Keeping it in one module keeps the rest of the
//! crate about behaviour, not bytes.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::{Request, StrBytes};
use rill_protocol::batch::{self, BatchBuilder, BatchView, DecompressRecords};
use rill_protocol::decode::{self, Decode};
use rill_protocol::header::RequestHeader;
use rill_protocol::{codec, versions};
use tokio_util::codec::Decoder;

use crate::config::Compression;
use crate::error::{Error, Result};
use crate::group::assignor::MemberSubscription;
use crate::record::{ProducerRecord, RecordEntry, TopicPartition};

/// Bytes of a RecordBatch v2 header (counted once per batch when sizing batches).
pub(crate) const BATCH_OVERHEAD_BYTES: usize = batch::BATCH_HEADER_BYTES;

/// Newest Fetch version the consumer speaks: v13+ address topics by id, which this
/// client does not track.
const FETCH_VERSION_MAX: i16 = 12;

/// Length-prefixed frames; responses come out as whole payloads.
#[derive(Debug)]
pub(crate) struct FrameCodec(rill_protocol::frame::FrameCodec);

/// Why reading a frame failed (tokio-util's decoder error type must absorb io errors).
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The socket failed.
    Io(std::io::Error),
    /// The frame was refused (e.g. larger than `response_bytes_max`).
    Frame(rill_protocol::ProtocolError),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Frame(e) => write!(f, "{e}"),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let frame = self.0.decode(src).map_err(FrameError::Frame)?;
        if frame.is_none() {
            reserve_frame(src);
        }
        Ok(frame.map(BytesMut::freeze))
    }
}

/// Most bytes reserved at once for the rest of a partial response frame.
const FRAME_RESERVE_AT_ONCE_BYTES_MAX: usize = 16 << 20;

/// Room for the rest of the partial frame at the front of `src` (whose size the inner
/// codec has already checked against `response_bytes_max`), up to
/// [`FRAME_RESERVE_AT_ONCE_BYTES_MAX`] at once. The inner codec grows the buffer with
/// the bytes received (it also reads requests from unknown peers); a response to our
/// own request is expected, and reserving it whole spares a fetch response of a few
/// MiB the reallocations and copies of that growth (5 % of the consumer's CPU
/// measured) and lets each socket read take as much as has arrived.
fn reserve_frame(src: &mut BytesMut) {
    let Some(prefix) = src.get(..rill_protocol::frame::FRAME_PREFIX_BYTES) else {
        return;
    };
    let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let Ok(size) = usize::try_from(size) else {
        return;
    };
    let frame_len = rill_protocol::frame::FRAME_PREFIX_BYTES + size;
    if frame_len <= src.capacity() {
        return;
    }
    // A power of two: responses of about the same size then ask the allocator for the
    // same few sizes, which it keeps reusing; sizes that vary by a few bytes made glibc
    // map and unmap fresh memory for most responses (16,000-39,000 page faults per GB
    // consumed, against 1,000-1,600 with the inner codec's doubling).
    let capacity = frame_len
        .checked_next_power_of_two()
        .unwrap_or(frame_len)
        .min(FRAME_RESERVE_AT_ONCE_BYTES_MAX.max(frame_len));
    let wanted = capacity.min(src.len() + FRAME_RESERVE_AT_ONCE_BYTES_MAX);
    src.reserve(wanted.saturating_sub(src.len()));
}

/// A frame decoder refusing responses larger than `response_bytes_max`.
pub(crate) fn frame_codec(response_bytes_max: usize) -> FrameCodec {
    FrameCodec(rill_protocol::frame::FrameCodec::new(response_bytes_max))
}

/// The versions this client can speak for `api_key` (inclusive), from rill-protocol's
/// table; `(0, -1)` for an API it does not speak.
pub(crate) fn client_api_version_range(api_key: ApiKey) -> (i16, i16) {
    match versions::supported_range(api_key as i16) {
        None => (0, -1),
        Some(r) if api_key == ApiKey::Fetch => (r.min, r.max.min(FETCH_VERSION_MAX)),
        Some(r) => (r.min, r.max),
    }
}

/// A readable API name for errors.
pub(crate) fn api_name(api_key: i16) -> &'static str {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Produce) => "Produce",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::DeleteTopics) => "DeleteTopics",
        Ok(ApiKey::CreatePartitions) => "CreatePartitions",
        Ok(ApiKey::DescribeConfigs) => "DescribeConfigs",
        Ok(ApiKey::AlterConfigs) => "AlterConfigs",
        Ok(ApiKey::IncrementalAlterConfigs) => "IncrementalAlterConfigs",
        Ok(ApiKey::DeleteRecords) => "DeleteRecords",
        Ok(ApiKey::DescribeCluster) => "DescribeCluster",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::OffsetFetch) => "OffsetFetch",
        _ => "request",
    }
}

/// A complete request frame (size prefix, header, body).
pub(crate) fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Bytes> {
    let header = RequestHeader {
        api_key: R::KEY,
        api_version: version,
        correlation_id,
        client_id: Some(client_id.as_str().to_owned()),
    };
    codec::encode_request(&header, request).map_err(|e| Error::Protocol(e.to_string()))
}

/// One topic's batches in a Produce request: (partition index, RecordBatch bytes).
pub(crate) type ProduceTopic<'a> = (&'a str, Vec<(i32, &'a Bytes)>);

/// Produce versions from which the request is flexible (compact strings and arrays,
/// tagged fields).
const PRODUCE_FLEXIBLE_VERSION_MIN: i16 = 9;

/// A complete Produce request frame (size prefix, header, body) as parts to write in
/// order: the encoding between the batches, and each batch's bytes as they are, not
/// copied into the frame. Concatenated, the parts are exactly what [`encode_request`]
/// makes of the same `ProduceRequest` (no transactional id, no tagged fields).
pub(crate) fn encode_produce_parts(
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    acks: i16,
    timeout_ms: i32,
    topics: &[ProduceTopic<'_>],
) -> Result<Vec<Bytes>> {
    use bytes::BufMut;
    use kafka_protocol::messages::ProduceRequest;

    let flexible = version >= PRODUCE_FLEXIBLE_VERSION_MIN;
    let too_large = || Error::Protocol("produce request too large to encode".into());
    let header = RequestHeader {
        api_key: ProduceRequest::KEY,
        api_version: version,
        correlation_id,
        client_id: Some(client_id.as_str().to_owned()),
    };
    let partitions: usize = topics.iter().map(|(_, p)| p.len()).sum();
    let names: usize = topics.iter().map(|(n, _)| n.len()).sum();
    let mut glue = BytesMut::with_capacity(64 + client_id.len() + names + 24 * partitions);
    glue.put_i32(0); // the size prefix, filled in below
    rill_protocol::header::encode_request_header(&mut glue, &header)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    // transactional_id: null.
    if flexible {
        put_uvarint(&mut glue, 0);
    } else {
        glue.put_i16(-1);
    }
    glue.put_i16(acks);
    glue.put_i32(timeout_ms);
    let put_len = |glue: &mut BytesMut, len: usize| -> Result<()> {
        if flexible {
            put_uvarint(glue, u32::try_from(len + 1).map_err(|_| too_large())?);
        } else {
            glue.put_i32(i32::try_from(len).map_err(|_| too_large())?);
        }
        Ok(())
    };
    put_len(&mut glue, topics.len())?;
    // Where in `glue` each batch goes.
    let mut cuts: Vec<(usize, &Bytes)> = Vec::with_capacity(partitions);
    for (name, batches) in topics {
        if flexible {
            put_len(&mut glue, name.len())?;
        } else {
            glue.put_i16(i16::try_from(name.len()).map_err(|_| too_large())?);
        }
        glue.put_slice(name.as_bytes());
        put_len(&mut glue, batches.len())?;
        for (index, records) in batches {
            glue.put_i32(*index);
            put_len(&mut glue, records.len())?;
            cuts.push((glue.len(), records));
            if flexible {
                put_uvarint(&mut glue, 0); // partition's tagged fields
            }
        }
        if flexible {
            put_uvarint(&mut glue, 0); // topic's tagged fields
        }
    }
    if flexible {
        put_uvarint(&mut glue, 0); // request's tagged fields
    }
    let records_bytes: usize = cuts.iter().map(|(_, r)| r.len()).sum();
    let payload = i32::try_from(glue.len() - 4 + records_bytes).map_err(|_| too_large())?;
    glue[..4].copy_from_slice(&payload.to_be_bytes());
    let glue = glue.freeze();
    let mut parts = Vec::with_capacity(2 * cuts.len() + 1);
    let mut at = 0;
    for (cut, records) in cuts {
        parts.push(glue.slice(at..cut));
        parts.push(records.clone());
        at = cut;
    }
    parts.push(glue.slice(at..));
    Ok(parts)
}

fn put_uvarint(buf: &mut BytesMut, mut value: u32) {
    use bytes::BufMut;
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

/// The correlation id at the front of a response payload.
pub(crate) fn peek_correlation_id(frame: &[u8]) -> Result<i32> {
    frame
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Error::Protocol("response shorter than its header".into()))
}

/// Decodes a response payload to a request of type `R` sent at `version`.
pub(crate) fn decode_response<R: Request>(frame: Bytes, version: i16) -> Result<R::Response>
where
    R::Response: Decode,
{
    codec::decode_response::<R::Response>(frame, R::KEY, version)
        .map(|(_, body)| body)
        .map_err(|e| Error::Protocol(e.to_string()))
}

/// Decodes an ApiVersions response. A broker that does not know the requested version
/// answers UNSUPPORTED_VERSION in the v0 layout, so on that error code (the body's first
/// field in every version) the body is decoded as v0.
pub(crate) fn decode_api_versions_response(
    mut frame: Bytes,
    version: i16,
) -> Result<ApiVersionsResponse> {
    // ApiVersions responses always use header v0: just the correlation id.
    if frame.len() < 6 {
        return Err(Error::Protocol("ApiVersions response too short".into()));
    }
    let _ = frame.split_to(4);
    let error_code = i16::from_be_bytes([frame[0], frame[1]]);
    let version = if error_code == 35 { 0 } else { version };
    decode::decode_body::<ApiVersionsResponse>(frame, version)
        .map_err(|e| Error::Protocol(format!("ApiVersions v{version}: {e:#}")))
}

fn protocol_compression(c: Compression) -> batch::Compression {
    match c {
        Compression::None => batch::Compression::None,
        Compression::Gzip => batch::Compression::Gzip,
        Compression::Snappy => batch::Compression::Snappy,
        Compression::Lz4 => batch::Compression::Lz4,
        Compression::Zstd => batch::Compression::Zstd,
    }
}

/// One batch being filled (wraps rill-protocol's `BatchBuilder`).
#[derive(Debug)]
pub(crate) struct BatchWriter {
    builder: BatchBuilder,
}

/// Headers per record passed without a heap allocation; more use a `Vec`.
const INLINE_HEADERS_MAX: usize = 8;

impl BatchWriter {
    /// A batch written into `buf` (cleared first; see [`BatchBuilder::with_buffer`]).
    pub(crate) fn new(compression: Compression, buf: BytesMut) -> BatchWriter {
        BatchWriter {
            builder: BatchBuilder::with_buffer(protocol_compression(compression), buf),
        }
    }

    pub(crate) fn push(&mut self, record: &ProducerRecord, timestamp_ms: i64) -> Result<()> {
        let key = record.key.as_deref();
        let value = record.value.as_deref();
        let result = if record.headers.is_empty() {
            self.builder.push(timestamp_ms, key, value, &[])
        } else if record.headers.len() <= INLINE_HEADERS_MAX {
            let mut inline: [(&str, Option<&[u8]>); INLINE_HEADERS_MAX] =
                [("", None); INLINE_HEADERS_MAX];
            for (slot, h) in inline.iter_mut().zip(&record.headers) {
                *slot = (h.key.as_str(), h.value.as_deref());
            }
            self.builder
                .push(timestamp_ms, key, value, &inline[..record.headers.len()])
        } else {
            let headers: Vec<(&str, Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
                .collect();
            self.builder.push(timestamp_ms, key, value, &headers)
        };
        result.map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Builds the batch; `producer` (id, epoch, first sequence) makes it idempotent.
    pub(crate) fn finish(self, producer: Option<(i64, i16, i32)>) -> Result<Bytes> {
        let builder = match producer {
            Some((id, epoch, sequence)) => self.builder.with_producer(id, epoch, sequence),
            None => self.builder,
        };
        builder.build().map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// A copy of a built batch under another producer id, epoch and first sequence (CRC
/// recomputed): a batch resent after an epoch bump, whose partition's sequences start
/// over (KIP-360).
pub(crate) fn restamp_producer(
    records: &Bytes,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<Bytes> {
    let mut copy = records.to_vec();
    batch::set_producer(&mut copy, producer_id, producer_epoch, base_sequence)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(Bytes::from(copy))
}

/// The whole batches at the front of a fetched `records` blob, found by walking the
/// batch headers only (length, base offset, last offset delta: no CRC, no per-record
/// work), so the fetcher knows where to fetch next without decoding.
///
/// Returns the prefix of complete batches and the offset after the last one, or `None`
/// if the blob holds no complete batch (a truncated tail is left out). A malformed
/// header ends the prefix; one in front of every batch is an error.
pub(crate) fn walk_batches(blob: &Bytes) -> Result<Option<(Bytes, i64)>> {
    let mut walk = batch::batches(blob);
    let mut next = None;
    let mut whole_bytes = 0;
    while let Some(view) = walk.next() {
        match view {
            Ok(view) => {
                next = Some(view.next_offset());
                whole_bytes = walk.position();
            }
            Err(e) if next.is_none() => return Err(Error::Protocol(e.to_string())),
            // Handed out up to here; the next fetch starts at the malformed batch and
            // reports it.
            Err(_) => break,
        }
    }
    Ok(next.map(|next| (blob.slice(..whole_bytes), next)))
}

/// The base offset of the batch at the front of `batches` (`None` if too short).
pub(crate) fn first_base_offset(batches: &[u8]) -> Option<i64> {
    let b = batches.get(..8)?;
    Some(i64::from_be_bytes([
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ]))
}

/// Decodes the first record batch of `batches` (as cut by [`walk_batches`]) and removes
/// it from `batches`: verifies its CRC, skips it if it is a control batch, and skips
/// records below `fetch_offset` (a fetch from mid-batch returns the whole batch). The
/// records go into `out` (cleared first) as positions in `source`, which becomes the
/// batch's records section (a slice of `batches`, no copy) or its decompressed bytes.
///
/// On an error (corrupt batch) `batches` is left as it was and `out` is empty: a
/// batch that fails midway hands out none of its records.
pub(crate) fn decode_first_batch(
    batches: &mut Bytes,
    fetch_offset: i64,
    source: &mut Bytes,
    out: &mut Vec<RecordEntry>,
) -> Result<()> {
    out.clear();
    let protocol = |e: batch::RecordError| Error::Protocol(e.to_string());
    let view: BatchView<'_> = batch::batches(batches)
        .next()
        .ok_or_else(|| Error::Protocol("truncated record batch".into()))?
        .map_err(protocol)?;
    let size_bytes = view.size_bytes();
    if !view.is_control() && view.next_offset() > fetch_offset {
        view.verify_crc().map_err(protocol)?;
        *source = if view.compression_id() == 0 {
            // Refuses an unknown codec id the same way for every path.
            view.records().map_err(protocol)?;
            batches.slice_ref(view.records_bytes())
        } else {
            view.decompress_records()
                .map_err(|e| Error::Protocol(e.to_string()))?
        };
        if let Err(e) = record_entries(source, &view, fetch_offset, out) {
            out.clear();
            return Err(protocol(e));
        }
    }
    batches.advance(size_bytes);
    Ok(())
}

/// Decodes the records of `view` found in `src` (its records section, or its
/// decompressed bytes) with the broker's own bounded decoder (`rill_record::Records`,
/// every length and count checked against the bytes left), and pushes those at or
/// above `fetch_offset` into `out` as positions in `src`: no allocation or reference
/// count per record. `out` grows by at most one entry per record found in `src`, so it
/// is bounded by the bytes received.
fn record_entries(
    src: &[u8],
    view: &BatchView<'_>,
    fetch_offset: i64,
    out: &mut Vec<RecordEntry>,
) -> std::result::Result<(), batch::RecordError> {
    // Positions are kept as u32.
    if u32::try_from(src.len()).is_err() {
        return Err(batch::RecordError::CorruptRecord {
            reason: "records section over 4 GiB",
        });
    }
    // One allocation per batch at most (a record takes at least 7 bytes).
    out.reserve((view.records_count().max(0) as usize).min(src.len() / 7));
    // Offsets of slices of `src` (each lies within it, as the decoder cut it from it).
    let at = |field: &[u8]| (field.as_ptr() as usize - src.as_ptr() as usize) as u32;
    let nullable = |field: Option<&[u8]>| field.map_or((0, -1), |f| (at(f), f.len() as i32));
    for record in batch::Records::new(src, view) {
        let record = record?;
        if record.offset < fetch_offset {
            continue;
        }
        let (key_at, key_len) = nullable(record.key);
        let (value_at, value_len) = nullable(record.value);
        let headers = record.headers.as_bytes();
        out.push(RecordEntry {
            offset: record.offset,
            timestamp_ms: record.timestamp,
            key_at,
            key_len,
            value_at,
            value_len,
            headers_at: at(headers),
            headers_end: at(headers) + headers.len() as u32,
            header_count: record.headers.len() as u32,
        });
    }
    Ok(())
}

/// The partitions in a consumer group member's assignment (Kafka's ConsumerProtocol
/// assignment, as DescribeGroups reports it), decoded by the bounded reader.
pub(crate) fn decode_consumer_assignment(bytes: Bytes) -> Result<Vec<crate::TopicPartition>> {
    let assignment = decode::consumer_protocol::decode_assignment(bytes)
        .map_err(|e| Error::Protocol(format!("consumer assignment: {e}")))?;
    let mut out = Vec::new();
    for tp in assignment.assigned_partitions {
        for p in tp.partitions {
            out.push(crate::TopicPartition::new(tp.topic.to_string(), p));
        }
    }
    out.sort();
    Ok(out)
}

/// Version of the consumer-protocol subscription this client writes: v1 carries the owned
/// partitions the cooperative protocol needs and is read by every client since Kafka 2.4.
const SUBSCRIPTION_VERSION: i16 = 1;
/// Version of the consumer-protocol assignment this client writes (the layout is the same
/// in every version; v0 is read by every client).
const ASSIGNMENT_VERSION: i16 = 0;

fn encode_versioned<T: kafka_protocol::protocol::Encodable>(
    message: &T,
    version: i16,
) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&version.to_be_bytes());
    message
        .encode(&mut buf, version)
        .map_err(|e| Error::Protocol(format!("consumer protocol: {e}")))?;
    Ok(buf.freeze())
}

/// A member's JoinGroup metadata in Kafka's `ConsumerProtocolSubscription` encoding.
pub(crate) fn encode_subscription(
    topics: &std::collections::BTreeSet<String>,
    owned: &std::collections::BTreeSet<TopicPartition>,
) -> Result<Bytes> {
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as Owned;
    use kafka_protocol::messages::{ConsumerProtocolSubscription, TopicName};
    let mut owned_by_topic: Vec<Owned> = Vec::new();
    for tp in owned {
        match owned_by_topic.last_mut() {
            Some(t) if *t.topic.0 == *tp.topic => t.partitions.push(tp.partition),
            _ => owned_by_topic.push(
                Owned::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    let message = ConsumerProtocolSubscription::default()
        .with_topics(
            topics
                .iter()
                .map(|t| StrBytes::from_string(t.clone()))
                .collect(),
        )
        .with_owned_partitions(owned_by_topic);
    encode_versioned(&message, SUBSCRIPTION_VERSION)
}

/// Decodes another member's JoinGroup metadata (bounded: it is peer input).
pub(crate) fn decode_subscription(
    member_id: &str,
    group_instance_id: Option<&str>,
    metadata: Bytes,
) -> Result<MemberSubscription> {
    let (_, m) = decode::consumer_protocol::decode_subscription(metadata)
        .map_err(|e| Error::Protocol(format!("subscription of member {member_id}: {e}")))?;
    Ok(MemberSubscription {
        member_id: member_id.to_owned(),
        group_instance_id: group_instance_id.map(str::to_owned),
        topics: m.topics.iter().map(|t| t.to_string()).collect(),
        owned: m
            .owned_partitions
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(t.topic.0.to_string(), *p))
            })
            .collect(),
        generation: if m.generation_id == 0 && m.owned_partitions.is_empty() {
            -1
        } else {
            m.generation_id
        },
    })
}

/// One member's SyncGroup assignment in Kafka's `ConsumerProtocolAssignment` encoding.
pub(crate) fn encode_assignment(partitions: &[TopicPartition]) -> Result<Bytes> {
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as Assigned;
    use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
    let mut sorted = partitions.to_vec();
    sorted.sort();
    let mut by_topic: Vec<Assigned> = Vec::new();
    for tp in sorted {
        match by_topic.last_mut() {
            Some(t) if *t.topic.0 == *tp.topic => t.partitions.push(tp.partition),
            _ => by_topic.push(
                Assigned::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![tp.partition]),
            ),
        }
    }
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(by_topic);
    encode_versioned(&message, ASSIGNMENT_VERSION)
}

/// Decodes this member's assignment from a SyncGroup answer (bounded: the leader, another
/// member, wrote it).
pub(crate) fn decode_assignment(assignment: Bytes) -> Result<Vec<TopicPartition>> {
    let m = decode::consumer_protocol::decode_assignment(assignment)
        .map_err(|e| Error::Protocol(format!("assignment: {e}")))?;
    Ok(m.assigned_partitions
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.topic.0.to_string(), *p))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::record::Header;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};

    /// A batch of `values` at `base_offset`, uncompressed.
    fn batch_at(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let mut w = BatchWriter::new(Compression::None, BytesMut::new());
        for v in values {
            w.push(&ProducerRecord::new("t", v.to_string()), 1_000)
                .unwrap();
        }
        let mut b = w.finish(None).unwrap().to_vec();
        batch::set_base_offset(&mut b, base_offset).unwrap();
        b
    }

    fn drain(mut batches: Bytes, fetch_offset: i64) -> Result<Vec<(i64, Bytes)>> {
        let topic: Arc<str> = Arc::from("t");
        let (mut source, mut entries, mut got) = (Bytes::new(), Vec::new(), Vec::new());
        while !batches.is_empty() {
            decode_first_batch(&mut batches, fetch_offset, &mut source, &mut entries)?;
            got.extend(entries.iter().map(|e| {
                let r = e.to_record(&source, &topic, 0);
                (r.offset, r.value.unwrap_or_default())
            }));
        }
        Ok(got)
    }

    /// The header walk finds the whole batches and the next offset, leaves a truncated
    /// tail out, and stops at a malformed header (an error only if it comes first).
    #[test]
    fn walk_cuts_whole_batches_and_finds_the_next_offset() {
        let mut blob = batch_at(10, &["a", "b", "c"]);
        blob.extend(batch_at(13, &["d", "e"]));
        let whole = blob.len();
        let third = batch_at(15, &["f"]);
        blob.extend(&third[..third.len() - 3]); // truncated by the fetch size
        let blob = Bytes::from(blob);
        let (batches, next) = walk_batches(&blob).unwrap().unwrap();
        assert_eq!(next, 15);
        assert_eq!(batches.len(), whole);
        // From mid-batch: the records below the fetch offset are skipped.
        let got = drain(batches, 11).unwrap();
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![11, 12, 13, 14]);
        assert_eq!(got[0].1, Bytes::from_static(b"b"));

        let only_tail = Bytes::from(third[..20].to_vec());
        assert!(walk_batches(&only_tail).unwrap().is_none());

        let mut bad = batch_at(0, &["x"]);
        bad[16] = 7; // magic
        let first_bad = Bytes::from(bad.clone());
        assert!(walk_batches(&first_bad).is_err());
        let mut good_then_bad = batch_at(0, &["y"]);
        let good_len = good_then_bad.len();
        good_then_bad.extend(&bad);
        let (batches, next) = walk_batches(&Bytes::from(good_then_bad)).unwrap().unwrap();
        assert_eq!((batches.len(), next), (good_len, 1));
    }

    /// A batch whose CRC fails is an error that leaves the batches as they were, so the
    /// consumer can report it and fetch it again.
    #[test]
    fn a_corrupt_batch_is_an_error_and_is_not_consumed() {
        let mut blob = batch_at(0, &["a", "b"]);
        let mut second = batch_at(2, &["c", "d"]);
        let last = second.len() - 1;
        second[last] ^= 0x55;
        blob.extend(&second);
        let blob = Bytes::from(blob);
        let (mut batches, next) = walk_batches(&blob).unwrap().unwrap();
        assert_eq!(next, 4, "the walk does not check CRCs");
        let (mut source, mut out) = (Bytes::new(), Vec::new());
        decode_first_batch(&mut batches, 0, &mut source, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let before = batches.clone();
        let e = decode_first_batch(&mut batches, 0, &mut source, &mut out).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("crc"), "{e}");
        assert_eq!(batches, before);
        assert_eq!(first_base_offset(&batches), Some(2));
        assert!(out.is_empty(), "nothing of the corrupt batch");
    }

    /// Records with every field shape: null and empty keys and values, headers with
    /// null and non-null values, sizes whose varints take one, two and three bytes.
    fn varied_records() -> Vec<ProducerRecord> {
        (0..40)
            .map(|i| {
                let mut r = ProducerRecord::new("t", vec![b'v'; (i * 37) % 300]);
                if i % 3 == 0 {
                    r.value = None;
                }
                if i % 4 == 1 {
                    r = r.with_key(vec![b'k'; i % 5]);
                }
                if i % 5 == 2 {
                    r = r.with_header("h", vec![b'x'; i]).with_header("é", "");
                    r.headers.push(Header {
                        key: String::new(),
                        value: None,
                    });
                }
                if i == 7 {
                    r.value = Some(Bytes::from(vec![b'z'; 20_000]));
                }
                r
            })
            .collect()
    }

    /// Per record: offset, timestamp, key, value, headers; `Err` for a refused batch.
    type Decoded = std::result::Result<Vec<DecodedRecord>, ()>;
    type DecodedRecord = (
        i64,
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    /// What `rill_record::Records` (the broker's decoder) makes of the records section
    /// of `batch`, as owned values: per record offset, timestamp, key, value, headers.
    fn reference(batch: &[u8], fetch_offset: i64) -> Decoded {
        let view = batch::batches(batch).next().ok_or(())?.map_err(|_| ())?;
        let mut out = Vec::new();
        for r in view.records().map_err(|_| ())? {
            let r = r.map_err(|_| ())?;
            if r.offset < fetch_offset {
                continue;
            }
            out.push((
                r.offset,
                r.timestamp,
                r.key.map(<[u8]>::to_vec),
                r.value.map(<[u8]>::to_vec),
                r.headers
                    .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                    .collect(),
            ));
        }
        Ok(out)
    }

    /// The same through [`decode_first_batch`], the CRC left out of the comparison
    /// (mutated records fail it; the reference does not check it).
    fn ours(batch: &[u8], fetch_offset: i64) -> Decoded {
        let mut b = batch.to_vec();
        // Re-stamp the CRC so a mutation reaches the record decoder.
        if let Ok(view) = BatchView::new(&b) {
            let crc = view.compute_crc();
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        }
        let mut batches = Bytes::from(b);
        let (mut source, mut entries) = (Bytes::new(), Vec::new());
        decode_first_batch(&mut batches, fetch_offset, &mut source, &mut entries)
            .map_err(|_| ())?;
        let topic: Arc<str> = Arc::from("t");
        Ok(entries
            .iter()
            .map(|e| {
                let r = e.to_record(&source, &topic, 0);
                (
                    r.offset,
                    r.timestamp_ms,
                    r.key.map(|k| k.to_vec()),
                    r.value.map(|v| v.to_vec()),
                    r.headers
                        .into_iter()
                        .map(|h| (h.key, h.value.map(|v| v.to_vec())))
                        .collect(),
                )
            })
            .collect())
    }

    /// The records rebuilt from the positions `decode_first_batch` keeps agree with
    /// the reference decoding on well-formed batches (from the batch start and from
    /// mid-batch) and on every single-byte corruption of the records section: the
    /// same records, or an error where it errs; never a panic.
    #[test]
    fn record_decode_matches_the_reference_on_good_and_corrupt_input() {
        let mut w = BatchWriter::new(Compression::None, BytesMut::new());
        for r in varied_records() {
            w.push(&r, 1_000_000).unwrap();
        }
        let mut good = w.finish(None).unwrap().to_vec();
        batch::set_base_offset(&mut good, 500).unwrap();
        for fetch_offset in [0, 500, 517, 539, 540] {
            let want = reference(&good, fetch_offset).unwrap();
            assert_eq!(
                ours(&good, fetch_offset).unwrap(),
                want,
                "from {fetch_offset}"
            );
        }
        assert_eq!(ours(&good, 0).unwrap().len(), 40);

        // Records start after the 61-byte header; per position, a few replacement bytes
        // that turn lengths negative, huge, or into longer varints. The section is ~30
        // KiB: every byte of the first 3 KiB, then every 97th.
        let positions = (61..3_000).chain((3_000..good.len()).step_by(97));
        let (mut agreed_ok, mut agreed_err) = (0, 0);
        for at in positions {
            for byte in [0x00, 0x01, 0x7f, 0x80, 0xff, good[at] ^ 0x01] {
                let mut bad = good.clone();
                bad[at] = byte;
                let want = reference(&bad, 0);
                assert_eq!(ours(&bad, 0), want, "byte {at} set to {byte:#x}");
                if want.is_ok() {
                    agreed_ok += 1;
                } else {
                    agreed_err += 1;
                }
            }
        }
        println!("corruptions: {agreed_ok} decode alike, {agreed_err} refused alike");
        assert!(agreed_err > 250, "the mutations must reach the checks");
    }

    /// A compressed batch decodes to the same records (positions into the decompressed
    /// bytes).
    #[test]
    fn compressed_batches_decode_like_uncompressed_ones() {
        let mut plain = BatchWriter::new(Compression::None, BytesMut::new());
        let mut packed = BatchWriter::new(Compression::Lz4, BytesMut::new());
        for r in varied_records() {
            plain.push(&r, 7).unwrap();
            packed.push(&r, 7).unwrap();
        }
        let plain = drain(plain.finish(None).unwrap(), 3).unwrap();
        let packed = drain(packed.finish(None).unwrap(), 3).unwrap();
        assert_eq!(plain.len(), 37);
        assert_eq!(plain, packed);
    }

    /// The zero-copy Produce encoding is byte for byte the generic one, at every
    /// version the client speaks, with several topics and partitions.
    #[test]
    fn produce_parts_concatenate_to_the_generic_encoding() {
        let a = Bytes::from(vec![1u8; 300]);
        let b = Bytes::from(vec![2u8; 5]);
        let c = Bytes::from(vec![3u8; 70_000]);
        let topics: Vec<ProduceTopic<'_>> = vec![
            ("alpha", vec![(0, &a), (3, &b)]),
            ("beta-topic", vec![(7, &c)]),
        ];
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(
                topics
                    .iter()
                    .map(|(name, parts)| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string((*name).to_owned())))
                            .with_partition_data(
                                parts
                                    .iter()
                                    .map(|(index, records)| {
                                        PartitionProduceData::default()
                                            .with_index(*index)
                                            .with_records(Some((*records).clone()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let client_id = StrBytes::from_static_str("bench-client");
        let (min, max) = client_api_version_range(ApiKey::Produce);
        assert!(
            min <= 3 && max >= 9,
            "both layouts must be covered: {min}..={max}"
        );
        for version in min..=max {
            let whole = encode_request(&request, version, 42, &client_id).unwrap();
            let parts = encode_produce_parts(version, 42, &client_id, -1, 30_000, &topics).unwrap();
            assert_eq!(parts.len(), 7, "v{version}: glue and batch parts alternate");
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, whole.to_vec(), "v{version}");
            // The batches are shared, not copied.
            assert_eq!(parts[5].as_ptr(), c.as_ptr(), "v{version}");
        }
    }
}
