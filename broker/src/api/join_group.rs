//! JoinGroup: parks until the group's rebalance completes (see `group::state`).

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::Broker;
use crate::group::state::JoinRequest;
use crate::group::MEMBER_METADATA_BYTES_MAX;

/// Answers a JoinGroup request (after the rebalance, for a member that waits).
pub async fn handle(
    broker: &Broker,
    request: JoinGroupRequest,
    version: i16,
    client_id: Option<&str>,
    client_host: &str,
) -> JoinGroupResponse {
    let metadata_bytes: usize = request.protocols.iter().map(|p| p.metadata.len()).sum();
    let answer = if metadata_bytes > MEMBER_METADATA_BYTES_MAX {
        crate::group::member::JoinAnswer::error(
            ResponseError::InvalidRequest.code(),
            &request.member_id,
        )
    } else {
        let join = JoinRequest {
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: client_id.unwrap_or_default().to_string(),
            client_host: client_host.to_string(),
            session_timeout_ms: request.session_timeout_ms,
            // v0 has no rebalance timeout: the session timeout serves, as in Kafka.
            rebalance_timeout_ms: if version >= 1 {
                request.rebalance_timeout_ms
            } else {
                request.session_timeout_ms
            },
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        broker.groups.join(&request.group_id, join).await
    };
    let members = answer
        .members
        .into_iter()
        .map(|m| {
            let member = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_metadata(m.metadata);
            if version >= 5 {
                member.with_group_instance_id(m.group_instance_id.map(str_bytes))
            } else {
                member
            }
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(answer.error_code)
        .with_generation_id(answer.generation_id)
        .with_leader(str_bytes(answer.leader))
        .with_member_id(str_bytes(answer.member_id))
        .with_members(members);
    // Before v7 the protocol name is a plain string ("" on errors).
    response = if version >= 7 {
        response
            .with_protocol_type(answer.protocol_type.map(str_bytes))
            .with_protocol_name(answer.protocol_name.map(str_bytes))
    } else {
        response.with_protocol_name(Some(str_bytes(answer.protocol_name.unwrap_or_default())))
    };
    response
}
