//! Brokers that come back changed: a follower restarted on an empty data directory
//! catches up; a follower kept down longer than the retention window, whose log ends
//! before the leader's log start, is reset to that start and converges; a second process
//! with a running broker's node id is refused (DUPLICATE_BROKER_REGISTRATION) and exits;
//! a stopped broker replaced by a newer process with its id is fenced when it resumes
//! (its handshakes refused, its Raft messages never delivered) and exits naming the
//! conflict; a broker wiped while the metadata log was trimmed below a checkpoint
//! rebuilds the cluster metadata from that checkpoint, and a broker restarted on its
//! trimmed metadata log replays it; a controller wiped and restarted at once is replaced
//! at once (its quiet followers learn of the restart from its handshake). Every test
//! checks the history (no acknowledged record lost, no offset holding two records) and
//! that the replicas' log files end byte-identical.

mod cluster_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use rill_client::{Admin, ClientConfig, NewTopic, Producer, ProducerConfig, ProducerRecord};
use rill_tests::history::{replicas_identical, Duplicates, History};
use rill_tests::raw::{read_all_from, RawConn};
use rill_tests::RilldProcess;

/// Bound on waiting for replicas to converge after a rejoin.
const CONVERGE_MAX: Duration = Duration::from_secs(40);

/// The partition directories of TOPIC's `partition` on `brokers`.
fn partition_dirs(brokers: &[&RilldProcess], partition: i32) -> Vec<PathBuf> {
    brokers
        .iter()
        .map(|b| replica_dir(&b.data_dir(), TOPIC, partition))
        .collect()
}

/// Waits until every partition of TOPIC is byte-identical on `brokers` (running: the
/// followers are catching up); returns how long it took.
async fn wait_converged(brokers: &[&RilldProcess], logs: impl Fn() -> String) -> Duration {
    let started = Instant::now();
    loop {
        let differences: Vec<String> = (0..PARTITIONS)
            .filter_map(|p| replicas_identical(&partition_dirs(brokers, p)).err())
            .collect();
        if differences.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CONVERGE_MAX,
            "replicas did not converge within {CONVERGE_MAX:?}: {differences:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the history (nothing acknowledged lost, no offset reused), waits for the
/// replicas to converge, kills every broker and checks their replica files are
/// byte-identical. Killed, not stopped: a graceful stop hands leaderships over, and each
/// new leader appends its leader-change batch, which the brokers stopped before it never
/// see.
async fn check_and_stop(cluster: &mut Cluster, history: &History, context: &str) {
    let report = history.check(Duplicates::Allowed);
    println!("{context}\n{report}");
    report.assert_ok();
    let brokers: Vec<&RilldProcess> = cluster.brokers.iter().collect();
    wait_converged(&brokers, || cluster.logs()).await;
    for broker in &mut cluster.brokers {
        broker.kill();
    }
    assert_replicas_identical(cluster);
}

/// The broker id of a broker that does not lead partition 0 (a follower of it).
async fn follower_of_partition_0(cluster: &Cluster) -> i32 {
    let leader = wait_leader(cluster, 0).await;
    if leader == 3 {
        2
    } else {
        3
    }
}

/// Creates TOPIC (RF=3) with topic `configs`.
async fn create_topic_with(cluster: &Cluster, configs: &[(&str, &str)]) {
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    let configs: BTreeMap<String, String> = configs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            configs,
            ..NewTopic::new(TOPIC, PARTITIONS)
        }])
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}\n{}", cluster.logs()));
}

/// Produces `count` acks=all records of `value_bytes` bytes each (to `partition`, or to
/// every partition in turn) and returns every outcome.
async fn produce_padded(
    producer: &Producer,
    phase: &str,
    count: usize,
    value_bytes: usize,
    partition: Option<i32>,
) -> Outcomes {
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for n in 0..count {
        let mut value = format!("{phase}-{n}-").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        let value = Bytes::from(value);
        let partition = partition.unwrap_or(n as i32 % PARTITIONS);
        let record = ProducerRecord::new(TOPIC, value.clone()).with_partition(partition);
        match producer.send(record).await {
            Ok(delivery) => pending.push((value, delivery)),
            Err(_) => out.push((value, None)),
        }
    }
    for (value, delivery) in pending {
        out.push((value, delivery.await.ok().map(|m| (m.partition, m.offset))));
    }
    out
}

/// The log start offset of a partition directory: its first segment's base offset
/// (retention and resets remove whole segments).
fn log_start(dir: &Path) -> Option<i64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<i64>().ok()
        })
        .min()
}

/// A follower of partition 0 is SIGKILLed, its data directory deleted, and it restarts:
/// it rejoins as the same node id with a new incarnation, recreates its metadata
/// replica and its partition replicas from the controller's log, holds back its votes
/// until it caught up (it was known to the cluster), and ends byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_on_an_empty_data_directory_catches_up() {
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let mut history = History::default();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "before", 400).await;

    let wiped = follower_of_partition_0(&cluster).await;
    let broker = &mut cluster.brokers[(wiped - 1) as usize];
    broker.kill();
    std::fs::remove_dir_all(broker.data_dir()).expect("wipe the data directory");
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "down", 400).await;
    cluster.brokers[(wiped - 1) as usize].restart();
    let restarted_at = Instant::now();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "after", 400).await;

    let brokers: Vec<&RilldProcess> = cluster.brokers.iter().collect();
    let converged = wait_converged(&brokers, || cluster.logs()).await;
    let log = cluster.brokers[(wiped - 1) as usize].log();
    assert!(
        log.contains("rejoining"),
        "the wiped broker never learned it was known to the cluster\n{log}"
    );
    println!(
        "broker {wiped} wiped and restarted: replicas identical {:.2} s after the restart \
         ({:.2} s of it after the last produce)",
        restarted_at.elapsed().as_secs_f64(),
        converged.as_secs_f64()
    );
    // It is a full member again: its replicas caught up with their leaders, which
    // releases their votes once the rejoin wait is over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.brokers[(wiped - 1) as usize]
        .log()
        .contains("caught up with the leader")
    {
        assert!(
            Instant::now() < deadline,
            "the rejoined replicas never caught up with their leaders\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    read_back(&cluster, &mut history).await;
    check_and_stop(&mut cluster, &history, "").await;
}

/// The controller (the metadata group's leader) is SIGKILLed while the cluster is idle,
/// its data directory deleted, and it restarts at once — before its peers could notice
/// its silence. The restarted process leads nothing and, on an empty data directory,
/// may not campaign; its peers learn of the new incarnation from its handshake and
/// elect a new controller at once (a quiet follower would otherwise keep trusting the
/// dead leader and never time out). Topic creation works again, and the wiped broker
/// catches the metadata and its replicas up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_wiped_and_restarted_at_once_is_replaced() {
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let mut history = History::default();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "before", 200).await;
    drop(producer);
    // Idle long enough for the metadata group to go quiet (a few heartbeats).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    let controller = admin
        .describe_cluster()
        .await
        .expect("describe cluster")
        .controller_id;
    let broker = &mut cluster.brokers[(controller - 1) as usize];
    broker.kill();
    std::fs::remove_dir_all(broker.data_dir()).expect("wipe the data directory");
    broker.restart();
    let restarted_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
        let created = admin
            .create_topics(&[NewTopic {
                replication_factor: 3,
                ..NewTopic::new("after-restart", 1)
            }])
            .await;
        match created {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no topic creation within 20 s of restarting controller {controller}: {e}\n{}",
                cluster.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "controller {controller} wiped and restarted: a topic created {:.2} s later",
        restarted_at.elapsed().as_secs_f64()
    );
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "after", 200).await;
    read_back(&cluster, &mut history).await;
    check_and_stop(&mut cluster, &history, "").await;
}

/// With a checkpoint of the metadata image every 5 records: broker 2 is SIGKILLed while
/// a topic it hosts is deleted and the metadata log trimmed past that deletion;
/// restarted, reset to the leader's later log start, it removes its replica of that
/// topic once it applies the checkpoint there. Then broker 3 is SIGKILLed and
/// its data directory wiped, and topics are created and deleted until brokers 1 and 2
/// have deleted the start of their metadata log (the record that created TOPIC is gone
/// from every log). Restarted, broker 3 is reset to the leader's log start, rebuilds the
/// metadata from the checkpoint there, opens its replicas of TOPIC and of a topic
/// created after the kill, and they converge. Broker 1, restarted on its own trimmed
/// log, replays it from its checkpoint and serves TOPIC again. No broker's image ever
/// differed from a checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_the_trimmed_metadata_log_rebuilds_it_from_a_checkpoint() {
    let mut cluster = Cluster::start_with(&["--metadata-checkpoint-records", "5"]);
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let mut history = History::default();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "before", 200).await;

    // Broker 2 is down (disk kept) while topic "doomed" is deleted and the log is
    // trimmed past that deletion: restarted, it still removes its replica of "doomed".
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap())).expect("admin");
    admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new("doomed", 1)
        }])
        .await
        .unwrap_or_else(|e| panic!("create doomed: {e}\n{}", cluster.logs()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while hosted_replica_dir(&cluster.brokers[1].data_dir(), "doomed", 0).is_none() {
        assert!(
            Instant::now() < deadline,
            "broker 2 never opened its replica of doomed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.brokers[1].kill();
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap_without(&[2]))).expect("admin");
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = admin.delete_topics(&["doomed"]).await {
        assert!(
            Instant::now() < deadline,
            "delete doomed: {e}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    churn_until_trimmed(&cluster, &admin, &[0, 2], "away").await;
    cluster.brokers[1].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hosted_replica_dir(&cluster.brokers[1].data_dir(), "doomed", 0).is_some() {
        assert!(
            Instant::now() < deadline,
            "broker 2 kept its replica of a topic deleted while it was down\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_registered(&cluster, 3).await;

    cluster.brokers[2].kill();
    std::fs::remove_dir_all(cluster.brokers[2].data_dir()).expect("wipe the data directory");
    let admin = Admin::new(ClientConfig::new(&cluster.bootstrap_without(&[3]))).expect("admin");
    // Broker 3 may have been the controller: the survivors elect another first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = admin
        .create_topics(&[NewTopic {
            replication_factor: 3,
            ..NewTopic::new("survivor", 1)
        }])
        .await
    {
        assert!(
            Instant::now() < deadline,
            "create survivor: {e}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    churn_until_trimmed(&cluster, &admin, &[0, 1], "churn").await;
    cluster.brokers[2].restart();
    let restarted_at = Instant::now();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "after", 200).await;
    let brokers: Vec<&RilldProcess> = cluster.brokers.iter().collect();
    let converged = wait_converged(&brokers, || cluster.logs()).await;
    println!(
        "wiped broker 3 rebuilt the metadata and converged {:.2} s after its restart",
        restarted_at.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while hosted_replica_dir(&cluster.brokers[2].data_dir(), "survivor", 0).is_none() {
        assert!(
            Instant::now() < deadline,
            "broker 3 never opened its replica of the topic created while it was down\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = converged;

    cluster.brokers[0].kill();
    cluster.brokers[0].restart();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "replayed", 200).await;
    read_back(&cluster, &mut history).await;
    for (i, broker) in cluster.brokers.iter().enumerate() {
        assert!(
            !broker
                .log()
                .contains("differed from the controller's checkpoint"),
            "broker {}'s metadata image diverged\n{}",
            i + 1,
            cluster.logs()
        );
    }
    check_and_stop(&mut cluster, &history, "").await;
}

/// With 1 MiB segments, retention.bytes of 2 MiB and retention.ms of 2 s, a follower of
/// partition 0 is SIGKILLed and stays down longer than the retention window while the
/// leader produces 20 segments: the live replicas' log start moves past the follower's
/// log end (and past what the leader had in flight to it). Restarted, the follower is reset to the leader's log start (its log says
/// so) and converges; nothing acknowledged at or after the log start is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_is_reset_to_it() {
    const SEGMENT_BYTES: &str = "1048576";
    const RETENTION_MS: &str = "2000";
    /// The leader's in-flight bytes per follower (`rill_raft`'s default
    /// `inflight_bytes_max`).
    const LEADER_WINDOW_BYTES: usize = 8 << 20;
    const VALUE_BYTES: usize = 4096;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let voters = voters_text(&ports);
    let mut cluster = Cluster::start_with_voters(
        &ports,
        &[voters.clone(), voters.clone(), voters],
        &["--retention-check-interval-ms", "200"],
    );
    wait_registered(&cluster, 3).await;
    create_topic_with(
        &cluster,
        &[
            ("segment.bytes", SEGMENT_BYTES),
            ("retention.bytes", "2097152"),
            ("retention.ms", RETENTION_MS),
        ],
    )
    .await;
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    let mut outcomes = produce_padded(&producer, "before", 200, VALUE_BYTES, None).await;
    let follower_end = outcomes
        .iter()
        .filter_map(|(_, o)| o.filter(|(p, _)| *p == 0).map(|(_, offset)| offset + 1))
        .max()
        .expect("records acknowledged in partition 0");

    let down = follower_of_partition_0(&cluster).await;
    cluster.brokers[(down - 1) as usize].kill();
    let killed_at = Instant::now();
    // 20 MiB into partition 0, far more than the leader's in-flight window: the
    // leader pipelines up to that window of appends to the dead follower, and they wait
    // in its transport queue until the follower is back (they still match its log), so
    // the follower is behind the log start only if it missed more than the window.
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    outcomes.extend(produce_padded(&producer, "down", 5000, VALUE_BYTES, Some(0)).await);
    let window_offsets = (LEADER_WINDOW_BYTES / VALUE_BYTES) as i64;
    // Both live replicas (whichever leads when the follower returns) must have moved
    // their log start past the follower's end.
    let live_dirs: Vec<PathBuf> = (1..=3)
        .filter(|&id| id != down)
        .map(|id| partition_dirs(&[cluster.broker(id)], 0).remove(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let live_start = loop {
        let start = live_dirs
            .iter()
            .map(|dir| log_start(dir).unwrap_or(0))
            .min()
            .unwrap_or(0);
        if start > follower_end + 2 * window_offsets {
            break start;
        }
        assert!(
            Instant::now() < deadline,
            "retention never moved the live replicas' log start ({start}) past the \
             follower's end ({follower_end}) and the leader's window\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "broker {down} down for {:.1} s; the live replicas' log start {live_start} > the \
         follower's end {follower_end}",
        killed_at.elapsed().as_secs_f64()
    );

    cluster.brokers[(down - 1) as usize].restart();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    outcomes.extend(produce_padded(&producer, "after", 200, VALUE_BYTES, None).await);
    let brokers: Vec<&RilldProcess> = cluster.brokers.iter().collect();
    let converged = wait_converged(&brokers, || cluster.logs()).await;
    let log = cluster.brokers[(down - 1) as usize].log();
    assert!(
        log.contains("log reset to the leader's log start"),
        "the follower was never reset\n{}",
        cluster.logs()
    );
    println!(
        "replicas identical {:.2} s after the last produce",
        converged.as_secs_f64()
    );
    // Past retention.ms every closed segment goes on every replica: the log starts stop
    // moving (only active segments are left), so they can be read from.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_converged(&brokers, || cluster.logs()).await;

    // Records below each partition's log start are gone by retention, as configured;
    // every acknowledged record at or after it must be there.
    let starts: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            let dir = partition_dirs(&[cluster.broker(down)], p).remove(0);
            (p, log_start(&dir).unwrap_or(0))
        })
        .collect();
    let mut history = History::default();
    let kept: Outcomes = outcomes
        .into_iter()
        .filter(|(_, o)| o.is_none_or(|(p, offset)| offset >= starts[&p]))
        .collect();
    let acked = record_outcomes(&mut history, kept);
    let mut reads = BTreeMap::new();
    for (&partition, &start) in &starts {
        let mut conn = RawConn::connect(
            cluster
                .broker(wait_leader(&cluster, partition).await)
                .addr(),
        );
        let records = read_all_from(&mut conn, TOPIC, partition, start);
        reads.insert(
            partition,
            records
                .into_iter()
                .map(|(o, v)| (o, Bytes::from(v)))
                .collect::<Vec<_>>(),
        );
    }
    history.record_reads(&reads);
    let context = format!("{acked} acknowledged records at or after the log starts {starts:?}");
    check_and_stop(&mut cluster, &history, &context).await;
}

/// A TCP relay whose upstream can be switched: broker 3's address in everyone's
/// `controller_voters`, so a replacement process on another port can take the place of
/// a stopped one (as a replacement machine would take over its address).
struct Relay {
    listen_addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let listen_addr = listener.local_addr().expect("relay addr");
        let upstream = Arc::new(Mutex::new(upstream));
        let current = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().expect("relay lock");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            listen_addr,
            upstream,
            task,
        }
    }

    /// New connections go to `upstream` (open ones stay where they are).
    fn switch(&self, upstream: SocketAddr) {
        *self.upstream.lock().expect("relay lock") = upstream;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts another process with node id 3 on its own (empty) data directory, listening
/// for peers on `inter_broker_port`.
fn start_broker_3(voters: &str, inter_broker_port: u16) -> RilldProcess {
    RilldProcess::start_with(&[
        "--node-id",
        "3",
        "--controller-voters",
        voters,
        "--inter-broker-listen",
        &format!("127.0.0.1:{inter_broker_port}"),
    ])
}

/// Waits (30 s at most) for `process` to exit on its own with a failure whose log
/// holds every one of `needles`; returns its status.
fn assert_exits_saying(
    process: &mut RilldProcess,
    what: &str,
    needles: &[&str],
) -> std::process::ExitStatus {
    let status = process
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{what} kept running\n{}", process.log()));
    let log = process.log();
    assert!(!status.success(), "{what} exited with {status}");
    assert!(
        needles.iter().all(|n| log.contains(n)),
        "{what}'s log lacks one of {needles:?}:\n{log}"
    );
    status
}

/// Broker 3 is reached through a relay. (1) A second process started with node id 3
/// (its own data directory and port) while broker 3 runs is refused by its peers as a
/// duplicate and exits with an error naming the id. (2) Broker 3 is SIGSTOPped (a
/// zombie); a replacement process with node id 3 starts on an empty data directory,
/// the relay sends broker 3's traffic to it, and once the zombie's session timed out
/// the controller registers the replacement and every broker fences the zombie. The
/// replacement catches up. SIGCONT: the zombie's handshakes are refused as a stale
/// incarnation and it exits with an error naming the incarnation that replaced it.
/// acks=all produces run throughout: nothing acknowledged is lost, replicas of 1, 2 and
/// the replacement end byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_is_refused_and_a_stale_incarnation_is_fenced() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let relay = Relay::start(format!("127.0.0.1:{}", ports[2]).parse().expect("addr")).await;
    let voters = format!(
        "1@127.0.0.1:{},2@127.0.0.1:{},3@{}",
        ports[0], ports[1], relay.listen_addr
    );
    let mut cluster = Cluster::start_with_voters(
        &ports,
        &[voters.clone(), voters.clone(), voters.clone()],
        &[],
    );
    wait_registered(&cluster, 3).await;
    create_replicated_topic(&cluster).await;
    let mut history = History::default();
    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 0, "before", 300).await;

    // (1) A duplicate of the running broker 3.
    let started = Instant::now();
    let mut duplicate = start_broker_3(&voters, free_port());
    assert_exits_saying(
        &mut duplicate,
        "the duplicate",
        &["DUPLICATE_BROKER_REGISTRATION", "node_id 3"],
    );
    println!(
        "duplicate of broker 3 refused, exited after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    produce(&producer, &mut history, 0, "after-duplicate", 300).await;

    // (2) Broker 3 stops; a replacement takes its id (and, through the relay, its
    // address) on an empty data directory.
    let live = produce_for(
        Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer"),
        1,
        Duration::from_secs(4),
    );
    cluster.broker(3).send_signal("-STOP");
    let stopped_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replacement_port = free_port();
    let replacement = start_broker_3(&voters, replacement_port);
    relay.switch(
        format!("127.0.0.1:{replacement_port}")
            .parse()
            .expect("addr"),
    );
    let mut zombie = std::mem::replace(&mut cluster.brokers[2], replacement);
    record_outcomes(&mut history, live.await.expect("producer task"));
    let brokers: Vec<&RilldProcess> = cluster.brokers.iter().collect();
    wait_converged(&brokers, || {
        format!("{}===== zombie =====\n{}", cluster.logs(), zombie.log())
    })
    .await;
    println!(
        "replacement of broker 3 caught up {:.1} s after broker 3 was stopped",
        stopped_at.elapsed().as_secs_f64()
    );

    // The zombie resumes: fenced, it exits and says why.
    zombie.send_signal("-CONT");
    let status = assert_exits_saying(
        &mut zombie,
        "the zombie",
        &["fenced", "node_id 3", "replaced"],
    );
    println!("zombie broker 3 fenced after SIGCONT, exited with {status}");

    let producer = Producer::new(ProducerConfig::new(&cluster.bootstrap())).expect("producer");
    produce(&producer, &mut history, 2, "after-zombie", 300).await;
    read_back(&cluster, &mut history).await;
    check_and_stop(&mut cluster, &history, "").await;
}
