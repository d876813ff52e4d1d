//! Fetch: long poll over the requested partitions, reading whole batches below the
//! high watermark, encoded without copying record bytes.
//!
//! Copies: storage hands out `Bytes` slices of the mapped segment; they are placed
//! in the response as they are, and `rill_protocol::fetch::encode_fetch_response`
//! returns the frame as chunks (encoded header/field bytes interleaved with those
//! slices) that the connection writes with `writev`. So zero user-space copies of
//! record bytes on the way out; the kernel copies them once into the socket buffer.
//!
//! Long poll: the request waits until `min_bytes` are available, `max_wait_ms`
//! (capped by `fetch_wait_ms_max`) passes, an error is to be reported, or the broker
//! shuts down. It is woken by high-watermark changes of the partitions it reads
//! (a `watch` per partition), never by polling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::FetchRequest;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rill_protocol::error::ProtocolError;
use rill_protocol::fetch::{
    encode_fetch_response, FetchPartitionPart, FetchResponseParts, FetchTopicPart,
    LeaderIdAndEpochPart, NodeEndpointPart,
};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::context::Broker;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::replica::{Partition, ReplicaStatus};

/// Fetch v13+ names topics by id instead of by name.
const FIRST_TOPIC_ID_VERSION: i16 = 13;

/// One requested partition, resolved.
struct Slot {
    topic_index: usize,
    partition_index: i32,
    fetch_offset: i64,
    partition_bytes_max: usize,
    target: Result<Arc<Partition>, BrokerError>,
}

/// Handles a Fetch request; returns the response frame as chunks for `writev`.
pub async fn handle(
    broker: &Broker,
    correlation_id: i32,
    request: FetchRequest,
    version: i16,
) -> Result<Vec<Bytes>, ProtocolError> {
    // Rill creates no fetch sessions (KIP-227 allows a broker to decline them by
    // answering session_id 0); a client asking to continue one gets an error and
    // falls back to full fetches.
    if request.session_id != 0 && request.session_epoch > 0 {
        let response = FetchResponseParts {
            error_code: ResponseError::FetchSessionIdNotFound.code(),
            ..FetchResponseParts::default()
        };
        return encode_fetch_response(correlation_id, version, &response)
            .map(|frame| frame.into_chunks());
    }
    let read_committed = request.isolation_level == 1;

    let mut topics: Vec<(StrBytes, Uuid)> = Vec::with_capacity(request.topics.len());
    let mut slots = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let resolved = if version >= FIRST_TOPIC_ID_VERSION {
            broker
                .manager
                .topic_by_id(topic.topic_id)
                .ok_or(BrokerError::UnknownTopicId)
        } else {
            broker
                .manager
                .topic(topic.topic.as_str())
                .ok_or(BrokerError::UnknownTopicOrPartition)
        };
        topics.push((
            topic.topic.0.clone(),
            resolved.as_ref().map_or(topic.topic_id, |t| t.id),
        ));
        for p in &topic.partitions {
            let target = match &resolved {
                Ok(t) => usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
                    .cloned()
                    .ok_or(BrokerError::UnknownTopicOrPartition)
                    // A partition of a cluster topic hosted by other brokers.
                    .and_then(|hosted| hosted.ok_or(BrokerError::NotLeaderOrFollower))
                    .and_then(|partition| {
                        partition.check_leader_epoch(p.current_leader_epoch)?;
                        Ok(partition)
                    }),
                Err(BrokerError::UnknownTopicId) => Err(BrokerError::UnknownTopicId),
                Err(_) => Err(BrokerError::UnknownTopicOrPartition),
            };
            slots.push(Slot {
                topic_index,
                partition_index: p.partition,
                fetch_offset: p.fetch_offset,
                partition_bytes_max: p.partition_max_bytes.max(0) as usize,
                target,
            });
        }
    }

    let wait_ms = (request.max_wait_ms.max(0) as u64).min(broker.config.fetch_wait_ms_max);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let min_bytes = request.min_bytes.max(0) as usize;
    let response_bytes_max = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    // Subscribe before the first read so an append between the read and the wait
    // still wakes us.
    let mut watchers: Vec<watch::Receiver<ReplicaStatus>> = slots
        .iter()
        .filter_map(|s| s.target.as_ref().ok().map(|p| p.watch_status()))
        .collect();
    let mut shutdown = broker.shutdown.clone();
    let results = loop {
        for w in &mut watchers {
            w.borrow_and_update();
        }
        let results = read_all(&slots, response_bytes_max, read_committed);
        let bytes: usize = results.iter().map(record_bytes).sum();
        let any_error = results.iter().any(|r| r.error_code != 0);
        // min_bytes 0 answers at once, like Kafka.
        if bytes >= min_bytes
            || any_error
            || watchers.is_empty()
            || Instant::now() >= deadline
            || *shutdown.borrow()
        {
            break results;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    };

    let mut responses: Vec<FetchTopicPart> = topics
        .into_iter()
        .map(|(name, topic_id)| FetchTopicPart {
            name,
            topic_id,
            partitions: Vec::new(),
        })
        .collect();
    let mut bytes_out = 0u64;
    let mut leaders_named = std::collections::BTreeSet::new();
    for (slot, mut result) in slots.iter().zip(results) {
        bytes_out += record_bytes(&result) as u64;
        if result.error_code == ResponseError::NotLeaderOrFollower.code() {
            let topic_id = responses[slot.topic_index].topic_id;
            result.current_leader = current_leader(broker, topic_id, slot.partition_index);
            if let Some(leader) = &result.current_leader {
                leaders_named.insert(leader.leader_id);
            }
        }
        responses[slot.topic_index].partitions.push(result);
    }
    Metrics::add(&broker.metrics().bytes_out_total, bytes_out);
    let response = FetchResponseParts {
        topics: responses,
        node_endpoints: node_endpoints(broker, leaders_named),
        ..FetchResponseParts::default()
    };
    encode_fetch_response(correlation_id, version, &response).map(|frame| frame.into_chunks())
}

/// KIP-951: the partition's current leader, when this broker knows it and it is another
/// broker, for a NOT_LEADER_OR_FOLLOWER answer (the encoder sends it from v12).
fn current_leader(broker: &Broker, topic_id: Uuid, partition: i32) -> Option<LeaderIdAndEpochPart> {
    let cluster = broker.manager.cluster()?;
    let (leader_id, leader_epoch) = cluster.current_leader(topic_id, partition)?;
    (leader_id != broker.config.node_id).then_some(LeaderIdAndEpochPart {
        leader_id,
        leader_epoch,
    })
}

/// The endpoints of the leaders named in current_leader fields (sent from v16).
fn node_endpoints(
    broker: &Broker,
    leaders: std::collections::BTreeSet<i32>,
) -> Vec<NodeEndpointPart> {
    let Some(cluster) = broker.manager.cluster() else {
        return Vec::new();
    };
    leaders
        .into_iter()
        .filter_map(|node_id| {
            let (host, port, rack) = cluster.endpoint(node_id)?;
            Some(NodeEndpointPart {
                node_id,
                host: StrBytes::from_string(host),
                port: i32::from(port),
                rack: rack.map(StrBytes::from_string),
            })
        })
        .collect()
}

fn record_bytes(part: &FetchPartitionPart) -> usize {
    part.records.iter().map(Bytes::len).sum()
}

/// Reads every slot once, within the response byte budget: the first partition with
/// data may exceed it by one batch (so a batch larger than every limit still gets
/// through, as in Kafka's KIP-74); later ones are skipped once it is used up.
fn read_all(
    slots: &[Slot],
    response_bytes_max: usize,
    read_committed: bool,
) -> Vec<FetchPartitionPart> {
    let mut used = 0usize;
    slots
        .iter()
        .map(|slot| {
            let data = FetchPartitionPart {
                partition_index: slot.partition_index,
                // No transactions yet: nothing is ever aborted. Kafka sends null under
                // READ_UNCOMMITTED and a (here empty) list under READ_COMMITTED.
                aborted_transactions: read_committed.then(Vec::new),
                ..FetchPartitionPart::default()
            };
            let partition = match &slot.target {
                Ok(p) => p,
                Err(e) => {
                    return FetchPartitionPart {
                        error_code: e.code(),
                        high_watermark: -1,
                        ..data
                    }
                }
            };
            let left = response_bytes_max.saturating_sub(used);
            let bytes_max = slot.partition_bytes_max.min(left);
            match partition.read(slot.fetch_offset, bytes_max.max(1)) {
                Ok(read) => {
                    let mut records = read.records;
                    if used > 0 && records.len() > left {
                        records = Bytes::new();
                    }
                    used += records.len();
                    FetchPartitionPart {
                        high_watermark: read.high_watermark,
                        last_stable_offset: read.high_watermark,
                        log_start_offset: read.log_start_offset,
                        records: if records.is_empty() {
                            Vec::new()
                        } else {
                            vec![records]
                        },
                        ..data
                    }
                }
                Err(e) => {
                    let (hw, start) = match &e {
                        BrokerError::OffsetOutOfRange {
                            log_start_offset,
                            log_end_offset,
                            ..
                        } => (*log_end_offset, *log_start_offset),
                        _ => (-1, -1),
                    };
                    tracing::debug!(topic = %partition.topic, partition = partition.index, error = %e, "fetch failed");
                    FetchPartitionPart {
                        error_code: e.code(),
                        high_watermark: hw,
                        last_stable_offset: hw,
                        log_start_offset: start,
                        ..data
                    }
                }
            }
        })
        .collect()
}
