//! DeleteRecords: moves each partition's log start offset up (at its leader, through the
//! partition's Raft log so every replica follows; see `replica::Partition::delete_records`)
//! and answers the new low watermark. ListOffsets earliest and Fetch's log start follow.

use std::time::Duration;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::context::Broker;
use crate::error::BrokerError;

/// Shortest wait for a deletion to commit, whatever the request's `timeout_ms` says.
const TIMEOUT_MS_MIN: u64 = 1_000;
/// Longest wait for a deletion to commit.
const TIMEOUT_MS_MAX: u64 = 60_000;

/// Deletes the records below each requested offset.
pub async fn handle(broker: &Broker, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let timeout = Duration::from_millis(
        (request.timeout_ms.max(0) as u64).clamp(TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
    );
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.as_str();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let result = if name == crate::group::OFFSETS_TOPIC {
                Err(BrokerError::InternalTopic {
                    topic: name.to_string(),
                    operation: "delete records of",
                })
            } else {
                match broker.manager.hosted_partition(name, p.partition_index) {
                    Ok((_, partition)) => {
                        match tokio::time::timeout(timeout, partition.delete_records(p.offset))
                            .await
                        {
                            Ok(result) => result,
                            Err(_) => Err(BrokerError::RequestTimedOut),
                        }
                    }
                    Err(e) => Err(e),
                }
            };
            let entry =
                DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            partitions.push(match result {
                Ok(low_watermark) => entry.with_low_watermark(low_watermark),
                Err(e) => {
                    tracing::debug!(topic = name, partition = p.partition_index, error = %e, "DeleteRecords refused");
                    entry.with_low_watermark(-1).with_error_code(e.code())
                }
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
