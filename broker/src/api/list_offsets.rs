//! ListOffsets: earliest (-2), latest (-1), max-timestamp (-3), earliest-local (-4),
//! latest-tiered (-5, none here) and by timestamp; never beyond the high watermark.
//!
//! A request from Kafka's debugging replica id (-2) is answered by any replica, leader
//! or follower, about its own log, and "latest" is then its log end offset rather than
//! the high watermark (as Kafka does): how `rill cluster` measures follower lag.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::context::Broker;
use crate::error::BrokerError;

/// `replica_id` of a debugging client (Kafka's `DEBUGGING_REPLICA_ID`).
const DEBUGGING_REPLICA_ID: i32 = -2;

/// Kafka's special "timestamps".
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// Answers every requested partition.
pub fn handle(broker: &Broker, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let debugging = request.replica_id.0 == DEBUGGING_REPLICA_ID;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    match lookup(
                        broker,
                        &name,
                        p.partition_index,
                        p.current_leader_epoch,
                        p.timestamp,
                        debugging,
                    ) {
                        Ok((timestamp, offset, leader_epoch)) => {
                            let response = response.with_timestamp(timestamp).with_offset(offset);
                            if version >= 4 && offset >= 0 {
                                response.with_leader_epoch(leader_epoch)
                            } else {
                                response
                            }
                        }
                        Err(e) => response
                            .with_error_code(e.code())
                            .with_timestamp(-1)
                            .with_offset(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// (timestamp, offset) for one partition; `debugging`: "latest" is the log end offset.
fn lookup(
    broker: &Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    timestamp: i64,
    debugging: bool,
) -> Result<(i64, i64, i32), BrokerError> {
    let (_, partition) = broker.manager.hosted_partition(topic, index)?;
    partition.check_leader_epoch(current_leader_epoch)?;
    let high_watermark = partition.visible_end_offset();
    let log = partition.log();
    // Kafka answers the epoch of the batch holding the offset; the current epoch for
    // the high watermark.
    let epoch_at = |offset: i64| {
        log.epoch_for_offset(offset as u64)
            .unwrap_or_else(|| partition.leader_epoch())
    };
    let storage = |e: rill_storage::StorageError| BrokerError::Storage(e.to_string());
    let (timestamp, offset) = match timestamp {
        LATEST if debugging => (-1, log.log_end_offset() as i64),
        LATEST => (-1, high_watermark),
        EARLIEST | EARLIEST_LOCAL => (-1, log.log_start_offset() as i64),
        LATEST_TIERED => (-1, -1),
        MAX_TIMESTAMP => match log.max_timestamp().map_err(storage)? {
            Some((ts, offset)) if (offset as i64) < high_watermark => (ts, offset as i64),
            _ => (-1, -1),
        },
        ts if ts >= 0 => match log.offset_for_timestamp(ts).map_err(storage)? {
            Some((offset, found_ts)) if (offset as i64) < high_watermark => {
                (found_ts, offset as i64)
            }
            _ => (-1, -1),
        },
        other => {
            return Err(BrokerError::InvalidRequest(format!(
                "timestamp {other} is not a timestamp or a known special value"
            )))
        }
    };
    Ok((timestamp, offset, epoch_at(offset)))
}
