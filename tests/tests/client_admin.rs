//! rill-client's Admin against a real rilld: topics, partitions, configs, cluster, and
//! typed errors for the failure cases.

use rill_client::{Admin, ClientConfig, Error, NewTopic, ResponseError};
use rill_tests::RilldProcess;

fn broker_error(result: Result<(), Error>) -> ResponseError {
    match result {
        Err(Error::Broker { code, .. }) => code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_manages_topics_partitions_and_configs_with_typed_errors() {
    let broker = RilldProcess::start();
    let admin = Admin::new(ClientConfig::new(&broker.bootstrap())).expect("admin");

    // validate_only creates nothing.
    admin
        .validate_create_topics(&[NewTopic::new("orders", 2)])
        .await
        .expect("valid");
    assert!(!admin
        .list_topics()
        .await
        .unwrap()
        .contains(&"orders".to_owned()));

    admin
        .create_topics(&[
            NewTopic::new("orders", 2).with_config("retention.ms", "3600000"),
            NewTopic::new("audit", 1),
        ])
        .await
        .expect("create");
    assert_eq!(admin.list_topics().await.unwrap(), vec!["audit", "orders"]);
    assert_eq!(
        broker_error(admin.create_topics(&[NewTopic::new("orders", 2)]).await),
        ResponseError::TopicAlreadyExists
    );

    let described = admin.describe_topics(&["orders"]).await.unwrap();
    assert_eq!(described[0].partitions.len(), 2);
    assert!(described[0].partitions.iter().all(|p| p.leader >= 0));
    assert!(matches!(
        admin.describe_topics(&["nope"]).await,
        Err(Error::UnknownTopic(_))
    ));

    let configs = admin.describe_topic_configs("orders").await.unwrap();
    let retention = configs
        .iter()
        .find(|c| c.name == "retention.ms")
        .expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert!(!retention.is_default);

    admin.create_partitions("orders", 5).await.expect("grow");
    assert_eq!(
        admin.describe_topics(&["orders"]).await.unwrap()[0]
            .partitions
            .len(),
        5
    );
    assert_eq!(
        broker_error(admin.create_partitions("orders", 3).await),
        ResponseError::InvalidPartitions
    );

    let cluster = admin.describe_cluster().await.unwrap();
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(cluster.brokers[0].port, i32::from(broker.addr().port()));
    assert!(!cluster.cluster_id.is_empty());

    admin.delete_topics(&["audit"]).await.expect("delete");
    assert_eq!(admin.list_topics().await.unwrap(), vec!["orders"]);
    assert_eq!(
        broker_error(admin.delete_topics(&["audit"]).await),
        ResponseError::UnknownTopicOrPartition
    );
}
