//! Produce: append each partition's record batches to its log.
//!
//! Copies: the request frame is one `BytesMut` filled by the socket read; decoding
//! the request (kafka-protocol with a `Bytes` buffer) slices `records` out of it
//! without copying; the broker reads only the 12-byte prefix of each batch to check
//! its size, and storage validates the 61-byte header and CRC and copies the batches
//! once into the mapped segment (all batches of a partition in one append). So: one copy, frame buffer → log. Records are never decoded.
//!
//! acks: 0 answers nothing; 1 answers after the append; -1 answers after the flush
//! covering the batch under `durability = fsync` (group commit in
//! [`crate::state::partition`]), after the append under `interval`.

use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::str_bytes;
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::server::Broker;
use crate::state::partition::Appended;

/// Handles a Produce request; `None` for acks=0 (no response is sent).
pub async fn handle(
    broker: &Broker,
    request: ProduceRequest,
    _version: i16,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    let timeout = Duration::from_millis(request.timeout_ms.max(0) as u64);
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let results = join_all(
            topic
                .partition_data
                .into_iter()
                .map(|data| produce_partition(broker, &name, data, acks, timeout)),
        )
        .await;
        topics.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id)
                .with_partition_responses(results),
        );
    }
    if acks == 0 {
        return None;
    }
    Some(ProduceResponse::default().with_responses(topics))
}

async fn produce_partition(
    broker: &Broker,
    topic: &str,
    data: PartitionProduceData,
    acks: i16,
    timeout: Duration,
) -> PartitionProduceResponse {
    let index = data.index;
    let result = append_partition(broker, topic, data, acks, timeout).await;
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

async fn append_partition(
    broker: &Broker,
    topic: &str,
    data: PartitionProduceData,
    acks: i16,
    timeout: Duration,
) -> Result<Appended, BrokerError> {
    if !matches!(acks, -1..=1) {
        return Err(BrokerError::InvalidRequiredAcks(acks));
    }
    let (topic, partition) = broker
        .manager
        .partition(topic, data.index)
        .ok_or(BrokerError::UnknownTopicOrPartition)?;
    let records = data.records.unwrap_or_default();
    super::produce_check::check_client_batches(&records, topic.config.max_message_bytes)?;
    let append = partition.append(&records, acks == -1);
    if acks == -1 {
        tokio::time::timeout(timeout, append)
            .await
            .map_err(|_| BrokerError::RequestTimedOut)?
    } else {
        append.await
    }
}
