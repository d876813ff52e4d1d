//! SyncGroup: the leader hands in the assignment; every member gets its own.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::ResponseError;

use super::str_bytes;
use crate::context::Broker;
use crate::group::MEMBER_METADATA_BYTES_MAX;

/// Answers a SyncGroup request (once the leader's assignment is in, for a follower).
pub async fn handle(broker: &Broker, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let too_large = request
        .assignments
        .iter()
        .any(|a| a.assignment.len() > MEMBER_METADATA_BYTES_MAX);
    let answer = if too_large {
        crate::group::member::SyncAnswer::error(ResponseError::InvalidRequest.code())
    } else {
        let assignments = request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        broker
            .groups
            .sync(
                &request.group_id,
                request.generation_id,
                &request.member_id,
                request.group_instance_id.as_deref(),
                request.protocol_type.as_deref(),
                request.protocol_name.as_deref(),
                assignments,
            )
            .await
    };
    let response = SyncGroupResponse::default()
        .with_error_code(answer.error_code)
        .with_assignment(answer.assignment);
    if version >= 5 {
        response
            .with_protocol_type(answer.protocol_type.map(str_bytes))
            .with_protocol_name(answer.protocol_name.map(str_bytes))
    } else {
        response
    }
}
