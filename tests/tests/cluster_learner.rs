//! A broker outside `--controller-voters` (KRaft: an observer) joins a 3-voter cluster
//! as a learner of the metadata group: it is registered, hosts replicas of new topics,
//! answers Metadata and DescribeCluster for the whole cluster, never becomes the
//! controller, catches up again after a SIGKILL — on its data directory and on an
//! empty one — and stays a learner when every voter restarts.

mod cluster_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use kafka_protocol::messages::{DescribeClusterRequest, MetadataRequest};
use rill_client::{Admin, ClientConfig, NewTopic, Producer, ProducerConfig, ProducerRecord};
use rill_tests::history::{replicas_identical, Duplicates, History};
use rill_tests::raw::{read_all, RawConn};

const LEARNER_TOPIC: &str = "observed";
const LEARNER_PARTITIONS: i32 = 4;
/// Bound on every wait of this test (a busy 2-core machine).
const WAIT_MAX: Duration = Duration::from_secs(30);

/// Produces `count` acks=all records spread over the topic's partitions into `history`.
async fn produce_spread(bootstrap: &str, history: &mut History, phase: &str, count: usize) {
    let producer = Producer::new(ProducerConfig::new(bootstrap)).expect("producer");
    let mut pending = Vec::new();
    for n in 0..count {
        let value = Bytes::from(format!("{phase}-{n}"));
        history.record_attempt(value.clone());
        let record = ProducerRecord::new(LEARNER_TOPIC, value.clone())
            .with_partition(n as i32 % LEARNER_PARTITIONS);
        match producer.send(record).await {
            Ok(delivery) => pending.push((value, delivery)),
            Err(_) => history.record_failure(value),
        }
    }
    for (value, delivery) in pending {
        match delivery.await {
            Ok(meta) => history.record_ack(meta.partition, meta.offset, value),
            Err(_) => history.record_failure(value),
        }
    }
}

/// What one broker answers about the cluster.
struct BrokerView {
    /// Broker ids in its Metadata answer, sorted.
    metadata_brokers: Vec<i32>,
    /// Broker ids in its DescribeCluster answer, sorted.
    described_brokers: Vec<i32>,
    /// The topic's partitions without error: (leader, replicas), sorted.
    partitions: Vec<(i32, Vec<i32>)>,
}

/// Metadata (v12, all topics) and DescribeCluster asked of broker `id` alone.
fn ask_broker(cluster: &Cluster, id: i32) -> BrokerView {
    let mut conn = RawConn::connect(cluster.broker(id).addr());
    // Null topics: all of them.
    let metadata = conn.call::<MetadataRequest>(12, &MetadataRequest::default().with_topics(None));
    let mut metadata_brokers: Vec<i32> = metadata.brokers.iter().map(|b| b.node_id.0).collect();
    metadata_brokers.sort_unstable();
    let mut partitions: Vec<(i32, Vec<i32>)> = metadata
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.as_str() == LEARNER_TOPIC))
        .flat_map(|t| t.partitions.iter())
        .filter(|p| p.error_code == 0)
        .map(|p| {
            (
                p.leader_id.0,
                p.replica_nodes.iter().map(|r| r.0).collect::<Vec<i32>>(),
            )
        })
        .collect();
    partitions.sort();
    let described = conn.call::<DescribeClusterRequest>(0, &DescribeClusterRequest::default());
    let mut described_brokers: Vec<i32> = described.brokers.iter().map(|b| b.broker_id.0).collect();
    described_brokers.sort_unstable();
    BrokerView {
        metadata_brokers,
        described_brokers,
        partitions,
    }
}

/// The replicas of each partition of the topic, per Metadata.
async fn assignment(cluster: &Cluster) -> Vec<Vec<i32>> {
    let partitions = partitions_of(&cluster.bootstrap(), LEARNER_TOPIC)
        .await
        .expect("topic described");
    partitions.into_iter().map(|p| p.replicas).collect()
}

/// Waits until every partition's replicas (on the brokers `replicas` names) are
/// byte-identical; returns how long it took.
async fn wait_converged(cluster: &Cluster, replicas: &[Vec<i32>]) -> Duration {
    let started = Instant::now();
    loop {
        let differences: Vec<String> = replicas
            .iter()
            .enumerate()
            .filter_map(|(partition, brokers)| {
                let dirs: Vec<_> = brokers
                    .iter()
                    .map(|b| {
                        replica_dir(
                            &cluster.broker(*b).data_dir(),
                            LEARNER_TOPIC,
                            partition as i32,
                        )
                    })
                    .collect();
                replicas_identical(&dirs)
                    .err()
                    .map(|e| format!("partition {partition}: {e}"))
            })
            .collect();
        if differences.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "replicas did not converge within {WAIT_MAX:?}: {differences:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until broker `id` answers Metadata with all four brokers, the topic with a
/// leader for every partition, and DescribeCluster with all four brokers.
async fn wait_broker_knows_everything(cluster: &Cluster, id: i32) -> Duration {
    let started = Instant::now();
    loop {
        let BrokerView {
            metadata_brokers,
            described_brokers,
            partitions,
        } = ask_broker(cluster, id);
        let complete = metadata_brokers == [1, 2, 3, 4]
            && described_brokers == [1, 2, 3, 4]
            && partitions.len() == LEARNER_PARTITIONS as usize
            && partitions.iter().all(|(leader, _)| *leader >= 0);
        if complete {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT_MAX,
            "broker {id} answers Metadata brokers {metadata_brokers:?}, DescribeCluster \
             brokers {described_brokers:?}, partitions {partitions:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until broker `id`'s Metadata lists `topic` (it applied the topic's creation).
async fn wait_topic_known(cluster: &Cluster, id: i32, topic: &str) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let mut conn = RawConn::connect(cluster.broker(id).addr());
        let metadata =
            conn.call::<MetadataRequest>(12, &MetadataRequest::default().with_topics(None));
        let known = metadata
            .topics
            .iter()
            .any(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic));
        if known {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} never learned topic {topic}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every partition from its leader into `history`.
async fn read_back_all(cluster: &Cluster, history: &mut History) {
    let mut reads: BTreeMap<i32, Vec<(i64, Bytes)>> = BTreeMap::new();
    for partition in 0..LEARNER_PARTITIONS {
        let leader = wait_topic_leader(cluster, LEARNER_TOPIC, partition).await;
        let mut conn = RawConn::connect(cluster.broker(leader).addr());
        reads.insert(
            partition,
            read_all(&mut conn, LEARNER_TOPIC, partition)
                .into_iter()
                .map(|(o, v)| (o, Bytes::from(v)))
                .collect(),
        );
    }
    history.record_reads(&reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outside_the_controller_voters_joins_as_a_learner_and_hosts_replicas() {
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let learner = cluster.start_non_voter(&[]);
    assert_eq!(learner, 4);
    wait_registered(&cluster, 4).await;
    println!(
        "4 brokers registered after {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // RF=3 over 4 brokers: placement gives broker 4 replicas like any other.
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(LEARNER_TOPIC, LEARNER_PARTITIONS)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
    let replicas = assignment(&cluster).await;
    println!("assignment: {replicas:?}");
    let on_learner = replicas.iter().filter(|r| r.contains(&learner)).count();
    assert!(
        on_learner >= 2,
        "placement put {on_learner} of {LEARNER_PARTITIONS} partitions on broker 4: {replicas:?}"
    );
    for (partition, brokers) in replicas.iter().enumerate() {
        if brokers.contains(&learner) {
            let deadline = Instant::now() + WAIT_MAX;
            while hosted_replica_dir(
                &cluster.broker(learner).data_dir(),
                LEARNER_TOPIC,
                partition as i32,
            )
            .is_none()
            {
                assert!(
                    Instant::now() < deadline,
                    "broker 4 never opened partition {partition}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Broker 4 alone knows the whole cluster (it applied the metadata log).
    let took = wait_broker_knows_everything(&cluster, learner).await;
    println!(
        "broker 4 answered Metadata and DescribeCluster completely after {:.2} s more",
        took.as_secs_f64()
    );

    let mut history = History::default();
    produce_spread(&cluster.bootstrap(), &mut history, "before", 400).await;

    // SIGKILL the learner; produce while it is down; restart it on its data directory.
    cluster.brokers[3].kill();
    produce_spread(&cluster.bootstrap(), &mut history, "down", 400).await;
    cluster.brokers[3].restart();
    produce_spread(&cluster.bootstrap(), &mut history, "restarted", 400).await;
    let took = wait_converged(&cluster, &replicas).await;
    println!(
        "broker 4 restarted: replicas identical {:.2} s after the last produce",
        took.as_secs_f64()
    );

    // Again on an empty data directory: it catches the metadata log up from the
    // controller, reopens its replicas, and those catch up from their leaders.
    cluster.brokers[3].kill();
    std::fs::remove_dir_all(cluster.broker(learner).data_dir()).expect("wipe broker 4");
    produce_spread(&cluster.bootstrap(), &mut history, "wiped", 400).await;
    cluster.brokers[3].restart();
    produce_spread(&cluster.bootstrap(), &mut history, "rejoined", 400).await;
    wait_broker_knows_everything(&cluster, learner).await;
    let took = wait_converged(&cluster, &replicas).await;
    println!(
        "broker 4 wiped and restarted: replicas identical {:.2} s after the last produce",
        took.as_secs_f64()
    );

    // Every voter SIGKILLed and restarted: the metadata group's membership comes back
    // from the membership entry in their logs (no controller needs to add broker 4
    // again), and broker 4 still follows the metadata log: it learns a topic created
    // afterwards.
    let learner_adds = |cluster: &Cluster| {
        cluster
            .logs()
            .matches("adding broker as a learner of the metadata group")
            .count()
    };
    let adds_before = learner_adds(&cluster);
    for voter in &mut cluster.brokers[..3] {
        voter.kill();
    }
    for voter in &mut cluster.brokers[..3] {
        voter.restart();
    }
    wait_registered(&cluster, 4).await;
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    let later_topic = "observed-later";
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(later_topic, 1)
        }])
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create topic after the voters' restart: {e}\n{}",
                cluster.logs()
            )
        });
    wait_topic_known(&cluster, learner, later_topic).await;
    assert_eq!(
        learner_adds(&cluster),
        adds_before,
        "broker 4 had to be added as a learner again after the voters restarted\n{}",
        cluster.logs()
    );
    produce_spread(&cluster.bootstrap(), &mut history, "voters-restarted", 200).await;
    wait_converged(&cluster, &replicas).await;

    // The learner never took part in the controller quorum.
    let described = admin.describe_cluster().await.expect("describe cluster");
    assert!(
        (1..=3).contains(&described.controller_id),
        "controller is broker {}",
        described.controller_id
    );
    let logs = cluster.logs();
    assert!(
        logs.contains("adding broker as a learner of the metadata group"),
        "no controller added broker 4 as a learner\n{logs}"
    );

    read_back_all(&cluster, &mut history).await;
    let report = history.check(Duplicates::Allowed);
    println!("{report}");
    report.assert_ok();
    for broker in &mut cluster.brokers {
        broker.kill();
    }
    for (partition, brokers) in replicas.iter().enumerate() {
        let dirs: Vec<_> = brokers
            .iter()
            .map(|b| {
                replica_dir(
                    &cluster.broker(*b).data_dir(),
                    LEARNER_TOPIC,
                    partition as i32,
                )
            })
            .collect();
        if let Err(e) = replicas_identical(&dirs) {
            panic!("partition {partition}: replicas differ after the kill: {e}");
        }
    }
    println!("whole test: {:.2} s", started.elapsed().as_secs_f64());
}

/// With a checkpoint of the metadata image every 5 records: broker 4 (a learner) is
/// SIGKILLed and its data directory deleted, and the metadata log is trimmed on every
/// voter while it is gone. Restarted, it is reset to the leader's later log start (the
/// reset carries the membership in effect there), rebuilds its image from the
/// checkpoint, reopens its replicas, and they catch up byte-identical. Then every voter
/// restarts on its trimmed log: broker 4 stays reachable, a learner, and in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_learner_catches_up_from_a_checkpoint_of_a_trimmed_metadata_log() {
    let started = Instant::now();
    let flags = ["--metadata-checkpoint-records", "5"];
    let mut cluster = Cluster::start_with(&flags);
    let learner = cluster.start_non_voter(&flags);
    wait_registered(&cluster, 4).await;
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(LEARNER_TOPIC, LEARNER_PARTITIONS)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
    let replicas = assignment(&cluster).await;
    assert!(
        replicas.iter().any(|r| r.contains(&learner)),
        "no replica on broker 4: {replicas:?}"
    );
    let mut history = History::default();
    produce_spread(&cluster.bootstrap(), &mut history, "before", 200).await;

    cluster.brokers[3].kill();
    std::fs::remove_dir_all(cluster.broker(learner).data_dir()).expect("wipe broker 4");
    churn_until_trimmed(&cluster, &admin, &[0, 1, 2], "churn").await;
    produce_spread(&cluster.bootstrap(), &mut history, "wiped", 200).await;
    cluster.brokers[3].restart();
    wait_broker_knows_everything(&cluster, learner).await;
    let took = wait_converged(&cluster, &replicas).await;
    println!(
        "wiped learner behind a trimmed metadata log: replicas identical {:.2} s after it knew the cluster",
        took.as_secs_f64()
    );
    assert!(
        metadata_log_start(cluster.broker(learner)) > 0,
        "broker 4's metadata log starts at 0: it was not reset to the trimmed log's start\n{}",
        cluster.logs()
    );

    // Every voter SIGKILLed and restarted on its trimmed log: broker 4's registration
    // and its membership entry are below the log start, so each voter learns broker
    // 4's address from the checkpoint, and the controller adds it as a learner again.
    for voter in &mut cluster.brokers[..3] {
        voter.kill();
    }
    for voter in &mut cluster.brokers[..3] {
        voter.restart();
    }
    wait_registered(&cluster, 4).await;
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    churn_until_trimmed(&cluster, &admin, &[0, 1, 2, 3], "after-restart").await;
    let later_topic = "observed-after-trim";
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(later_topic, 1)
        }])
        .await
        .unwrap_or_else(|e| panic!("create {later_topic}: {e}\n{}", cluster.logs()));
    wait_topic_known(&cluster, learner, later_topic).await;
    println!(
        "controller additions of broker 4 as a learner: {}",
        cluster
            .logs()
            .matches("adding broker as a learner of the metadata group")
            .count()
    );
    produce_spread(&cluster.bootstrap(), &mut history, "voters-restarted", 200).await;
    wait_broker_knows_everything(&cluster, learner).await;
    let took = wait_converged(&cluster, &replicas).await;
    println!(
        "voters restarted on trimmed logs: replicas identical {:.2} s after the last produce",
        took.as_secs_f64()
    );

    read_back_all(&cluster, &mut history).await;
    let report = history.check(Duplicates::Allowed);
    println!("{report}");
    report.assert_ok();
    for broker in &mut cluster.brokers {
        broker.kill();
    }
    println!("whole test: {:.2} s", started.elapsed().as_secs_f64());
}
