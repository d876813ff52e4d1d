//! Three `rilld` processes on loopback form a cluster (`--controller-voters`): a topic
//! created through the controller is replicated on all three; an acks=all producer
//! (rill-client) keeps producing while the leader of a partition is SIGKILLed; a new
//! leader takes over, the killed broker restarts and catches up; the history checker
//! finds no acknowledged record lost and no offset holding two records, and every
//! replica's log files are byte-identical.
//!
//! `RILL_CLUSTER_ROUNDS=N` runs N kill rounds (default 10).

mod cluster_common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use rill_client::{Admin, ClientConfig, NewTopic, Producer, ProducerConfig, ProducerRecord};
use rill_tests::history::{Duplicates, History};
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
        let rdkafka_live = rdkafka_produce_for(&bootstrap, round, Duration::from_millis(1500));
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
        record_outcomes(&mut history, live.await.expect("producer task"));
        record_outcomes(
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
    // offset holds two records.
    read_back(&cluster, &mut history).await;
    let report = history.check(Duplicates::Allowed);
    println!("{report}");
    report.assert_ok();

    // Let the restarted brokers catch up, stop everyone, and compare the files.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for broker in &mut cluster.brokers {
        broker.stop();
    }
    assert_replicas_identical(&cluster);
}

/// Sends `signal` (e.g. "-STOP") to a broker's process.
fn signal(broker: &RilldProcess, signal: &str) {
    let pid = broker.pid().expect("running");
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
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
