//! Shared by the cluster tests (`cluster.rs`, `cluster_faults.rs`, `cluster_rejoin.rs`,
//! `cluster_topics.rs`): three `rilld`
//! processes forming a cluster, an RF=3 topic, acks=all producers (rill-client and
//! librdkafka) whose outcomes go into a [`History`], and the end-of-test checks (every
//! partition read back from its leader; replica files byte-identical).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_client::{Admin, ClientConfig, NewTopic, PartitionInfo, Producer, ProducerRecord};
use rill_tests::history::{replicas_identical, History};
use rill_tests::raw::{read_all, RawConn};
use rill_tests::RilldProcess;

pub const TOPIC: &str = "replicated";
pub const PARTITIONS: i32 = 2;

/// The number in environment variable `name`, if set (a test knob such as a round
/// count); panics, naming the variable, if it is not a number.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
    )
}

/// A free loopback port outside the ephemeral range (the broker binds it next).
pub fn free_port() -> u16 {
    rill_tests::ports::reserve()
}

/// `1@127.0.0.1:P1,2@127.0.0.1:P2,...`: broker `i + 1` at `ports[i]`.
pub fn voters_text(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

pub struct Cluster {
    pub brokers: Vec<RilldProcess>,
    /// The first broker's `--controller-voters` (what a broker added later is given).
    pub voters: String,
}

impl Cluster {
    /// Three brokers (ids 1, 2, 3) that all see the same voters: each other's
    /// inter-broker ports, directly.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Three brokers as [`Cluster::start`] gives them, each also given `extra` flags.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let voters = voters_text(&ports);
        Cluster::start_with_voters(&ports, &[voters.clone(), voters.clone(), voters], extra)
    }

    /// One broker per entry of `inter_broker_ports` (ids 1, 2, ...), broker `i + 1`
    /// listening on `inter_broker_ports[i]` for its peers and given `voters[i]` as its
    /// `--controller-voters` (its own view of where the others are), plus `extra` flags.
    pub fn start_with_voters(
        inter_broker_ports: &[u16],
        voters: &[String],
        extra: &[&str],
    ) -> Cluster {
        Cluster::start_with_voters_on(inter_broker_ports, voters, &[], extra)
    }

    /// Three brokers as [`Cluster::start_with`] gives them, broker `i + 1` on
    /// `data_dirs[i]`, a directory the test owns (e.g. a `rill-lossyfs` mount).
    pub fn start_on(data_dirs: &[&Path], extra: &[&str]) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let voters = voters_text(&ports);
        Cluster::start_with_voters_on(
            &ports,
            &[voters.clone(), voters.clone(), voters],
            data_dirs,
            extra,
        )
    }

    /// [`Cluster::start_with_voters`], broker `i + 1` on `data_dirs[i]` if given (the
    /// harness's temp dir otherwise).
    fn start_with_voters_on(
        inter_broker_ports: &[u16],
        voters: &[String],
        data_dirs: &[&Path],
        extra: &[&str],
    ) -> Cluster {
        assert_eq!(
            inter_broker_ports.len(),
            voters.len(),
            "one voter list per broker"
        );
        let first_voters = voters.first().cloned().unwrap_or_default();
        let brokers = inter_broker_ports
            .iter()
            .zip(voters)
            .enumerate()
            .map(|(i, (port, voters))| {
                let mut args = vec![
                    "--node-id".to_string(),
                    (i + 1).to_string(),
                    "--controller-voters".to_string(),
                    voters.clone(),
                    "--inter-broker-listen".to_string(),
                    format!("127.0.0.1:{port}"),
                ];
                args.extend(extra.iter().map(|a| a.to_string()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                match data_dirs.get(i) {
                    Some(data_dir) => RilldProcess::start_with_data_dir(data_dir, &args),
                    None => RilldProcess::start_with(&args),
                }
            })
            .collect();
        Cluster {
            brokers,
            voters: first_voters,
        }
    }

    /// Starts one more broker (the next id) that is not among the controller voters:
    /// it joins as a learner of the metadata group. Returns its id.
    pub fn start_non_voter(&mut self, extra: &[&str]) -> i32 {
        let id = self.brokers.len() as i32 + 1;
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--controller-voters".to_string(),
            self.voters.clone(),
            "--inter-broker-listen".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.brokers.push(RilldProcess::start_with(&args));
        id
    }

    /// The client addresses of the running brokers.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .filter(|b| b.pid().is_some())
            .map(|b| b.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client addresses of the running brokers not in `skip` (ids; e.g. a
    /// SIGSTOPped one a client would wait on).
    pub fn bootstrap_without(&self, skip: &[i32]) -> String {
        self.brokers
            .iter()
            .enumerate()
            .filter(|(i, b)| b.pid().is_some() && !skip.contains(&(*i as i32 + 1)))
            .map(|(_, b)| b.bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The broker with id `id`.
    pub fn broker(&self, id: i32) -> &RilldProcess {
        &self.brokers[(id - 1) as usize]
    }

    /// Every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        self.brokers
            .iter()
            .enumerate()
            .map(|(i, b)| format!("===== broker {} =====\n{}", i + 1, b.log()))
            .collect()
    }
}

/// Waits until Metadata (through any live broker) lists `count` brokers.
pub async fn wait_registered(cluster: &Cluster, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
        if let Ok(described) = admin.describe_cluster().await {
            if described.brokers.len() == count && described.controller_id >= 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{count} brokers not registered within 30 s\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates TOPIC with a replica on each of the three brokers (through the controller).
pub async fn create_replicated_topic(cluster: &Cluster) {
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new(TOPIC, PARTITIONS)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
}

/// The broker id leading `partition`, per Metadata.
pub async fn leader_of(bootstrap: &str, partition: i32) -> Option<i32> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).ok()?;
    let topics = admin.describe_topics(&[TOPIC]).await.ok()?;
    let leader = topics.first()?.partitions.get(partition as usize)?.leader;
    (leader >= 0).then_some(leader)
}

/// The leader of `partition`, waiting up to 20 s for one (a restarted broker knows no
/// topic until it has replayed the metadata log).
pub async fn wait_leader(cluster: &Cluster, partition: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leader) = leader_of(&cluster.bootstrap(), partition).await {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} has no leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a producer task attempted: each value and its outcome (partition and offset
/// when acknowledged, `None` when the send failed: indeterminate).
pub type Outcomes = Vec<(Bytes, Option<(i32, i64)>)>;

/// Produces acks=all records for `duration` from a task of its own (so a fault lands
/// while sends are in flight), at most 64 awaiting acknowledgement.
pub fn produce_for(
    producer: Producer,
    round: u32,
    duration: Duration,
) -> tokio::task::JoinHandle<Outcomes> {
    tokio::spawn(async move {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        let mut n = 0u64;
        while Instant::now() < deadline {
            let value = Bytes::from(format!("round{round}-live-{n}"));
            let record = ProducerRecord::new(TOPIC, value.clone())
                .with_partition((n % PARTITIONS as u64) as i32);
            n += 1;
            match producer.send(record).await {
                Ok(delivery) => pending.push_back((value, delivery)),
                Err(_) => out.push((value, None)),
            }
            if pending.len() >= 64 {
                let (value, delivery) = pending.pop_front().expect("non-empty");
                out.push((value, delivery.await.ok().map(|m| (m.partition, m.offset))));
            }
        }
        for (value, delivery) in pending {
            out.push((value, delivery.await.ok().map(|m| (m.partition, m.offset))));
        }
        out
    })
}

/// Records a producer's outcomes and, per partition, the order it sent them in (its
/// values carry their partition: `n % PARTITIONS`).
pub fn record_with_order(history: &mut History, outcomes: Outcomes) -> usize {
    let mut order: BTreeMap<i32, Vec<Bytes>> = BTreeMap::new();
    for (i, (value, _)) in outcomes.iter().enumerate() {
        let n: usize = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.rsplit('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(i);
        order
            .entry((n % PARTITIONS as usize) as i32)
            .or_default()
            .push(value.clone());
    }
    for (partition, values) in order {
        history.record_send_order(partition, values);
    }
    record_outcomes(history, outcomes)
}

/// Like [`produce_for`], with librdkafka (the rdkafka crate) as the producer.
pub fn rdkafka_produce_for(
    bootstrap: &str,
    round: u32,
    duration: Duration,
) -> tokio::task::JoinHandle<Outcomes> {
    rdkafka_produce_with(bootstrap, round, duration, &[("acks", "all")])
}

/// [`rdkafka_produce_for`] with extra librdkafka settings (`enable.idempotence`, …):
/// batches of 50 sends round-robin over the partitions until `duration` has passed;
/// returns every outcome, each partition's in the order it was handed to librdkafka.
pub fn rdkafka_produce_with(
    bootstrap: &str,
    round: u32,
    duration: Duration,
    settings: &[(&str, &str)],
) -> tokio::task::JoinHandle<Outcomes> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create().expect("rdkafka producer");
    tokio::spawn(async move {
        let deadline = Instant::now() + duration;
        let mut out = Vec::new();
        let mut n = 0u64;
        while Instant::now() < deadline {
            let sends: Vec<_> = (0..50)
                .map(|_| {
                    let value = format!("round{round}-rdk-{n}");
                    let partition = (n % PARTITIONS as u64) as i32;
                    n += 1;
                    let producer = producer.clone();
                    async move {
                        let record = FutureRecord::<(), str>::to(TOPIC)
                            .payload(&value)
                            .partition(partition);
                        let delivered = producer
                            .send(record, DELIVERY_TIMEOUT)
                            .await
                            .ok()
                            .map(|d| (d.partition, d.offset));
                        (Bytes::from(value), delivered)
                    }
                })
                .collect();
            out.extend(futures::future::join_all(sends).await);
        }
        out
    })
}

/// Adds a producer task's outcomes to `history`; returns how many were acknowledged.
pub fn record_outcomes(history: &mut History, outcomes: Outcomes) -> usize {
    let mut acked = 0;
    for (value, outcome) in outcomes {
        history.record_attempt(value.clone());
        match outcome {
            Some((partition, offset)) => {
                acked += 1;
                history.record_ack(partition, offset, value);
            }
            None => history.record_failure(value),
        }
    }
    acked
}

/// Produces `count` acks=all records, recording attempts, acknowledgements and
/// failures (indeterminate) in `history`; returns how many were acknowledged.
pub async fn produce(
    producer: &Producer,
    history: &mut History,
    round: u32,
    phase: &str,
    count: usize,
) -> usize {
    let mut acked = 0;
    let mut pending = Vec::new();
    for n in 0..count {
        let value = Bytes::from(format!("round{round}-{phase}-{n}"));
        history.record_attempt(value.clone());
        let record =
            ProducerRecord::new(TOPIC, value.clone()).with_partition(n as i32 % PARTITIONS);
        match producer.send(record).await {
            Ok(delivery) => pending.push((value, delivery)),
            Err(_) => history.record_failure(value),
        }
    }
    for (value, delivery) in pending {
        match delivery.await {
            Ok(meta) => {
                acked += 1;
                history.record_ack(meta.partition, meta.offset, value);
            }
            Err(_) => history.record_failure(value),
        }
    }
    acked
}

/// Reads every partition of TOPIC from its leader into `history`.
pub async fn read_back(cluster: &Cluster, history: &mut History) {
    let mut reads: BTreeMap<i32, Vec<(i64, Bytes)>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let leader = wait_leader(cluster, partition).await;
        let mut conn = RawConn::connect(cluster.broker(leader).addr());
        reads.insert(
            partition,
            read_all(&mut conn, TOPIC, partition)
                .into_iter()
                .map(|(o, v)| (o, Bytes::from(v)))
                .collect(),
        );
    }
    history.record_reads(&reads);
}

/// The directory of `topic`'s `partition` under `data_dir`: replicas are named
/// `<topic>-<partition>.<topic id>`, so a recreated topic never meets an old replica.
/// A path that does not exist when there is no replica (comparisons then report it).
pub fn replica_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    let prefix = format!("{topic}-{partition}.");
    std::fs::read_dir(data_dir)
        .ok()
        .and_then(|entries| {
            entries.flatten().find(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
        })
        .map_or_else(
            || data_dir.join(format!("{topic}-{partition}")),
            |e| e.path(),
        )
}

/// SIGKILLs every broker, for comparing their files. Not a graceful stop: a stopping
/// broker hands its leaderships over first (controlled shutdown), and each new
/// leader's control batch reaches only the brokers still running, so brokers stopped
/// one after another would differ by those batches without any replication fault. A
/// kill leaves each log as it was; the comparison reads the files through the page
/// cache, which the kill does not drop.
pub fn kill_all(cluster: &mut Cluster) {
    for broker in &mut cluster.brokers {
        broker.kill();
    }
}

/// Panics unless every partition of TOPIC has byte-identical `.log` files on every
/// broker (call with the brokers stopped, e.g. by [`kill_all`]).
pub fn assert_replicas_identical(cluster: &Cluster) {
    for partition in 0..PARTITIONS {
        let dirs: Vec<_> = cluster
            .brokers
            .iter()
            .map(|b| replica_dir(&b.data_dir(), TOPIC, partition))
            .collect();
        if let Err(e) = replicas_identical(&dirs) {
            panic!("partition {partition}: replicas differ: {e}");
        }
    }
}

/// `topic`'s partitions as Metadata through `bootstrap` describes them.
pub async fn partitions_of(bootstrap: &str, topic: &str) -> Option<Vec<PartitionInfo>> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).ok()?;
    let topics = admin.describe_topics(&[topic]).await.ok()?;
    Some(topics.first()?.partitions.clone())
}

/// The leader of `partition` of `topic`, waiting up to 20 s for one.
pub async fn wait_topic_leader(cluster: &Cluster, topic: &str, partition: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = partitions_of(&cluster.bootstrap(), topic)
            .await
            .and_then(|p| Some(p.get(partition as usize)?.leader))
            .filter(|l| *l >= 0);
        if let Some(leader) = leader {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}-{partition} has no leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `signal` (e.g. "-STOP") to a broker's process.
pub fn signal(broker: &RilldProcess, signal: &str) {
    let pid = broker.pid().expect("running");
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// This broker's replica directory of `topic`-`partition`, if it hosts one.
pub fn hosted_replica_dir(data_dir: &Path, topic: &str, partition: i32) -> Option<PathBuf> {
    Some(replica_dir(data_dir, topic, partition)).filter(|dir| dir.exists())
}

/// The replica directories of every partition of `topic` on this broker.
pub fn replica_dirs(data_dir: &Path, topic: &str) -> Vec<PathBuf> {
    let prefix = format!("{topic}-");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix(&prefix)
                            .and_then(|rest| rest.split_once('.'))
                            .is_some_and(|(p, _)| p.parse::<i32>().is_ok())
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The smallest base offset of the metadata log's segment files on `broker`: above 0
/// once a checkpoint let the broker delete the log's first segments.
pub fn metadata_log_start(broker: &RilldProcess) -> u64 {
    let dir = broker.data_dir().join("meta/cluster-metadata-0");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .min()
        .unwrap_or(0)
}

/// Creates and deletes topics through `admin` until the metadata logs of the brokers at
/// `indexes` (into `cluster.brokers`) have lost their first segment.
pub async fn churn_until_trimmed(
    cluster: &Cluster,
    admin: &Admin,
    indexes: &[usize],
    prefix: &str,
) {
    let trimmed = |i: &usize| metadata_log_start(&cluster.brokers[*i]) > 0;
    let starts = |c: &Cluster| -> Vec<u64> {
        indexes
            .iter()
            .map(|i| metadata_log_start(&c.brokers[*i]))
            .collect()
    };
    let before = starts(cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut churned = 0;
    // Past where each log started before: a second trim when the first one happened.
    while !indexes.iter().all(trimmed)
        || starts(cluster)
            .iter()
            .zip(&before)
            .any(|(now, was)| now == was)
    {
        assert!(
            Instant::now() < deadline,
            "the metadata log was never trimmed ({churned} topics churned)\n{}",
            cluster.logs()
        );
        let name = format!("{prefix}-{churned}");
        churned += 1;
        admin
            .create_topics(&[NewTopic {
                replication_factor: 2,
                ..NewTopic::new(name.as_str(), 1)
            }])
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", cluster.logs()));
        admin
            .delete_topics(&[name.as_str()])
            .await
            .unwrap_or_else(|e| panic!("delete {name}: {e}\n{}", cluster.logs()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "metadata log starts {:?} after {churned} topics created and deleted",
        starts(cluster)
    );
}
