//! Produce: append each partition's record batches to its log.
//!
//! Copies: the request frame is one `BytesMut` filled by the socket read; decoding
//! the request (rill-protocol's bounded decoder over a `Bytes` buffer) slices `records`
//! out of it without copying; the broker checks each batch's 61-byte header against
//! Kafka's rules for client batches ([`super::produce_check`]), and storage verifies the
//! CRC and copies the batches once into the segment (all batches of a partition in one
//! append). So: one copy, frame buffer → log. Records are never decoded.
//!
//! Order: a connection's Produce requests are appended in arrival order (the append
//! stage runs while the request holds its connection's turn; see
//! [`crate::context::order`]).
//!
//! Back-pressure: a partition whose group holds its limit of uncommitted appends
//! (256 MiB: the disk or the followers are behind) takes no more until its commit moves;
//! the request waits for that, within its timeout (see [`append_partition`]).
//!
//! acks: 0 answers nothing; 1 answers after the append; -1 answers after the flush
//! covering the batch under `durability = fsync` (group commit in
//! [`crate::replica`]), after the append under `interval`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse};

use super::str_bytes;
use crate::context::order::TurnHeld;
use crate::context::Broker;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::replica::Appended;
use crate::replica::Partition;

/// A partition's index, its append's outcome and, when it succeeded, the partition (for
/// the acks=-1 wait).
type PartitionAppend = (i32, Result<Appended, BrokerError>, Option<Arc<Partition>>);

/// Handles a Produce request; `None` for acks=0 (no response is sent).
///
/// Two stages: every partition's batches are appended while `turn` is held, so pipelined
/// requests of one connection are appended in request order; the turn then passes on
/// and acks=-1 waits for durability, overlapping with the requests behind it.
pub async fn handle(
    broker: &Broker,
    request: ProduceRequest,
    _version: i16,
    turn: TurnHeld,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
    // One deadline for the whole request: waiting for room in a backlogged partition
    // (below) and the acks=-1 wait both count against the client's timeout_ms.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut appends: Vec<Vec<PartitionAppend>> = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let name = topic.name.0.as_str();
        let mut partitions = Vec::with_capacity(topic.partition_data.len());
        for data in &topic.partition_data {
            partitions.push(
                match append_partition(broker, name, data, acks, deadline).await {
                    Ok((appended, partition)) => (data.index, Ok(appended), Some(partition)),
                    Err(e) => (data.index, Err(e), None),
                },
            );
        }
        appends.push(partitions);
    }
    drop(turn);
    if acks == 0 {
        return None;
    }
    let mut topics = Vec::with_capacity(appends.len());
    let mut leaders_named = std::collections::BTreeSet::new();
    for (topic, partitions) in request.topic_data.into_iter().zip(appends) {
        let results = join_all(partitions.into_iter().map(|(index, result, partition)| {
            acknowledge(
                broker,
                topic.name.0.as_str(),
                index,
                result,
                partition,
                acks,
                deadline,
            )
        }))
        .await;
        let results = results
            .into_iter()
            .map(|response| name_current_leader(broker, topic.name.0.as_str(), response))
            .inspect(|response| {
                if response.current_leader.leader_id.0 >= 0 {
                    leaders_named.insert(response.current_leader.leader_id.0);
                }
            })
            .collect();
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(results),
        );
    }
    Some(
        ProduceResponse::default()
            .with_responses(topics)
            .with_node_endpoints(node_endpoints(broker, leaders_named)),
    )
}

/// KIP-951: a NOT_LEADER_OR_FOLLOWER answer names the partition's current leader when
/// this broker knows it (sent from Produce v10; older versions leave it out).
fn name_current_leader(
    broker: &Broker,
    topic: &str,
    response: PartitionProduceResponse,
) -> PartitionProduceResponse {
    if response.error_code != kafka_protocol::ResponseError::NotLeaderOrFollower.code() {
        return response;
    }
    let Some(cluster) = broker.manager.cluster() else {
        return response;
    };
    let Some(topic) = broker.manager.topic(topic) else {
        return response;
    };
    match cluster.current_leader(topic.id, response.index) {
        Some((leader, leader_epoch)) if leader != broker.config.node_id => response
            .with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(leader_epoch),
            ),
        _ => response,
    }
}

/// The endpoints of the leaders named in current_leader fields (KIP-951).
fn node_endpoints(broker: &Broker, leaders: std::collections::BTreeSet<i32>) -> Vec<NodeEndpoint> {
    let Some(cluster) = broker.manager.cluster() else {
        return Vec::new();
    };
    leaders
        .into_iter()
        .filter_map(|id| {
            let (host, port, rack) = cluster.endpoint(id)?;
            Some(
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(host))
                    .with_port(i32::from(port))
                    .with_rack(rack.map(str_bytes)),
            )
        })
        .collect()
}

/// Waits (acks=-1) until the partition's append may be acknowledged, then builds its
/// answer.
async fn acknowledge(
    broker: &Broker,
    topic: &str,
    index: i32,
    mut result: Result<Appended, BrokerError>,
    partition: Option<Arc<Partition>>,
    acks: i16,
    deadline: tokio::time::Instant,
) -> PartitionProduceResponse {
    if let (Ok(appended), Some(partition), -1) = (&result, partition, acks) {
        let wait = partition.wait_acknowledgeable(appended);
        result = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(())) => result,
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BrokerError::RequestTimedOut),
        };
    }
    let response = PartitionProduceResponse::default()
        .with_index(index)
        .with_log_append_time_ms(-1);
    match result {
        Ok(appended) => {
            if acks == -1 {
                Metrics::add(&broker.metrics().acks_all_responses_total, 1);
            }
            response
                .with_base_offset(appended.base_offset)
                .with_log_start_offset(appended.log_start_offset)
                .with_log_append_time_ms(appended.log_append_time_ms)
        }
        Err(e) => {
            tracing::debug!(topic, partition = index, error = %e, "produce failed");
            response
                .with_error_code(e.code())
                .with_base_offset(-1)
                .with_log_start_offset(-1)
                .with_error_message(Some(str_bytes(e.to_string())))
                .with_record_errors(e.record_errors())
        }
    }
}

/// Checks and appends one partition's batches. It waits only while the partition's
/// uncommitted backlog is full ([`BrokerError::Backlogged`]: its disk sync or its
/// followers are behind), for the commit to move, until `deadline` (then
/// REQUEST_TIMED_OUT, retriable). That wait holds the connection's turn, so the
/// requests behind it wait too: back-pressure reaches the producer as slower answers,
/// as from a Kafka broker whose disk is behind, instead of refusals it must retry.
async fn append_partition(
    broker: &Broker,
    topic: &str,
    data: &PartitionProduceData,
    acks: i16,
    deadline: tokio::time::Instant,
) -> Result<(Appended, Arc<Partition>), BrokerError> {
    if !matches!(acks, -1..=1) {
        return Err(BrokerError::InvalidRequiredAcks(acks));
    }
    // Only the group coordinator writes __consumer_offsets (Kafka refuses client appends to
    // its internal topics the same way).
    if topic == crate::group::OFFSETS_TOPIC {
        return Err(BrokerError::InvalidTopic(format!(
            "{topic} is internal: clients cannot produce to it"
        )));
    }
    let (topic, partition) = broker.manager.hosted_partition(topic, data.index)?;
    let records = data.records.clone().unwrap_or_default();
    let counts =
        super::produce_check::check_client_batches(&records, topic.config.max_message_bytes)?;
    if topic.config.is_compacted() {
        super::produce_check::check_keys_for_compaction(&records)?;
    }
    let (records, log_append_time_ms) =
        super::produce_rewrite::rewrite_for_topic(records, &topic.config, crate::clock::now_ms())?;
    let mut appended = loop {
        // Subscribed before the attempt: a commit that lands between the refusal and
        // the wait still wakes it.
        let mut status = partition.watch_status();
        match partition.append(&records, counts) {
            Err(BrokerError::Backlogged) => {
                match tokio::time::timeout_at(deadline, status.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return Err(BrokerError::UnknownTopicOrPartition),
                    Err(_) => return Err(BrokerError::RequestTimedOut),
                }
            }
            other => break other?,
        }
    };
    appended.log_append_time_ms = log_append_time_ms.unwrap_or(-1);
    Ok((appended, partition))
}
