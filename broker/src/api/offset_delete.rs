//! OffsetDelete: removes a group's committed offsets for some partitions (tombstones in
//! `__consumer_offsets`), refused for topics a live member of the group subscribes to.

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, TopicName};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::Broker;

/// Answers an OffsetDelete request.
pub async fn handle(broker: &Broker, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
    // Partitions of topics that do not exist are answered UNKNOWN_TOPIC_OR_PARTITION here
    // and never reach the coordinator (Kafka's KafkaApis does the same).
    let mut answers: Vec<(String, i32, Option<ResponseError>)> = Vec::new();
    let mut wanted: Vec<(String, i32)> = Vec::new();
    for topic in &request.topics {
        let name = topic.name.to_string();
        let known = broker.manager.topic(&name);
        for p in &topic.partitions {
            let index = p.partition_index;
            let exists = known
                .as_ref()
                .is_some_and(|t| (0..t.partitions.len() as i32).contains(&index));
            if exists {
                wanted.push((name.clone(), index));
                answers.push((name.clone(), index, None));
            } else {
                answers.push((
                    name.clone(),
                    index,
                    Some(ResponseError::UnknownTopicOrPartition),
                ));
            }
        }
    }
    let results = match broker
        .groups
        .delete_offsets(&request.group_id, wanted)
        .await
    {
        Ok(results) => results,
        Err(e) => return OffsetDeleteResponse::default().with_error_code(e.code()),
    };
    // Fill the coordinator's per-partition answers into the slots kept for them, in order.
    let mut results = results.into_iter();
    for answer in answers.iter_mut().filter(|a| a.2.is_none()) {
        if let Some((_, _, result)) = results.next() {
            answer.2 = result.err();
        }
    }
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    for (name, index, error) in answers {
        let partition = OffsetDeleteResponsePartition::default()
            .with_partition_index(index)
            .with_error_code(error.map_or(0, |e| e.code()));
        match topics.last_mut() {
            Some(last) if last.name.as_str() == name => last.partitions.push(partition),
            _ => topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
