//! DeleteTopics: by name (v0–v5) or by id (v6+).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use super::{error_parts, str_bytes};
use crate::context::Broker;
use crate::error::BrokerError;

/// Deletes each named topic.
pub async fn handle(
    broker: &Broker,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v0–v5 name topics in `topic_names`; v6+ in `topics` (name or id).
    let mut targets: Vec<(Option<String>, Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    targets.extend(
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let name = match name {
            Some(name) => Some(name),
            None => broker.manager.topic_by_id(id).map(|t| t.name.clone()),
        };
        let result = match &name {
            Some(name) if name == crate::group::OFFSETS_TOPIC => Err(BrokerError::InternalTopic {
                topic: name.clone(),
                operation: "delete",
            }),
            Some(name) => broker.manager.delete_topic(name).await,
            None => Err(BrokerError::UnknownTopicId),
        };
        let (error_code, error_message) = error_parts(&result);
        let mut entry = DeletableTopicResult::default()
            .with_name(name.map(|n| TopicName(str_bytes(n))))
            .with_error_code(error_code);
        if version >= 5 {
            entry = entry.with_error_message(error_message);
        }
        if version >= 6 {
            entry = entry.with_topic_id(result.unwrap_or(id));
        }
        responses.push(entry);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
