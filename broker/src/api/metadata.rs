//! Metadata: this broker, and the requested topics (creating unknown ones when the
//! request allows it and `auto_create_topics` is on).

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::str_bytes;
use crate::cluster::Cluster;
use crate::context::Broker;
use crate::error::BrokerError;
use crate::state::Topic;

/// Answers a Metadata request.
pub async fn handle(broker: &Broker, request: MetadataRequest, version: i16) -> MetadataResponse {
    let node_id = BrokerId(broker.config.node_id);
    let cluster = broker.manager.cluster();
    // v0 has no null: an empty list means all topics there; from v1 null means all.
    let wanted = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => Some(topics),
    };
    // allow_auto_topic_creation exists from v4; before that Kafka always allowed it.
    let may_create = version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => {
            for topic in broker.manager.topics() {
                topics.push(describe(&topic, node_id, cluster));
            }
        }
        Some(requested) => {
            for wanted in requested {
                let entry = match (&wanted.name, wanted.topic_id) {
                    (Some(name), _) => {
                        let found = if may_create {
                            broker.manager.get_or_auto_create(name).await
                        } else {
                            broker
                                .manager
                                .topic(name)
                                .ok_or(BrokerError::UnknownTopicOrPartition)
                        };
                        match found {
                            Ok(topic) => describe(&topic, node_id, cluster),
                            Err(e) => error_topic(Some(name.clone()), Uuid::nil(), e.code()),
                        }
                    }
                    (None, id) => match broker.manager.topic_by_id(id) {
                        Some(topic) => describe(&topic, node_id, cluster),
                        None => error_topic(None, id, ResponseError::UnknownTopicId.code()),
                    },
                };
                topics.push(entry);
            }
        }
    }
    let (brokers, controller_id) = match cluster {
        Some(cluster) => (
            cluster
                .brokers()
                .into_iter()
                .map(|(id, host, port)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(str_bytes(host))
                        .with_port(i32::from(port))
                })
                .collect(),
            BrokerId(cluster.controller_id().unwrap_or(-1)),
        ),
        None => (
            vec![MetadataResponseBroker::default()
                .with_node_id(node_id)
                .with_host(str_bytes(broker.advertised_host.clone()))
                .with_port(broker.advertised_port)],
            node_id,
        ),
    };
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(broker.manager.cluster_id.clone())))
        .with_controller_id(controller_id)
        .with_topics(topics)
}

fn error_topic(name: Option<TopicName>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name)
        .with_topic_id(id)
}

fn describe(
    topic: &Arc<Topic>,
    node_id: BrokerId,
    cluster: Option<&Arc<Cluster>>,
) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let status = p.status();
            // This replica names itself once its high watermark is current; a follower
            // names the leader it follows.
            let leader = match status.leader {
                Some(id) if status.leader_ready || id != node_id.0 => BrokerId(id),
                _ => BrokerId(-1),
            };
            let replicas: Vec<BrokerId> = cluster
                .and_then(|c| c.replicas(topic.id, p.index))
                .map_or_else(|| vec![node_id], |r| r.into_iter().map(BrokerId).collect());
            let error = if leader.0 < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(p.index)
                .with_leader_id(leader)
                .with_leader_epoch(p.leader_epoch())
                // In-sync replicas are not tracked yet: every replica is listed.
                .with_isr_nodes(replicas.clone())
                .with_replica_nodes(replicas)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_partitions(partitions)
        .with_is_internal(topic.name == crate::group::OFFSETS_TOPIC)
        // Authorized operations are not tracked: Kafka's "omitted" value.
        .with_topic_authorized_operations(i32::MIN)
}
