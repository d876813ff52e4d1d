//! Fetch responses encoded by hand, without copying record bytes.
//!
//! `kafka-protocol`'s encoder writes a response into one contiguous buffer, so every record
//! byte a broker serves would be copied once more after storage handed it out. Here the
//! response is laid out as a list of chunks: the small metadata pieces (size prefix, header,
//! per-topic and per-partition fields, length prefixes) are written into one buffer, and each
//! partition's record slices from storage are put between them as they are (`Bytes` clones are
//! reference-count increments). The broker writes the chunks with vectored I/O
//! ([`FetchResponseFrame`] implements [`bytes::Buf`] with `chunks_vectored`, so
//! `AsyncWriteExt::write_all_buf` uses `writev`). Record bytes are therefore copied zero times
//! between storage and the socket (the kernel's copy into the socket buffer aside).
//!
//! The byte layout is identical to what `kafka-protocol` produces for the same response in
//! every version 4..=18 (checked by the tests below), including the rule of never writing a
//! tagged field whose value is its default (older librdkafka cannot parse such fields).

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::frame::FRAME_PREFIX_BYTES;
use crate::header::{self, put_uvarint};

/// Oldest Fetch response version this writer encodes.
pub const FETCH_VERSION_MIN: i16 = 4;
/// Newest Fetch response version this writer encodes.
pub const FETCH_VERSION_MAX: i16 = 18;

/// A whole Fetch response, with records given as storage slices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResponseParts {
    /// Throttle time (all versions).
    pub throttle_time_ms: i32,
    /// Top-level error (v7+; not sent in older versions).
    pub error_code: i16,
    /// Fetch session id (v7+; must be 0 below v7).
    pub session_id: i32,
    /// Per-topic results.
    pub topics: Vec<FetchTopicPart>,
    /// Endpoints of the leaders named in `current_leader` (v16+ tagged field; empty = absent).
    pub node_endpoints: Vec<NodeEndpointPart>,
}

/// The results for one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchTopicPart {
    /// Topic name (sent in v4..=12).
    pub name: StrBytes,
    /// Topic id (sent in v13+ instead of the name).
    pub topic_id: Uuid,
    /// Per-partition results.
    pub partitions: Vec<FetchPartitionPart>,
}

/// The result for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionPart {
    /// Partition index.
    pub partition_index: i32,
    /// Partition-level error code (0 = none).
    pub error_code: i16,
    /// High watermark.
    pub high_watermark: i64,
    /// Last stable offset (-1 unknown).
    pub last_stable_offset: i64,
    /// Log start offset (v5+; -1 unknown).
    pub log_start_offset: i64,
    /// Aborted transactions in the returned range (`None` = null, Kafka's answer under
    /// READ_UNCOMMITTED).
    pub aborted_transactions: Option<Vec<AbortedTransactionPart>>,
    /// Preferred read replica (v11+; must be -1 below v11).
    pub preferred_read_replica: i32,
    /// Record batches as slices from storage, sent back to back as they are. Empty = an empty
    /// (non-null) records field.
    pub records: Vec<Bytes>,
    /// Diverging epoch for followers (v12+ tagged field 0; `None` = absent).
    pub diverging_epoch: Option<EpochEndOffsetPart>,
    /// Current leader when answering NOT_LEADER/FENCED (v12+ tagged field 1; `None` = absent).
    pub current_leader: Option<LeaderIdAndEpochPart>,
    /// Snapshot id (v12+ tagged field 2; `None` = absent).
    pub snapshot_id: Option<SnapshotIdPart>,
}

impl Default for FetchPartitionPart {
    fn default() -> Self {
        FetchPartitionPart {
            partition_index: 0,
            error_code: 0,
            high_watermark: 0,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted_transactions: None,
            preferred_read_replica: -1,
            records: Vec::new(),
            diverging_epoch: None,
            current_leader: None,
            snapshot_id: None,
        }
    }
}

/// One aborted transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransactionPart {
    /// Producer id of the aborted transaction.
    pub producer_id: i64,
    /// First offset of the aborted transaction.
    pub first_offset: i64,
}

/// Diverging epoch (tagged field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEndOffsetPart {
    /// Epoch.
    pub epoch: i32,
    /// End offset of that epoch.
    pub end_offset: i64,
}

/// Current leader (tagged field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderIdAndEpochPart {
    /// Leader broker id.
    pub leader_id: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
}

/// Snapshot id (tagged field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotIdPart {
    /// End offset of the snapshot.
    pub end_offset: i64,
    /// Epoch of the snapshot.
    pub epoch: i32,
}

/// A broker endpoint (v16+ tagged field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpointPart {
    /// Broker id.
    pub node_id: i32,
    /// Host name.
    pub host: StrBytes,
    /// Port.
    pub port: i32,
    /// Rack, if any.
    pub rack: Option<StrBytes>,
}

/// An encoded Fetch response frame (size prefix included) as a list of chunks: metadata
/// slices of one buffer interleaved with the record slices handed in.
///
/// Implements [`Buf`] (with `chunks_vectored`), so it can be written with
/// `AsyncWriteExt::write_all_buf`, which issues vectored writes on sockets.
#[derive(Debug, Clone, Default)]
pub struct FetchResponseFrame {
    chunks: Vec<Bytes>,
    /// Index of the first chunk not yet fully consumed through [`Buf::advance`].
    next_chunk: usize,
    remaining_bytes: usize,
}

impl FetchResponseFrame {
    /// The chunks not yet consumed, in wire order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks[self.next_chunk..]
    }

    /// Consumes the frame into its remaining chunks.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        self.chunks.drain(..self.next_chunk);
        self.chunks
    }

    /// Total bytes not yet consumed (initially the whole frame, size prefix included).
    pub fn len(&self) -> usize {
        self.remaining_bytes
    }

    /// Whether everything has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining_bytes == 0
    }

    /// Copies the remaining chunks into one buffer (for tests and debugging; the write path
    /// must not do this).
    pub fn to_contiguous(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.remaining_bytes);
        for c in self.chunks() {
            out.put_slice(c);
        }
        out.freeze()
    }
}

impl Buf for FetchResponseFrame {
    fn remaining(&self) -> usize {
        self.remaining_bytes
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.get(self.next_chunk).map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(
            cnt <= self.remaining_bytes,
            "advance past the end of the frame"
        );
        self.remaining_bytes -= cnt;
        while cnt > 0 {
            let chunk = &mut self.chunks[self.next_chunk];
            if cnt < chunk.len() {
                chunk.advance(cnt);
                return;
            }
            cnt -= chunk.len();
            self.next_chunk += 1;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.chunks()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

/// Collects metadata in one buffer and remembers where record slices go between its pieces.
struct ChunkWriter {
    meta: BytesMut,
    /// `(end of the metadata piece in meta, records that follow it)`.
    cuts: Vec<(usize, Vec<Bytes>)>,
}

fn encode_err(reason: impl Into<String>, version: i16) -> ProtocolError {
    ProtocolError::Encode {
        api_key: ApiKey::Fetch as i16,
        api_version: version,
        reason: reason.into(),
    }
}

fn put_array_len(
    buf: &mut BytesMut,
    len: Option<usize>,
    flexible: bool,
    version: i16,
) -> Result<(), ProtocolError> {
    match (len, flexible) {
        (None, true) => put_uvarint(buf, 0),
        (None, false) => buf.put_i32(-1),
        (Some(n), true) => {
            let n = u32::try_from(n)
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| encode_err("array too long", version))?;
            put_uvarint(buf, n);
        }
        (Some(n), false) => {
            buf.put_i32(i32::try_from(n).map_err(|_| encode_err("array too long", version))?)
        }
    }
    Ok(())
}

fn put_string(
    buf: &mut BytesMut,
    s: Option<&str>,
    flexible: bool,
    version: i16,
) -> Result<(), ProtocolError> {
    match s {
        None => put_array_len(buf, None, flexible, version)?,
        Some(s) if flexible => {
            put_array_len(buf, Some(s.len()), true, version)?;
            buf.put_slice(s.as_bytes());
        }
        Some(s) => {
            let len = i16::try_from(s.len()).map_err(|_| encode_err("string too long", version))?;
            buf.put_i16(len);
            buf.put_slice(s.as_bytes());
        }
    }
    Ok(())
}

fn uvarint_len(v: u32) -> usize {
    (32 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn node_endpoints_len(endpoints: &[NodeEndpointPart]) -> usize {
    let mut len = uvarint_len(endpoints.len() as u32 + 1);
    for e in endpoints {
        len += 4 + uvarint_len(e.host.len() as u32 + 1) + e.host.len() + 4;
        len += match &e.rack {
            None => 1,
            Some(r) => uvarint_len(r.len() as u32 + 1) + r.len(),
        };
        len += 1; // the endpoint's own (empty) tagged fields
    }
    len
}

impl ChunkWriter {
    fn put_records(
        &mut self,
        records: &[Bytes],
        flexible: bool,
        version: i16,
    ) -> Result<(), ProtocolError> {
        let total: usize = records.iter().map(Bytes::len).sum();
        if flexible {
            let n = u32::try_from(total)
                .ok()
                .and_then(|n| n.checked_add(1))
                .ok_or_else(|| encode_err("records too large", version))?;
            put_uvarint(&mut self.meta, n);
        } else {
            let n = i32::try_from(total).map_err(|_| encode_err("records too large", version))?;
            self.meta.put_i32(n);
        }
        let slices: Vec<Bytes> = records.iter().filter(|r| !r.is_empty()).cloned().collect();
        if !slices.is_empty() {
            self.cuts.push((self.meta.len(), slices));
        }
        Ok(())
    }

    fn put_partition(&mut self, p: &FetchPartitionPart, version: i16) -> Result<(), ProtocolError> {
        let flexible = version >= 12;
        let m = &mut self.meta;
        m.put_i32(p.partition_index);
        m.put_i16(p.error_code);
        m.put_i64(p.high_watermark);
        m.put_i64(p.last_stable_offset);
        if version >= 5 {
            m.put_i64(p.log_start_offset);
        }
        put_array_len(
            m,
            p.aborted_transactions.as_ref().map(Vec::len),
            flexible,
            version,
        )?;
        for t in p.aborted_transactions.iter().flatten() {
            m.put_i64(t.producer_id);
            m.put_i64(t.first_offset);
            if flexible {
                put_uvarint(m, 0);
            }
        }
        if version >= 11 {
            m.put_i32(p.preferred_read_replica);
        } else if p.preferred_read_replica != -1 {
            return Err(encode_err(
                "preferred_read_replica needs Fetch v11+",
                version,
            ));
        }
        self.put_records(&p.records, flexible, version)?;
        if flexible {
            // Like Kafka: a tagged field is written only when it differs from its default.
            let diverging = p
                .diverging_epoch
                .filter(|d| (d.epoch, d.end_offset) != (-1, -1));
            let leader = p
                .current_leader
                .filter(|l| (l.leader_id, l.leader_epoch) != (-1, -1));
            let snapshot = p
                .snapshot_id
                .filter(|s| (s.end_offset, s.epoch) != (-1, -1));
            let m = &mut self.meta;
            let count = u32::from(diverging.is_some())
                + u32::from(leader.is_some())
                + u32::from(snapshot.is_some());
            put_uvarint(m, count);
            if let Some(d) = diverging {
                put_uvarint(m, 0);
                put_uvarint(m, 13);
                m.put_i32(d.epoch);
                m.put_i64(d.end_offset);
                put_uvarint(m, 0);
            }
            if let Some(l) = leader {
                put_uvarint(m, 1);
                put_uvarint(m, 9);
                m.put_i32(l.leader_id);
                m.put_i32(l.leader_epoch);
                put_uvarint(m, 0);
            }
            if let Some(s) = snapshot {
                put_uvarint(m, 2);
                put_uvarint(m, 13);
                m.put_i64(s.end_offset);
                m.put_i32(s.epoch);
                put_uvarint(m, 0);
            }
        }
        Ok(())
    }

    /// Fills the size prefix (the first four bytes of `meta`) and cuts the chunks.
    fn finish(mut self, version: i16) -> Result<FetchResponseFrame, ProtocolError> {
        let records_bytes: usize = self.cuts.iter().flat_map(|(_, r)| r).map(Bytes::len).sum();
        let total = self.meta.len() + records_bytes;
        let prefix = i32::try_from(total - FRAME_PREFIX_BYTES)
            .map_err(|_| encode_err("response larger than 2 GiB", version))?;
        self.meta[..FRAME_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
        let meta = self.meta.freeze();
        let mut chunks = Vec::with_capacity(2 * self.cuts.len() + 1);
        let mut start = 0;
        for (end, records) in self.cuts {
            if end > start {
                chunks.push(meta.slice(start..end));
            }
            chunks.extend(records);
            start = end;
        }
        if meta.len() > start {
            chunks.push(meta.slice(start..));
        }
        Ok(FetchResponseFrame {
            chunks,
            next_chunk: 0,
            remaining_bytes: total,
        })
    }
}

/// Encodes a complete Fetch response frame (size prefix, response header, body) for
/// `version` (4..=18) as chunks, without copying the record bytes.
///
/// Errors (as `kafka-protocol` would) when a field is set that `version` cannot carry
/// (`session_id` below v7, `preferred_read_replica` below v11), or when a length does not fit
/// its prefix.
pub fn encode_fetch_response(
    correlation_id: i32,
    version: i16,
    response: &FetchResponseParts,
) -> Result<FetchResponseFrame, ProtocolError> {
    if !(FETCH_VERSION_MIN..=FETCH_VERSION_MAX).contains(&version) {
        return Err(ProtocolError::UnsupportedVersion {
            api_key: ApiKey::Fetch as i16,
            api_version: version,
        });
    }
    let flexible = version >= 12;
    let partitions: usize = response.topics.iter().map(|t| t.partitions.len()).sum();
    // Metadata is ~60 bytes per partition plus names; one allocation for all of it.
    let mut meta = BytesMut::with_capacity(64 + 64 * response.topics.len() + 64 * partitions);
    meta.put_i32(0); // size prefix, filled in once the size is known
    header::write_response_header(&mut meta, correlation_id, flexible);
    let mut w = ChunkWriter {
        meta,
        cuts: Vec::with_capacity(partitions),
    };
    w.meta.put_i32(response.throttle_time_ms);
    if version >= 7 {
        w.meta.put_i16(response.error_code);
        w.meta.put_i32(response.session_id);
    } else if response.session_id != 0 {
        return Err(encode_err("session_id needs Fetch v7+", version));
    }
    put_array_len(&mut w.meta, Some(response.topics.len()), flexible, version)?;
    for topic in &response.topics {
        if version <= 12 {
            put_string(&mut w.meta, Some(&topic.name), flexible, version)?;
        }
        if version >= 13 {
            w.meta.put_slice(topic.topic_id.as_bytes());
        }
        put_array_len(&mut w.meta, Some(topic.partitions.len()), flexible, version)?;
        for p in &topic.partitions {
            w.put_partition(p, version)?;
        }
        if flexible {
            put_uvarint(&mut w.meta, 0);
        }
    }
    if flexible {
        let endpoints = if version >= 16 {
            &response.node_endpoints[..]
        } else {
            &[]
        };
        if endpoints.is_empty() {
            put_uvarint(&mut w.meta, 0);
        } else {
            put_uvarint(&mut w.meta, 1);
            put_uvarint(&mut w.meta, 0);
            let len = u32::try_from(node_endpoints_len(endpoints))
                .map_err(|_| encode_err("node endpoints too large", version))?;
            put_uvarint(&mut w.meta, len);
            put_array_len(&mut w.meta, Some(endpoints.len()), true, version)?;
            for e in endpoints {
                w.meta.put_i32(e.node_id);
                put_string(&mut w.meta, Some(&e.host), true, version)?;
                w.meta.put_i32(e.port);
                put_string(&mut w.meta, e.rack.as_deref(), true, version)?;
                put_uvarint(&mut w.meta, 0);
            }
        }
    }
    w.finish(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
        PartitionData, SnapshotId,
    };
    use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, TopicName};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The same response as kafka-protocol's message type, restricted to what `version` carries.
    fn to_kafka_protocol(parts: &FetchResponseParts, version: i16) -> FetchResponse {
        FetchResponse::default()
            .with_throttle_time_ms(parts.throttle_time_ms)
            .with_error_code(parts.error_code)
            .with_session_id(parts.session_id)
            .with_node_endpoints(
                parts
                    .node_endpoints
                    .iter()
                    .map(|e| {
                        NodeEndpoint::default()
                            .with_node_id(BrokerId(e.node_id))
                            .with_host(e.host.clone())
                            .with_port(e.port)
                            .with_rack(e.rack.clone())
                    })
                    .collect(),
            )
            .with_responses(
                parts
                    .topics
                    .iter()
                    .map(|t| {
                        FetchableTopicResponse::default()
                            .with_topic(TopicName(t.name.clone()))
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| to_kp_partition(p, version))
                                    .collect(),
                            )
                    })
                    .collect(),
            )
    }

    fn to_kp_partition(p: &FetchPartitionPart, _version: i16) -> PartitionData {
        let mut records = BytesMut::new();
        for r in &p.records {
            records.put_slice(r);
        }
        let mut d = PartitionData::default()
            .with_partition_index(p.partition_index)
            .with_error_code(p.error_code)
            .with_high_watermark(p.high_watermark)
            .with_last_stable_offset(p.last_stable_offset)
            .with_log_start_offset(p.log_start_offset)
            .with_preferred_read_replica(BrokerId(p.preferred_read_replica))
            .with_records(Some(records.freeze()))
            .with_aborted_transactions(p.aborted_transactions.as_ref().map(|v| {
                v.iter()
                    .map(|t| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(t.producer_id))
                            .with_first_offset(t.first_offset)
                    })
                    .collect()
            }));
        if let Some(e) = p.diverging_epoch {
            d = d.with_diverging_epoch(
                EpochEndOffset::default()
                    .with_epoch(e.epoch)
                    .with_end_offset(e.end_offset),
            );
        }
        if let Some(l) = p.current_leader {
            d = d.with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(l.leader_id))
                    .with_leader_epoch(l.leader_epoch),
            );
        }
        if let Some(s) = p.snapshot_id {
            d = d.with_snapshot_id(
                SnapshotId::default()
                    .with_end_offset(s.end_offset)
                    .with_epoch(s.epoch),
            );
        }
        d
    }

    fn random_parts(rng: &mut StdRng, version: i16) -> FetchResponseParts {
        let maybe = |rng: &mut StdRng| rng.gen_bool(0.5);
        let topics = (0..rng.gen_range(0..4))
            .map(|t| FetchTopicPart {
                name: StrBytes::from_string(format!("topic-{t}-{}", rng.gen::<u16>())),
                topic_id: Uuid::from_u128(rng.gen()),
                partitions: (0..rng.gen_range(0..5))
                    .map(|i| {
                        let records = (0..rng.gen_range(0..4))
                            .map(|_| {
                                let len = rng.gen_range(0..300);
                                Bytes::from((0..len).map(|_| rng.gen::<u8>()).collect::<Vec<_>>())
                            })
                            .collect();
                        FetchPartitionPart {
                            partition_index: i,
                            error_code: if maybe(rng) { 0 } else { rng.gen_range(1..100) },
                            high_watermark: rng.gen_range(-1..i64::MAX),
                            last_stable_offset: rng.gen_range(-1..1 << 40),
                            log_start_offset: if version >= 5 {
                                rng.gen_range(-1..1000)
                            } else {
                                -1
                            },
                            aborted_transactions: match rng.gen_range(0..3) {
                                0 => None,
                                1 => Some(Vec::new()),
                                _ => Some(
                                    (0..rng.gen_range(1..4))
                                        .map(|_| AbortedTransactionPart {
                                            producer_id: rng.gen(),
                                            first_offset: rng.gen(),
                                        })
                                        .collect(),
                                ),
                            },
                            preferred_read_replica: if version >= 11 && maybe(rng) {
                                rng.gen_range(0..5)
                            } else {
                                -1
                            },
                            records,
                            diverging_epoch: match rng.gen_range(0..3) {
                                0 => None,
                                1 => Some(EpochEndOffsetPart {
                                    epoch: -1,
                                    end_offset: -1,
                                }),
                                _ => Some(EpochEndOffsetPart {
                                    epoch: rng.gen(),
                                    end_offset: rng.gen(),
                                }),
                            },
                            current_leader: maybe(rng).then(|| LeaderIdAndEpochPart {
                                leader_id: rng.gen_range(0..3),
                                leader_epoch: rng.gen_range(0..1000),
                            }),
                            snapshot_id: maybe(rng).then(|| SnapshotIdPart {
                                end_offset: rng.gen(),
                                epoch: rng.gen(),
                            }),
                        }
                    })
                    .collect(),
            })
            .collect();
        FetchResponseParts {
            throttle_time_ms: rng.gen_range(0..1000),
            error_code: if version >= 7 { rng.gen_range(0..3) } else { 0 },
            session_id: if version >= 7 { rng.gen() } else { 0 },
            topics,
            node_endpoints: (0..rng.gen_range(0..3))
                .map(|i| NodeEndpointPart {
                    node_id: i,
                    host: StrBytes::from_string(format!("host-{i}")),
                    port: 9092 + i,
                    rack: maybe(rng).then(|| StrBytes::from_static_str("rack-a")),
                })
                .collect(),
        }
    }

    #[test]
    fn hand_encoded_fetch_responses_are_byte_identical_to_kafka_protocol_in_every_version() {
        let mut rng = StdRng::seed_from_u64(0x5eed_f37c);
        for version in FETCH_VERSION_MIN..=FETCH_VERSION_MAX {
            for case in 0..50 {
                let parts = random_parts(&mut rng, version);
                let ours = encode_fetch_response(case, version, &parts)
                    .unwrap()
                    .to_contiguous();
                let reference = to_kafka_protocol(&parts, version);
                let theirs =
                    codec::encode_response(case, ApiKey::Fetch as i16, version, &reference)
                        .unwrap();
                assert_eq!(ours, theirs, "Fetch v{version} case {case}");

                // And kafka-protocol's decoder reads ours back to the same message.
                let payload = ours.slice(4..);
                let (cid, decoded): (i32, FetchResponse) =
                    codec::decode_response(payload, ApiKey::Fetch as i16, version).unwrap();
                assert_eq!(cid, case);
                let expected = theirs.slice(4..);
                let (_, expected): (i32, FetchResponse) =
                    codec::decode_response(expected, ApiKey::Fetch as i16, version).unwrap();
                assert_eq!(decoded, expected);
                assert_eq!(decoded.responses.len(), parts.topics.len());
            }
        }
    }

    #[test]
    fn record_slices_are_passed_through_without_copying() {
        let batch_a = Bytes::from(vec![1u8; 1000]);
        let batch_b = Bytes::from(vec![2u8; 500]);
        let parts = FetchResponseParts {
            topics: vec![FetchTopicPart {
                name: StrBytes::from_static_str("t"),
                topic_id: Uuid::nil(),
                partitions: vec![
                    FetchPartitionPart {
                        partition_index: 0,
                        records: vec![batch_a.clone(), batch_b.clone()],
                        ..Default::default()
                    },
                    FetchPartitionPart {
                        partition_index: 1,
                        ..Default::default()
                    },
                ],
            }],
            ..Default::default()
        };
        for version in [4, 11, 12, 16] {
            let frame = encode_fetch_response(1, version, &parts).unwrap();
            let record_chunks: Vec<&Bytes> =
                frame.chunks().iter().filter(|c| c.len() >= 500).collect();
            assert_eq!(record_chunks.len(), 2);
            // Same memory as the storage slices: zero copies.
            assert_eq!(record_chunks[0].as_ptr(), batch_a.as_ptr());
            assert_eq!(record_chunks[1].as_ptr(), batch_b.as_ptr());
            // Metadata is a handful of slices of one buffer: before and after the records.
            assert_eq!(frame.chunks().len(), 4);
            assert_eq!(frame.len(), frame.to_contiguous().len());
            let prefix = i32::from_be_bytes(frame.chunks()[0][..4].try_into().unwrap());
            assert_eq!(prefix as usize, frame.len() - 4);
        }
    }

    #[test]
    fn frame_is_a_buf_that_yields_the_same_bytes_in_any_advance_pattern() {
        let mut rng = StdRng::seed_from_u64(7);
        let parts = random_parts(&mut rng, 16);
        let frame = encode_fetch_response(3, 16, &parts).unwrap();
        let whole = frame.to_contiguous();
        for step in [1usize, 3, 7, 64, 1000] {
            let mut f = frame.clone();
            let mut out = Vec::new();
            while f.has_remaining() {
                let mut slices = [IoSlice::new(&[]); 4];
                let n = f.chunks_vectored(&mut slices);
                assert!(n >= 1);
                assert_eq!(&slices[0][..], f.chunk());
                let take = step.min(f.chunk().len());
                out.extend_from_slice(&f.chunk()[..take]);
                f.advance(take);
            }
            assert_eq!(out, whole);
            assert!(f.is_empty());
        }
    }

    #[test]
    fn fields_a_version_cannot_carry_are_errors() {
        let parts = FetchResponseParts {
            session_id: 5,
            ..Default::default()
        };
        assert!(encode_fetch_response(0, 6, &parts).is_err());
        assert!(encode_fetch_response(0, 7, &parts).is_ok());
        let parts = FetchResponseParts {
            topics: vec![FetchTopicPart {
                partitions: vec![FetchPartitionPart {
                    preferred_read_replica: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(encode_fetch_response(0, 10, &parts).is_err());
        assert!(encode_fetch_response(0, 11, &parts).is_ok());
        assert!(matches!(
            encode_fetch_response(0, 3, &FetchResponseParts::default()),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        assert!(encode_fetch_response(0, 19, &FetchResponseParts::default()).is_err());
    }
}
