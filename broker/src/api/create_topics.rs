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
use crate::state::topic_config::{self, TopicConfigError, TOPIC_CONFIGS};

/// Creates (or validates) each requested topic.
pub async fn handle(
    broker: &Broker,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let configs = request_configs(
            topic
                .configs
                .iter()
                .map(|c| (c.name.as_str(), c.value.as_ref().map(|v| v.as_str()))),
        );
        let (configs, bad) = match configs {
            Ok(configs) => (configs, None),
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
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
                    TOPIC_CONFIGS
                        .iter()
                        .map(|def| {
                            CreatableTopicConfigs::default()
                                .with_name(str_bytes(def.name))
                                .with_value(created.config.value(def.name).map(str_bytes))
                                .with_config_source(created.config.source(def.name))
                        })
                        .collect(),
                ));
            }
        }
        results.push(entry);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// The configs of a request (CreateTopics, AlterConfigs) as a map, each key and value
/// checked ([`topic_config::check`]): the first unknown key, bad value, null value or
/// duplicate key is the error, so a request with 10,000 configs costs at most one pass
/// and names the key at fault.
pub fn request_configs<'a>(
    configs: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<BTreeMap<String, String>, TopicConfigError> {
    let mut map = BTreeMap::new();
    for (key, value) in configs {
        let Some(value) = value else {
            return Err(TopicConfigError {
                key: key.chars().take(256).collect(),
                message: "null value".to_string(),
            });
        };
        topic_config::check(key, value)?;
        if map.insert(key.to_string(), value.to_string()).is_some() {
            return Err(TopicConfigError {
                key: key.to_string(),
                message: "given twice".to_string(),
            });
        }
    }
    Ok(map)
}
