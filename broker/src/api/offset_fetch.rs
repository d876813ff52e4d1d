//! OffsetFetch: committed offsets of one group (v1–v7) or several (v8+); -1 where none.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::Broker;
use crate::group::coordinator::TopicOffsets;
use crate::group::records::OffsetValue;

type Fetched = Result<TopicOffsets, ResponseError>;

fn offset_parts(value: &Option<OffsetValue>) -> (i64, i32, String) {
    match value {
        Some(v) => (v.offset, v.leader_epoch, v.metadata.clone()),
        None => (-1, -1, String::new()),
    }
}

/// Answers an OffsetFetch request. No transactions exist, so `require_stable` never finds
/// pending offsets to wait for.
pub fn handle(broker: &Broker, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|g| {
                let wanted = g.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                let fetched: Fetched = broker.groups.fetch_offsets(&g.group_id, wanted);
                let (topics, error) = match fetched {
                    Ok(topics) => (topics, 0),
                    Err(e) => (Vec::new(), e.code()),
                };
                let topics = topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(name)))
                            .with_partitions(
                                partitions
                                    .iter()
                                    .map(|(index, value)| {
                                        let (offset, epoch, metadata) = offset_parts(value);
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(*index)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str_bytes(metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_topics(topics)
                    .with_error_code(error)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect::<Vec<_>>()
    });
    let fetched: Fetched = broker
        .groups
        .fetch_offsets(&request.group_id, wanted.clone());
    let (topics, group_error) = match fetched {
        Ok(topics) => (topics, None),
        // v1 has no group-level error: each asked partition carries it.
        Err(e) => (
            wanted
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| (t, ps.into_iter().map(|p| (p, None)).collect()))
                .collect(),
            Some(e),
        ),
    };
    let partition_error = if version < 2 {
        group_error.map_or(0, |e| e.code())
    } else {
        0
    };
    let topics = topics
        .into_iter()
        .map(|(name, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(index, value)| {
                            let (offset, epoch, metadata) = offset_parts(value);
                            let p = OffsetFetchResponsePartition::default()
                                .with_partition_index(*index)
                                .with_committed_offset(offset)
                                .with_metadata(Some(str_bytes(metadata)))
                                .with_error_code(partition_error);
                            if version >= 5 {
                                p.with_committed_leader_epoch(epoch)
                            } else {
                                p
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    let response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.with_error_code(group_error.map_or(0, |e| e.code()))
    } else {
        response
    }
}
