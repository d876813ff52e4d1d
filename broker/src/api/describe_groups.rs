//! DescribeGroups: state, protocol and members (with metadata and assignment) of groups
//! this broker coordinates.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};

use super::str_bytes;
use crate::context::Broker;

/// Answers a DescribeGroups request.
pub fn handle(
    broker: &Broker,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| match broker.groups.describe_group(&group_id) {
            Err(e) => DescribedGroup::default()
                .with_group_id(group_id)
                .with_error_code(e.code()),
            Ok(summary) => {
                let members = summary
                    .members
                    .into_iter()
                    .map(|m| {
                        let member = DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.member_id))
                            .with_client_id(str_bytes(m.client_id))
                            .with_client_host(str_bytes(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment);
                        if version >= 4 {
                            member.with_group_instance_id(m.group_instance_id.map(str_bytes))
                        } else {
                            member
                        }
                    })
                    .collect();
                DescribedGroup::default()
                    .with_group_id(group_id)
                    .with_group_state(str_bytes(summary.state))
                    .with_protocol_type(str_bytes(summary.protocol_type))
                    .with_protocol_data(str_bytes(summary.protocol))
                    .with_members(members)
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
