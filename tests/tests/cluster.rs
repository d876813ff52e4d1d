//! Three `rilld` processes on loopback form a cluster (`--controller-voters`): a topic
//! created through the controller is replicated on all three; an acks=all producer
//! (rill-client) keeps producing while the leader of a partition is SIGKILLed; a new
//! leader takes over, the killed broker restarts and catches up; the history checker
//! finds no acknowledged record lost and no offset holding two records, and every
//! replica's log files are byte-identical. The producers across the kill (rill-client
//! and librdkafka) are idempotent: no record twice, each partition in send order.
//!
//! `RILL_CLUSTER_ROUNDS=N` runs N kill rounds (default 10).

mod cluster_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use rill_client::{Admin, ClientConfig, NewTopic, Producer, ProducerConfig, ProducerRecord};
use rill_tests::history::{Duplicates, History};
use rill_tests::raw::{read_all, RawConn};
use rill_tests::RilldProcess;

const ROUNDS_DEFAULT: u32 = 10;
/// Longest a partition may go without a leader after its leader is killed before the
/// test fails. Detection is the election timeout (at most 20 ticks of 100 ms); electing
/// and reporting the new leader takes well under 2 s more on a quiet machine (the test
/// prints the figures: about 1.4 s from kill to new leader). The bound leaves room for
/// a loaded CI machine: it catches a failover that does not happen, not a slow one.
const FAILOVER_MAX: Duration = Duration::from_secs(10);
/// Records each round produces before and after its kill.
const RECORDS_PER_PHASE: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_leader_kills_and_replicas_converge() {
    let rounds: u32 = env_number("RILL_CLUSTER_ROUNDS").unwrap_or(ROUNDS_DEFAULT);
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;

    let mut history = History::default();
    let mut failovers = Vec::new();
    for round in 0..rounds {
        let bootstrap = cluster.bootstrap();
        let producer = Producer::new(ProducerConfig::new(&bootstrap)).expect("producer");
        produce(&producer, &mut history, round, "before", RECORDS_PER_PHASE).await;
        let leader = leader_of(&bootstrap, 0)
            .await
            .unwrap_or_else(|| panic!("no leader of partition 0\n{}", cluster.logs()));
        // A producer runs across the kill: some sends are in flight when it lands.
        let live = produce_for(
            Producer::new(ProducerConfig::new(&bootstrap)).expect("producer"),
            round,
            Duration::from_millis(1500),
        );
        let rdkafka_live = rdkafka_produce_with(
            &bootstrap,
            round,
            Duration::from_millis(1500),
            &[("enable.idempotence", "true")],
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = &mut cluster.brokers[(leader - 1) as usize];
        killed.kill();
        let killed_at = Instant::now();
        // Failover: the survivors' Metadata names a new leader.
        let failover = loop {
            if let Some(l) = leader_of(&cluster.bootstrap(), 0).await {
                if l != leader {
                    break killed_at.elapsed();
                }
            }
            assert!(
                killed_at.elapsed() < FAILOVER_MAX,
                "round {round}: no new leader of partition 0 within {FAILOVER_MAX:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        failovers.push(failover);
        produce(&producer, &mut history, round, "after", RECORDS_PER_PHASE).await;
        record_with_order(&mut history, live.await.expect("producer task"));
        record_with_order(
            &mut history,
            rdkafka_live.await.expect("rdkafka producer task"),
        );
        let bootstrap = cluster.bootstrap();
        let new_leader = leader_of(&bootstrap, 0).await;
        assert!(
            new_leader.is_some_and(|l| l != leader),
            "round {round}: partition 0 has no new leader ({new_leader:?}) {:.1} s after \
             broker {leader} was killed\n{}",
            killed_at.elapsed().as_secs_f64(),
            cluster.logs()
        );
        println!(
            "round {round}: broker {leader} killed; new leader {new_leader:?} named after \
             {:.2} s; {:.2} s to produce the next {RECORDS_PER_PHASE} records",
            failover.as_secs_f64(),
            killed_at.elapsed().as_secs_f64()
        );
        drop(producer);
        cluster.brokers[(leader - 1) as usize].restart();
    }

    failovers.sort();
    println!(
        "failover (kill to a new leader in Metadata) over {rounds} rounds: median {:.2} s, max {:.2} s",
        failovers[failovers.len() / 2].as_secs_f64(),
        failovers[failovers.len() - 1].as_secs_f64()
    );

    // Every partition read back from its leader: nothing acknowledged is lost, no
    // offset holds two records, and — both producers being idempotent (rill-client by
    // default, librdkafka with enable.idempotence) — no record was written twice and
    // each producer's records of a partition are in the order it sent them.
    read_back(&cluster, &mut history).await;
    let report = history.check(Duplicates::Forbidden);
    println!("{report}");
    report.assert_ok();

    // Let the restarted brokers catch up, stop everyone, and compare the files.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill_all(&mut cluster);
    assert_replicas_identical(&cluster);
}

/// acks=all is answered only once a majority holds the record: with both followers
/// frozen (SIGSTOP), the leader must not acknowledge; once they thaw, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_waits_for_a_majority() {
    let cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let leader = wait_leader(&cluster, 0).await;
    let leader_bootstrap = cluster.brokers[(leader - 1) as usize].bootstrap();
    let producer = Producer::new(ProducerConfig::new(&leader_bootstrap)).expect("producer");
    let first = producer
        .send(ProducerRecord::new(TOPIC, Bytes::from_static(b"first")).with_partition(0))
        .await
        .expect("send")
        .await
        .expect("acknowledged with every replica up");

    let followers: Vec<&RilldProcess> = (1..=3)
        .filter(|id| *id != leader)
        .map(|id| &cluster.brokers[(id - 1) as usize])
        .collect();
    for f in &followers {
        signal(f, "-STOP");
    }
    let delivery = producer
        .send(ProducerRecord::new(TOPIC, Bytes::from_static(b"frozen")).with_partition(0))
        .await
        .expect("send");
    let early = tokio::time::timeout(Duration::from_secs(2), delivery).await;
    for f in &followers {
        signal(f, "-CONT");
    }
    assert!(
        early.is_err(),
        "acks=all answered while no follower could hold the record: {early:?}"
    );
    let second = producer
        .send(ProducerRecord::new(TOPIC, Bytes::from_static(b"thawed")).with_partition(0))
        .await
        .expect("send")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not acknowledged after the followers thawed: {e}\n{}",
                cluster.logs()
            )
        });
    assert!(second.offset > first.offset);
}

/// The controller's broker is killed: the other two elect a new controller, which
/// creates a topic (replicas on all three, the dead one included) that takes acks=all
/// records meanwhile; the killed broker restarts and hosts the topic too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_while_a_controller_voter_is_down() {
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    let controller = Admin::new(ClientConfig::new(&cluster.bootstrap()))
        .expect("admin")
        .describe_cluster()
        .await
        .expect("describe cluster")
        .controller_id;
    cluster.brokers[(controller - 1) as usize].kill();
    let killed_at = Instant::now();

    // The survivors elect a new controller (clients retry NOT_CONTROLLER meanwhile).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
        match admin
            .create_topics(&[NewTopic {
                replication_factor: 3,
                ..NewTopic::new(TOPIC, PARTITIONS)
            }])
            .await
        {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no topic creation within 20 s of losing controller {controller}: {e}\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "controller {controller} killed; topic created {:.2} s later",
        killed_at.elapsed().as_secs_f64()
    );
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    let mut history = History::default();
    produce(&producer, &mut history, 0, "degraded", 100).await;
    println!(
        "100 records with a voter down by {:.2} s",
        killed_at.elapsed().as_secs_f64()
    );
    cluster.brokers[(controller - 1) as usize].restart();
    produce(&producer, &mut history, 0, "healed", 100).await;
    println!(
        "100 more after its restart by {:.2} s",
        killed_at.elapsed().as_secs_f64()
    );
    read_back(&cluster, &mut history).await;
    let report = history.check(Duplicates::Forbidden);
    println!("{report}");
    report.assert_ok();
    assert_eq!(report.acks, 200, "every record acknowledged");
}

/// Sends each record acks=all, one at a time, and records the attempt and its
/// acknowledgement in `history`; a failed send fails the test.
async fn send_acknowledged(
    producer: &Producer,
    history: &mut History,
    records: impl Iterator<Item = ProducerRecord>,
    cluster: &Cluster,
) {
    for record in records {
        let value = record.value.clone().expect("value");
        history.record_attempt(value.clone());
        let meta = producer
            .send(record)
            .await
            .expect("send")
            .await
            .unwrap_or_else(|e| panic!("acks=all not acknowledged: {e}\n{}", cluster.logs()));
        history.record_ack(meta.partition, meta.offset, value);
    }
}

/// Idle groups go quiet (Raft quiescence: no ticks and no heartbeats, so thousands of
/// idle partitions cost a broker next to nothing). A quiet group whose leader's broker
/// dies never hears from it again; the transport's silence detector (keepalives stop)
/// wakes it, and the survivors elect a new leader that takes acks=all writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_groups_elect_a_new_leader_when_the_leaders_broker_dies() {
    const QUIET_TOPIC: &str = "quiet";
    const QUIET_PARTITIONS: i32 = 6;
    let started = Instant::now();
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    println!(
        "3 brokers registered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(QUIET_TOPIC, QUIET_PARTITIONS)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    let mut history = History::default();
    let send_each = |phase: &'static str| {
        (0..QUIET_PARTITIONS).map(move |p| {
            ProducerRecord::new(QUIET_TOPIC, Bytes::from(format!("{phase}-{p}"))).with_partition(p)
        })
    };
    send_acknowledged(&producer, &mut history, send_each("before"), &cluster).await;

    println!(
        "topic created and written by {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Every group (the topic's and the metadata group) goes quiet on every broker.
    let groups = QUIET_PARTITIONS as u64 + 1;
    let idle_from = Instant::now();
    let deadline = idle_from + Duration::from_secs(30);
    while !cluster
        .brokers
        .iter()
        .all(|b| b.metric("rill_raft_quiet_groups") == groups)
    {
        assert!(
            Instant::now() < deadline,
            "groups not quiet within 30 s: {:?}\n{}",
            cluster
                .brokers
                .iter()
                .map(|b| b.metric("rill_raft_quiet_groups"))
                .collect::<Vec<_>>(),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "all {groups} groups quiet on every broker {:.2} s after the last write",
        idle_from.elapsed().as_secs_f64()
    );

    // Kill the broker leading the most partitions.
    let topic = admin
        .describe_topics(&[QUIET_TOPIC])
        .await
        .expect("describe")
        .remove(0);
    let mut led = [0usize; 4];
    for p in &topic.partitions {
        led[p.leader.clamp(0, 3) as usize] += 1;
    }
    let victim = (1..=3).max_by_key(|id| led[*id]).expect("a broker");
    cluster.brokers[victim - 1].kill();
    let killed_at = Instant::now();
    let deadline = killed_at + Duration::from_secs(30);
    loop {
        let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
        let leaders: Vec<i32> = match admin.describe_topics(&[QUIET_TOPIC]).await {
            Ok(mut topics) => topics
                .remove(0)
                .partitions
                .iter()
                .map(|p| p.leader)
                .collect(),
            Err(_) => Vec::new(),
        };
        if leaders.len() == QUIET_PARTITIONS as usize
            && leaders.iter().all(|l| *l > 0 && *l as usize != victim)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quiet partitions of broker {victim} ({} of {QUIET_PARTITIONS}) got no new leader \
             within 30 s: {leaders:?}\n{}",
            led[victim],
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "broker {victim} (leader of {} quiet partitions) killed; all led by survivors {:.2} s later",
        led[victim],
        killed_at.elapsed().as_secs_f64()
    );

    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    send_acknowledged(&producer, &mut history, send_each("after"), &cluster).await;
    let mut reads: BTreeMap<i32, Vec<(i64, Bytes)>> = BTreeMap::new();
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    let topic = admin
        .describe_topics(&[QUIET_TOPIC])
        .await
        .expect("describe")
        .remove(0);
    for p in &topic.partitions {
        let mut conn = RawConn::connect(cluster.brokers[(p.leader - 1) as usize].addr());
        reads.insert(
            p.partition,
            read_all(&mut conn, QUIET_TOPIC, p.partition)
                .into_iter()
                .map(|(o, v)| (o, Bytes::from(v)))
                .collect(),
        );
    }
    history.record_reads(&reads);
    let report = history.check(Duplicates::Forbidden);
    println!("{report}");
    report.assert_ok();
    assert_eq!(report.acks, 2 * QUIET_PARTITIONS as usize);
}

/// Each partition of `topic` as (leader, replicas) through any live broker; empty
/// while Metadata cannot be had.
async fn placement(cluster: &Cluster, topic: &str) -> Vec<(i32, Vec<i32>)> {
    let Ok(admin) = Admin::new(ClientConfig::new(&cluster.bootstrap())) else {
        return Vec::new();
    };
    match admin.describe_topics(&[topic]).await {
        Ok(mut topics) if !topics.is_empty() => topics
            .remove(0)
            .partitions
            .into_iter()
            .map(|p| (p.leader, p.replicas))
            .collect(),
        _ => Vec::new(),
    }
}

/// Creates an RF=3 topic of `partitions` and writes one acks=all record to each.
async fn create_and_touch(cluster: &Cluster, topic: &str, partitions: i32) {
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(topic, partitions)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    for p in 0..partitions {
        producer
            .send(ProducerRecord::new(topic, Bytes::from_static(b"x")).with_partition(p))
            .await
            .expect("send")
            .await
            .unwrap_or_else(|e| panic!("acks=all: {e}\n{}", cluster.logs()));
    }
}

/// Controlled shutdown: a broker stopped with SIGINT hands every partition it leads to
/// a caught-up replica before it exits, so the moment it is gone the survivors already
/// lead them (a killed broker's partitions wait at least a second for the silence to
/// be noticed, and an election).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_hands_its_leaderships_over_first() {
    const HANDOFF_TOPIC: &str = "handoff";
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_and_touch(&cluster, HANDOFF_TOPIC, 6).await;
    let before = placement(&cluster, HANDOFF_TOPIC).await;
    let mut led = [0usize; 4];
    for (leader, _) in &before {
        led[(*leader).clamp(0, 3) as usize] += 1;
    }
    let victim = (1..=3).max_by_key(|id| led[*id]).expect("a broker");
    let stop_started = Instant::now();
    let status = cluster.brokers[victim - 1].interrupt();
    let stopped_after = stop_started.elapsed();
    assert!(status.success(), "rilld exited with {status}");
    let after = placement(&cluster, HANDOFF_TOPIC).await;
    println!(
        "broker {victim} led {} of 6; stopped in {:.2} s; leaders right after its exit: {:?}",
        led[victim],
        stopped_after.as_secs_f64(),
        after.iter().map(|(l, _)| *l).collect::<Vec<_>>()
    );
    assert!(
        after.len() == 6 && after.iter().all(|(l, _)| *l > 0 && *l as usize != victim),
        "leaderships of broker {victim} not handed off before it exited: {after:?}\n{}",
        cluster.logs()
    );
}

/// The leader balancer: after a broker is killed and restarts, the partitions whose
/// preferred replica (first in the assignment) it is go back to it, so leadership stays
/// spread over the brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_preferred_replicas() {
    const BALANCE_TOPIC: &str = "balance";
    let mut cluster = Cluster::start_with(&["--leader-balance-interval-ms", "500"]);
    wait_registered(&cluster, 3).await;
    create_and_touch(&cluster, BALANCE_TOPIC, 6).await;
    async fn wait_preferred(cluster: &Cluster, what: &str) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            let now = placement(cluster, BALANCE_TOPIC).await;
            if now.len() == 6
                && now
                    .iter()
                    .all(|(leader, replicas)| replicas.first() == Some(leader))
            {
                println!(
                    "{what}: every partition led by its preferred replica after {:.2} s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: leaders not back on their preferred replicas within 30 s: {now:?}\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_preferred(&cluster, "after creation").await;
    cluster.brokers[0].kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = placement(&cluster, BALANCE_TOPIC).await;
        if now.len() == 6 && now.iter().all(|(l, _)| *l == 2 || *l == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover from broker 1: {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.brokers[0].restart();
    wait_preferred(&cluster, "after broker 1 restarted").await;
}
