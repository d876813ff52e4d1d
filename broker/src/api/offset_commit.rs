//! OffsetCommit: checks the member and generation, then writes the offsets to
//! `__consumer_offsets` and answers once they are committed.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use crate::context::Broker;
use crate::group::records::OffsetValue;
use crate::group::OFFSET_METADATA_BYTES_MAX;

/// Per partition of a topic: the offset to write, or the error it is answered with.
type CheckedPartitions = Vec<(i32, Result<OffsetValue, ResponseError>)>;

/// Answers an OffsetCommit request.
pub async fn handle(broker: &Broker, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let now_ms = crate::clock::now_ms();
    // Per partition: Ok(value) to write, or the error it is answered with.
    let mut checked: Vec<(String, CheckedPartitions)> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.to_string();
        let known = broker.manager.topic(&name);
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                let metadata = p.committed_metadata.as_deref().unwrap_or_default();
                let result = if metadata.len() > OFFSET_METADATA_BYTES_MAX {
                    Err(ResponseError::OffsetMetadataTooLarge)
                } else if !known
                    .as_ref()
                    .is_some_and(|t| (0..t.partitions.len() as i32).contains(&p.partition_index))
                {
                    Err(ResponseError::UnknownTopicOrPartition)
                } else {
                    Ok(OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: metadata.to_string(),
                        commit_timestamp_ms: now_ms,
                    })
                };
                (p.partition_index, result)
            })
            .collect();
        checked.push((name, partitions));
    }
    let writes: Vec<(String, i32, OffsetValue)> = checked
        .iter()
        .flat_map(|(topic, partitions)| {
            partitions
                .iter()
                .filter_map(move |(p, r)| r.as_ref().ok().map(|v| (topic.clone(), *p, v.clone())))
        })
        .collect();
    let written = broker
        .groups
        .commit_offsets(
            &request.group_id,
            request.generation_id_or_member_epoch,
            &request.member_id,
            request.group_instance_id.as_deref(),
            writes,
        )
        .await;
    let topics = checked
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|(index, result)| {
                    let error = match (&result, &written) {
                        (Err(e), _) => e.code(),
                        (Ok(_), Err(e)) => e.code(),
                        (Ok(_), Ok(())) => 0,
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(index)
                        .with_error_code(error)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(kafka_protocol::messages::TopicName(super::str_bytes(name)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
