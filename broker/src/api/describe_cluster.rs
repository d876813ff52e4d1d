//! DescribeCluster: this single broker.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::str_bytes;
use crate::context::Broker;

/// Answers with the cluster id, this broker as controller, and this broker.
pub fn handle(broker: &Broker, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let node_id = BrokerId(broker.config.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(broker.manager.cluster_id.clone()))
        .with_controller_id(node_id)
        // Authorized operations are not tracked: Kafka's "omitted" value.
        .with_cluster_authorized_operations(i32::MIN)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node_id)
            .with_host(str_bytes(broker.advertised_host.clone()))
            .with_port(broker.advertised_port)])
}
