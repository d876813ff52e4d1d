//! Follower lag: each replica's log end offset, asked of the broker that hosts it.
//!
//! Kafka has no request for a follower's progress; what it offers is ListOffsets with the
//! debugging replica id (-2), which any replica (not only the leader) answers about its
//! own log, "latest" being its log end offset. The lag of a follower is then the leader's
//! log end minus the follower's.

use std::collections::HashMap;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::ListOffsetsRequest;

use super::{topic_name, Admin};
use crate::error::Result;

/// Kafka's `ListOffsetsRequest.DEBUGGING_REPLICA_ID`.
const DEBUGGING_REPLICA_ID: i32 = -2;
/// Kafka's "latest" timestamp.
const LATEST_TIMESTAMP: i64 = -1;

impl Admin {
    /// The log end offsets of `partitions` (topic, partition) in the replicas broker
    /// `broker_id` hosts, leader or follower. Partitions it does not host, or answered
    /// with an error, are missing from the result.
    pub async fn replica_log_end_offsets(
        &self,
        broker_id: i32,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>> {
        let mut by_topic: HashMap<&str, Vec<i32>> = HashMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic.as_str()).or_default().push(*partition);
        }
        let topics = by_topic
            .into_iter()
            .map(|(topic, indexes)| {
                ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        indexes
                            .into_iter()
                            .map(|index| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(index)
                                    .with_timestamp(LATEST_TIMESTAMP)
                            })
                            .collect(),
                    )
            })
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(DEBUGGING_REPLICA_ID.into())
            .with_topics(topics);
        // Broker addresses come from the cached metadata: load it first.
        self.cluster.metadata().await?;
        let conn = self.cluster.broker_connection(broker_id).await?;
        let response = conn.request(&request).await?;
        let mut ends = HashMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                if p.error_code == 0 && p.offset >= 0 {
                    ends.insert((topic.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
        Ok(ends)
    }
}
