//! Kafka's topic semantics in a 3-broker cluster: a topic's replicas live on as many
//! brokers as its replication factor asks (and only there, checked in the data
//! directories), every broker answers Metadata for every partition, a broker that does
//! not lead a partition answers Produce and Fetch with NOT_LEADER_OR_FOLLOWER naming the
//! current leader (KIP-951), librdkafka and rill-client produce and consume through
//! it all; DeleteTopics removes the replicas from every broker and a topic created again
//! under the name starts empty; CreatePartitions adds partitions librdkafka uses; the
//! in-sync replicas shrink while a follower is SIGSTOPped past `replica_lag_time_max_ms`
//! and grow back after SIGCONT; a partition whose only replica died is answered without
//! a leader.

mod cluster_common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::MetadataRequest;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rill_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, Error, NewTopic, PartitionInfo, Producer,
    ProducerConfig, ProducerRecord, ResponseError, TopicPartition,
};
use rill_tests::raw::{record_batch, requests, RawConn};

use cluster_common::{
    hosted_replica_dir as replica_dir, partitions_of, replica_dirs, signal, wait_registered,
    wait_topic_leader as wait_leader, Cluster,
};

/// How long a cluster-wide change (a topic's leaders known everywhere, replicas removed
/// from every broker, the ISR changing) may take before the test fails: generous, a test
/// of the change happening, not of its speed (the test prints the figures).
const CHANGE_MAX: Duration = Duration::from_secs(20);
/// `replica_lag_time_max_ms` of the ISR test.
const LAG_MAX_MS: u64 = 1_500;

/// `topic`'s partitions as broker `id` describes them, once that broker names a leader for
/// each of the `count` partitions.
async fn wait_described(
    cluster: &Cluster,
    id: i32,
    topic: &str,
    count: usize,
) -> Vec<PartitionInfo> {
    let deadline = Instant::now() + CHANGE_MAX;
    loop {
        if let Some(partitions) = partitions_of(&cluster.broker(id).bootstrap(), topic).await {
            if partitions.len() == count && partitions.iter().all(|p| p.leader >= 0) {
                return partitions;
            }
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} names no leader for every partition of {topic}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that every broker describes `topic` alike (leaders, replicas) with `rf`
/// replicas per partition, and that exactly the assigned brokers have a replica
/// directory for each partition. Returns the description.
async fn check_placement(
    cluster: &Cluster,
    topic: &str,
    count: usize,
    rf: usize,
) -> Vec<PartitionInfo> {
    let reference = wait_described(cluster, 1, topic, count).await;
    for id in 2..=3 {
        let deadline = Instant::now() + CHANGE_MAX;
        loop {
            let seen = wait_described(cluster, id, topic, count).await;
            let same = seen
                .iter()
                .zip(&reference)
                .all(|(a, b)| a.leader == b.leader && a.replicas == b.replicas);
            if same {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker {id} describes {topic} as {seen:?}, broker 1 as {reference:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for p in &reference {
        assert_eq!(p.replicas.len(), rf, "{topic}-{}: {p:?}", p.partition);
        assert!(p.replicas.contains(&p.leader), "{p:?}");
        for id in 1..=3 {
            let dir = replica_dir(&cluster.broker(id).data_dir(), topic, p.partition);
            assert_eq!(
                dir.is_some(),
                p.replicas.contains(&id),
                "{topic}-{} replicas {:?}: broker {id} has {dir:?}",
                p.partition,
                p.replicas
            );
        }
    }
    let hosted: Vec<usize> = (1..=3)
        .map(|id| replica_dirs(&cluster.broker(id).data_dir(), topic).len())
        .collect();
    println!("{topic}: replica directories per broker {hosted:?}; partitions {reference:?}");
    reference
}

/// Produces `per_partition` records to each of `partitions` of `topic` with librdkafka
/// (acks=all); returns the values sent.
async fn rdkafka_produce(
    bootstrap: &str,
    topic: &str,
    partitions: std::ops::Range<i32>,
    per_partition: usize,
) -> BTreeSet<(i32, String)> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("rdkafka producer");
    let mut sends = Vec::new();
    let mut sent = BTreeSet::new();
    for partition in partitions {
        for n in 0..per_partition {
            let value = format!("{topic}-{partition}-rdk-{n}");
            sent.insert((partition, value.clone()));
            let producer = producer.clone();
            let topic = topic.to_string();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::<(), str>::to(&topic)
                            .payload(&value)
                            .partition(partition),
                        Duration::from_secs(20),
                    )
                    .await
                    .map(|d| (d.partition, d.offset))
                    .map_err(|(e, _)| format!("{value}: {e}"))
            });
        }
    }
    for result in futures::future::join_all(sends).await {
        result.unwrap_or_else(|e| panic!("librdkafka produce failed: {e}"));
    }
    sent
}

/// Consumes `partitions` of `topic` from the beginning with librdkafka until `expected`
/// records arrived (or CHANGE_MAX passed), and half a second more to catch any record
/// beyond them; returns (partition, value) of each.
fn rdkafka_consume(
    bootstrap: &str,
    topic: &str,
    partitions: std::ops::Range<i32>,
    expected: usize,
) -> BTreeSet<(i32, String)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("rdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("add");
    }
    consumer.assign(&assignment).expect("assign");
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + CHANGE_MAX;
    let mut extra_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if received.len() >= expected && extra_until.is_none() {
            extra_until = Some(now + Duration::from_millis(500));
        }
        if now >= deadline || extra_until.is_some_and(|t| now >= t) {
            break;
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
            received.insert((message.partition(), value));
        }
    }
    received
}

/// Produces `per_partition` records to each partition with rill-client (acks=all) and
/// reads them back with its consumer.
async fn rill_client_round_trip(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    per_partition: usize,
) {
    let producer = Producer::new(ProducerConfig::new(bootstrap)).expect("producer");
    let mut deliveries = Vec::new();
    let mut sent = BTreeSet::new();
    for partition in 0..partitions {
        for n in 0..per_partition {
            let value = format!("{topic}-{partition}-rill-{n}");
            sent.insert((partition, value.clone()));
            let record = ProducerRecord::new(topic, Bytes::from(value)).with_partition(partition);
            deliveries.push(producer.send(record).await.expect("send"));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("acknowledged");
    }
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap)).expect("consumer");
    let assignment: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(&assignment);
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + CHANGE_MAX;
    while !sent.is_subset(&received) {
        assert!(
            Instant::now() < deadline,
            "rill-client read back {} of {}",
            received.len(),
            sent.len()
        );
        if let Ok(Some(record)) =
            tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
        {
            let record = record.expect("record");
            let value =
                String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
            received.insert((record.partition, value));
        }
    }
}

/// RF=1 and RF=2 topics on 3 brokers, RF=4 refused, NOT_LEADER_OR_FOLLOWER with the
/// current leader from a broker without a replica, both clients, CreatePartitions, and
/// DeleteTopics followed by a new topic of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_live_on_their_assigned_brokers_only() {
    let cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    let bootstrap = cluster.bootstrap();
    let admin = Admin::new(ClientConfig::new(&bootstrap)).expect("admin");

    let refused = admin
        .create_topics(&[NewTopic {
            replication_factor: 4,
            ..NewTopic::new("rf4", 1)
        }])
        .await
        .expect_err("RF=4 with 3 brokers");
    assert!(
        matches!(
            refused,
            Error::Broker {
                code: ResponseError::InvalidReplicationFactor,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(replica_dirs(&cluster.broker(1).data_dir(), "rf4").is_empty());

    let started = Instant::now();
    admin
        .create_topics(&[
            NewTopic {
                replication_factor: 1,
                ..NewTopic::new("rf1", 3)
            },
            NewTopic {
                replication_factor: 2,
                ..NewTopic::new("rf2", 3)
            },
        ])
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.logs()));
    println!(
        "rf1 and rf2 created in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let rf1 = check_placement(&cluster, "rf1", 3, 1).await;
    check_placement(&cluster, "rf2", 3, 2).await;
    println!(
        "every broker names the same leaders {:.2} s after the request",
        started.elapsed().as_secs_f64()
    );

    // A broker without a replica of rf1-0 answers NOT_LEADER_OR_FOLLOWER naming the
    // leader and its endpoint (Produce v10, Fetch v12+).
    let leader = rf1[0].leader;
    let other = (1..=3).find(|id| *id != leader).expect("another broker");
    let mut conn = RawConn::connect(cluster.broker(other).addr());
    let produced = conn.call(
        10,
        &requests::produce("rf1", 0, record_batch(&[b"misdirected"], 1), -1),
    );
    let answer = &produced.responses[0].partition_responses[0];
    assert_eq!(answer.error_code, 6, "NOT_LEADER_OR_FOLLOWER: {answer:?}");
    assert_eq!(answer.current_leader.leader_id.0, leader, "{answer:?}");
    assert!(answer.current_leader.leader_epoch >= 0, "{answer:?}");
    let endpoint = produced
        .node_endpoints
        .iter()
        .find(|e| e.node_id.0 == leader)
        .unwrap_or_else(|| panic!("no endpoint of broker {leader}: {produced:?}"));
    assert_eq!(
        endpoint.port,
        i32::from(cluster.broker(leader).addr().port())
    );
    let fetched = conn.call(12, &requests::fetch("rf1", 0, 0, 0, 0));
    let answer = &fetched.responses[0].partitions[0];
    assert_eq!(answer.error_code, 6, "{answer:?}");
    assert_eq!(answer.current_leader.leader_id.0, leader, "{answer:?}");
    // Fetch v16 (librdkafka's) names topics by id and carries the leader's endpoint.
    let metadata = conn.call(
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(requests::topic_name("rf1")))
        ])),
    );
    let topic_id = metadata.topics[0].topic_id;
    let mut fetch = requests::fetch("rf1", 0, 0, 0, 0);
    fetch.topics[0].topic_id = topic_id;
    let fetched = conn.call(16, &fetch);
    let answer = &fetched.responses[0].partitions[0];
    assert_eq!(answer.error_code, 6, "{answer:?}");
    assert_eq!(answer.current_leader.leader_id.0, leader, "{answer:?}");
    assert!(
        fetched
            .node_endpoints
            .iter()
            .any(|e| e.node_id.0 == leader
                && e.port == i32::from(cluster.broker(leader).addr().port())),
        "Fetch v16 names the leader's endpoint: {fetched:?}"
    );

    // Both clients produce to and consume from every partition (each sent to its
    // leader after, at most, one NOT_LEADER_OR_FOLLOWER).
    for topic in ["rf1", "rf2"] {
        let sent = rdkafka_produce(&bootstrap, topic, 0..3, 20).await;
        let received = rdkafka_consume(&bootstrap, topic, 0..3, sent.len());
        assert_eq!(
            received, sent,
            "{topic}: librdkafka read back what it wrote"
        );
        rill_client_round_trip(&bootstrap, topic, 3, 20).await;
    }

    // CreatePartitions: two more partitions of rf2, on two brokers each, used by
    // librdkafka.
    admin
        .create_partitions("rf2", 5)
        .await
        .unwrap_or_else(|e| panic!("create partitions: {e}\n{}", cluster.logs()));
    check_placement(&cluster, "rf2", 5, 2).await;
    let sent = rdkafka_produce(&bootstrap, "rf2", 3..5, 20).await;
    let received = rdkafka_consume(&bootstrap, "rf2", 3..5, sent.len());
    assert_eq!(received, sent, "librdkafka uses the new partitions");

    // DeleteTopics: every broker removes its replicas; the name is free again and the
    // new topic starts empty.
    let old_dirs: Vec<_> = (1..=3)
        .flat_map(|id| replica_dirs(&cluster.broker(id).data_dir(), "rf2"))
        .collect();
    admin
        .delete_topics(&["rf2"])
        .await
        .unwrap_or_else(|e| panic!("delete: {e}\n{}", cluster.logs()));
    let deleted_at = Instant::now();
    loop {
        let left: Vec<_> = (1..=3)
            .flat_map(|id| replica_dirs(&cluster.broker(id).data_dir(), "rf2"))
            .collect();
        let mut listed = Vec::new();
        for id in 1..=3 {
            if partitions_of(&cluster.broker(id).bootstrap(), "rf2")
                .await
                .is_some()
            {
                listed.push(id);
            }
        }
        if left.is_empty() && listed.is_empty() {
            break;
        }
        assert!(
            deleted_at.elapsed() < CHANGE_MAX,
            "after DeleteTopics, replicas left: {left:?}, brokers still listing it: {listed:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} replicas of rf2 removed from every broker within {:.2} s",
        old_dirs.len(),
        deleted_at.elapsed().as_secs_f64()
    );
    admin
        .create_topics(&[NewTopic {
            replication_factor: 2,
            ..NewTopic::new("rf2", 2)
        }])
        .await
        .unwrap_or_else(|e| panic!("create again: {e}\n{}", cluster.logs()));
    check_placement(&cluster, "rf2", 2, 2).await;
    let new_dirs: Vec<_> = (1..=3)
        .flat_map(|id| replica_dirs(&cluster.broker(id).data_dir(), "rf2"))
        .collect();
    assert!(
        new_dirs.iter().all(|d| !old_dirs.contains(d)),
        "a new topic id names new directories: {new_dirs:?} vs {old_dirs:?}"
    );
    let sent = rdkafka_produce(&bootstrap, "rf2", 0..2, 3).await;
    let received = rdkafka_consume(&bootstrap, "rf2", 0..2, sent.len());
    assert_eq!(
        received, sent,
        "the recreated topic holds only the new records"
    );

    // The only replica of rf1-0 dies: the other brokers stop naming it as the leader
    // (LEADER_NOT_AVAILABLE) instead of sending clients to a dead broker.
    let mut cluster = cluster;
    let dead = rf1[0].leader;
    cluster.brokers[(dead - 1) as usize].kill();
    let killed_at = Instant::now();
    for id in (1..=3).filter(|id| *id != dead) {
        loop {
            let partitions = partitions_of(&cluster.broker(id).bootstrap(), "rf1").await;
            if partitions.as_ref().is_some_and(|p| p[0].leader == -1) {
                break;
            }
            assert!(
                killed_at.elapsed() < CHANGE_MAX,
                "broker {id} still names dead broker {dead} as rf1-0's leader: {partitions:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "broker {dead}, rf1-0's only replica, killed: no longer named its leader after {:.2} s",
        killed_at.elapsed().as_secs_f64()
    );
}

/// With `replica_lag_time_max_ms` = 1.5 s, a SIGSTOPped follower leaves the ISR of an
/// RF=3 partition (on every live broker's Metadata, and in `rill cluster` as
/// under-replicated) and comes back after SIGCONT; acks=all keeps working with 2 of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isr_shrinks_while_a_follower_is_stopped_and_grows_back() {
    let lag = LAG_MAX_MS.to_string();
    let cluster = Cluster::start_with(&["--replica-lag-time-max-ms", &lag]);
    wait_registered(&cluster, 3).await;
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new("isr", 1)
        }])
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.logs()));
    let leader = wait_leader(&cluster, "isr", 0).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let live: Vec<i32> = (1..=3).filter(|id| *id != follower).collect();

    // Waits until every broker in `ids` reports an ISR for which `wanted` holds.
    let wait_isr = |ids: Vec<i32>, wanted: fn(&[i32], i32) -> bool, what: &'static str| {
        let cluster = &cluster;
        async move {
            let started = Instant::now();
            for id in ids {
                loop {
                    let isr = partitions_of(&cluster.broker(id).bootstrap(), "isr")
                        .await
                        .and_then(|p| p.first().map(|p| p.isr.clone()));
                    if isr.as_deref().is_some_and(|isr| wanted(isr, follower)) {
                        break;
                    }
                    assert!(
                        started.elapsed() < CHANGE_MAX,
                        "broker {id}: ISR {isr:?} is not {what} after {CHANGE_MAX:?}\n{}",
                        cluster.logs()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    wait_isr(vec![1, 2, 3], |isr, _| isr.len() == 3, "all three").await;

    signal(cluster.broker(follower), "-STOP");
    let stopped_at = Instant::now();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap_without(&[follower])))
        .expect("producer");
    for n in 0..20 {
        let record =
            ProducerRecord::new("isr", Bytes::from(format!("while-stopped-{n}"))).with_partition(0);
        producer
            .send(record)
            .await
            .expect("send")
            .await
            .unwrap_or_else(|e| panic!("acks=all with 2 of 3: {e}"));
    }
    wait_isr(
        live.clone(),
        |isr, follower| isr.len() == 2 && !isr.contains(&follower),
        "without the stopped follower",
    )
    .await;
    let shrunk = stopped_at.elapsed();
    let output = std::process::Command::new(rill_tests::rill_bin())
        .args(["-b", &cluster.bootstrap_without(&[follower]), "cluster"])
        .output()
        .expect("run rill cluster");
    let shown = String::from_utf8_lossy(&output.stdout);
    println!("rill cluster:\n{shown}");
    assert!(
        shown.contains("under-replicated 1")
            && shown.contains(&format!("out of sync [{follower}]"))
            && shown.contains(&format!("broker {follower}: log end offsets unavailable")),
        "{shown}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    signal(cluster.broker(follower), "-CONT");
    let continued_at = Instant::now();
    wait_isr(vec![1, 2, 3], |isr, _| isr.len() == 3, "all three again").await;
    let grown = continued_at.elapsed();
    // Caught up: `rill cluster` measures every follower's lag (ListOffsets from each
    // replica) as none.
    let deadline = Instant::now() + CHANGE_MAX;
    loop {
        let output = std::process::Command::new(rill_tests::rill_bin())
            .args(["-b", &cluster.bootstrap(), "cluster"])
            .output()
            .expect("run rill cluster");
        let shown = String::from_utf8_lossy(&output.stdout).to_string();
        let caught_up = (1..=3)
            .filter(|id| *id != leader)
            .all(|id| shown.contains(&format!("follower lag  broker {id}  0 offsets")));
        if caught_up {
            println!("rill cluster after SIGCONT:\n{shown}");
            break;
        }
        assert!(Instant::now() < deadline, "followers still lag:\n{shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "follower {follower} of leader {leader}: out of the ISR {:.2} s after SIGSTOP \
         (lag bound {LAG_MAX_MS} ms), back {:.2} s after SIGCONT",
        shrunk.as_secs_f64(),
        grown.as_secs_f64()
    );
}
