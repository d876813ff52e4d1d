//! Shared by the group tests (`groups.rs`, `groups_admin.rs`, `groups_client.rs`,
//! `groups_cluster.rs`, `groups_python.rs`): the broker flags that make groups form
//! quickly, the test topic's size, and librdkafka (rdkafka crate) client settings.

#![allow(dead_code)]

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Partitions of every test topic.
pub const PARTITIONS: i32 = 4;

/// Few `__consumer_offsets` partitions and a short initial rebalance delay (Kafka's is
/// 3 s), so a test's groups form quickly.
pub const BROKER_ARGS: &[&str] = &[
    "--offsets-topic-partitions",
    "5",
    "--group-initial-rebalance-delay-ms",
    "300",
];

/// How long creating a topic may take.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka settings to reach `bootstrap`.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000");
    c
}

/// Creates `topic` with [`PARTITIONS`] partitions (one replica) through librdkafka's admin
/// client.
pub async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(CREATE_TIMEOUT));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("create topic");
    assert_eq!(results, vec![Ok(topic.to_string())]);
}
