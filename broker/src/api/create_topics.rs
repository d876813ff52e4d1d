//! CreateTopics: validate_only, partition counts, replication factor (1 on a single
//! node; placement or the request's assignment in a cluster), configs.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};

use super::{error_parts, str_bytes};
use crate::context::Broker;
use crate::error::BrokerError;
use crate::state::topic_config::TOPIC_CONFIG_KEYS;

/// DescribeConfigs' config_source values (Kafka's `ConfigSource`).
pub const SOURCE_TOPIC: i8 = 1;
/// A broker default that the operator did not set.
pub const SOURCE_DEFAULT: i8 = 5;

/// Creates (or validates) each requested topic.
pub async fn handle(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut configs = BTreeMap::new();
        let mut bad = None;
        for c in &topic.configs {
            match &c.value {
                Some(v) => {
                    configs.insert(c.name.to_string(), v.to_string());
                }
                None => bad = Some(format!("config `{}` has a null value", c.name)),
            }
        }
        let result = if let Some(message) = bad {
            Err(BrokerError::InvalidConfig(message))
        } else if !topic.assignments.is_empty()
            && (topic.num_partitions != -1 || topic.replication_factor != -1)
        {
            Err(BrokerError::InvalidRequest(
                "assignments given with num_partitions/replication_factor not -1".into(),
            ))
        } else if !topic.assignments.is_empty() && broker.manager.cluster().is_some() {
            // The controller checks them against the registered brokers.
            let mut assignments: Vec<_> = topic.assignments.iter().collect();
            assignments.sort_by_key(|a| a.partition_index);
            if assignments
                .iter()
                .enumerate()
                .any(|(i, a)| a.partition_index != i as i32)
            {
                Err(BrokerError::InvalidReplicaAssignment(
                    "partition indexes must be 0..count, each once".into(),
                ))
            } else {
                let assignments =
                    super::assigned_broker_ids(assignments.iter().map(|a| &a.broker_ids));
                broker
                    .manager
                    .create_topic_assigned(
                        &name,
                        assignments.len() as i32,
                        -1,
                        Some(assignments),
                        configs,
                        request.validate_only,
                    )
                    .await
            }
        } else if !topic.assignments.is_empty() {
            // Manual assignment on a single node: only this broker, one replica each.
            let me = broker.config.node_id;
            if topic
                .assignments
                .iter()
                .any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != me)
            {
                Err(BrokerError::InvalidReplicaAssignment(format!(
                    "every partition must be assigned to broker {me} only"
                )))
            } else {
                broker
                    .manager
                    .create_topic(
                        &name,
                        topic.assignments.len() as i32,
                        1,
                        configs,
                        request.validate_only,
                    )
                    .await
            }
        } else {
            broker
                .manager
                .create_topic(
                    &name,
                    topic.num_partitions,
                    topic.replication_factor,
                    configs,
                    request.validate_only,
                )
                .await
        };
        let (error_code, error_message) = error_parts(&result);
        let mut entry = CreatableTopicResult::default()
            .with_name(topic.name)
            .with_error_code(error_code)
            .with_error_message(error_message);
        if let Ok(created) = &result {
            let partitions = if created.partitions.is_empty() {
                // validate_only: report what would have been created.
                if topic.num_partitions == -1 && topic.assignments.is_empty() {
                    broker.config.default_partitions
                } else if topic.assignments.is_empty() {
                    topic.num_partitions
                } else {
                    topic.assignments.len() as i32
                }
            } else {
                created.partitions.len() as i32
            };
            let replication_factor = match broker.manager.cluster() {
                None => 1,
                Some(cluster) => match cluster.replicas(created.id, 0) {
                    Some(replicas) => replicas.len() as i16,
                    // validate_only: what would have been created.
                    None if !topic.assignments.is_empty() => {
                        topic.assignments[0].broker_ids.len() as i16
                    }
                    None if topic.replication_factor == -1 => cluster.default_replication_factor(),
                    None => topic.replication_factor,
                },
            };
            entry = entry
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor);
            if version >= 7 {
                entry = entry.with_topic_id(created.id);
            }
            if version >= 5 {
                entry = entry.with_configs(Some(
                    TOPIC_CONFIG_KEYS
                        .iter()
                        .map(|key| {
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(*key))
                                .with_value(created.config.value(key).map(str_bytes))
                                .with_config_source(if created.config.is_override(key) {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                })
                        })
                        .collect(),
                ));
            }
        }
        results.push(entry);
    }
    CreateTopicsResponse::default().with_topics(results)
}
