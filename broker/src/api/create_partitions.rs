//! CreatePartitions: raise a topic's partition count.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::error_parts;
use crate::context::Broker;
use crate::error::BrokerError;

/// Adds partitions to each named topic.
pub async fn handle(broker: &Broker, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let me = broker.config.node_id;
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.0.to_string();
        // An empty list is no assignment (clients send one rather than null).
        let assignments = topic.assignments.as_ref().filter(|a| !a.is_empty());
        let result = match (assignments, broker.manager.cluster()) {
            // Growing it would move groups to other partitions (the coordinator of a group
            // is its hash modulo the partition count) and orphan their offsets.
            _ if name == crate::group::OFFSETS_TOPIC => Err(BrokerError::InternalTopic {
                topic: name.clone(),
                operation: "add partitions to",
            }),
            (Some(assignments), Some(_)) => {
                let assignments =
                    super::assigned_broker_ids(assignments.iter().map(|a| &a.broker_ids));
                broker
                    .manager
                    .create_partitions_assigned(
                        &name,
                        topic.count,
                        Some(assignments),
                        request.validate_only,
                    )
                    .await
            }
            (Some(assignments), None)
                if assignments
                    .iter()
                    .any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != me) =>
            {
                Err(BrokerError::InvalidReplicaAssignment(format!(
                    "every partition must be assigned to broker {me} only"
                )))
            }
            _ => {
                broker
                    .manager
                    .create_partitions(&name, topic.count, request.validate_only)
                    .await
            }
        };
        let (error_code, error_message) = error_parts(&result);
        results.push(
            CreatePartitionsTopicResult::default()
                .with_name(topic.name)
                .with_error_code(error_code)
                .with_error_message(error_message),
        );
    }
    CreatePartitionsResponse::default().with_results(results)
}
