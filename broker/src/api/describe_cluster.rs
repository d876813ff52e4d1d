//! DescribeCluster: the cluster id, the controller and the brokers (on a single node:
//! itself; in a cluster: the registered brokers and the metadata group's leader).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::str_bytes;
use crate::context::Broker;

/// Answers with the cluster id, the controller and the brokers.
pub fn handle(broker: &Broker, _request: DescribeClusterRequest) -> DescribeClusterResponse {
    let node_id = BrokerId(broker.config.node_id);
    let (controller, brokers) = match broker.manager.cluster() {
        Some(cluster) => (
            BrokerId(cluster.controller_id().unwrap_or(-1)),
            cluster
                .brokers()
                .into_iter()
                .map(|(id, host, port)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(str_bytes(host))
                        .with_port(i32::from(port))
                })
                .collect(),
        ),
        None => (
            node_id,
            vec![DescribeClusterBroker::default()
                .with_broker_id(node_id)
                .with_host(str_bytes(broker.advertised_host.clone()))
                .with_port(broker.advertised_port)],
        ),
    };
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(broker.manager.cluster_id.clone()))
        .with_controller_id(controller)
        // Authorized operations are not tracked: Kafka's "omitted" value.
        .with_cluster_authorized_operations(i32::MIN)
        .with_brokers(brokers)
}
