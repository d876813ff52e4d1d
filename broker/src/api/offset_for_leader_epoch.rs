//! OffsetForLeaderEpoch: the end offset of a leader epoch, for consumers
//! validating their position after a leader change (KIP-320).

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};

use crate::context::Broker;
use crate::error::BrokerError;

/// Answers every requested partition.
pub fn handle(
    broker: &Broker,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = EpochEndOffset::default().with_partition(p.partition);
                    match end_offset(
                        broker,
                        &name,
                        p.partition,
                        p.current_leader_epoch,
                        p.leader_epoch,
                    ) {
                        Ok((epoch, offset)) => {
                            response.with_leader_epoch(epoch).with_end_offset(offset)
                        }
                        Err(e) => response
                            .with_error_code(e.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

fn end_offset(
    broker: &Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> Result<(i32, i64), BrokerError> {
    let (_, partition) = broker.manager.hosted_partition(topic, index)?;
    partition.check_leader_epoch(current_leader_epoch)?;
    let log = partition.log();
    // Every epoch in the log starts with its leader's LEADER_CHANGE batch, so the
    // leader-epoch file answers; Kafka answers (-1, -1) for an epoch older than any.
    Ok(match log.end_offset_for_epoch(leader_epoch) {
        Some((epoch, end_offset)) => (epoch, end_offset as i64),
        None => (-1, -1),
    })
}
