//! Three replica engines, each with its own data directory, persist thread and
//! inter-broker transport on a loopback port, replicate one partition with Raft: one
//! leader is elected, acks=-1 appends are acknowledged only once a majority holds
//! them, every replica's log becomes byte-identical, and when the leader's broker
//! stops, the other two elect a new leader that keeps every acknowledged batch; the
//! old leader restarts on its directory and catches up.
//!
//! A follower whose data directory was wiped restarts empty: it grants no vote until
//! it has caught up with a leader (its lost votes could otherwise be given twice).
//!
//! The brokers share this test's process (the cluster issue's multi-process tests
//! build on the same engine); the files, fsyncs, sockets and threads are real.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rill_broker::config::Durability;
use rill_broker::metrics::Metrics;
use rill_broker::replica::engine::{Engine, EngineConfig};
use rill_broker::replica::{BatchCounts, Partition};
use rill_broker::transport::{Transport, TransportConfig};
use rill_storage::batch::{encode_uncompressed, RecordSpec};
use rill_storage::{LogConfig, PartitionLog};
use tokio::time::Instant;

const BROKERS: [i32; 3] = [1, 2, 3];
const TOPIC: &str = "replicated";
const TOPIC_ID: uuid::Uuid = uuid::Uuid::from_u128(0x5eed_0000_0000_0000_0000_0000_0000_0001);
const CLUSTER_ID: &str = "replication-test";

/// One broker: engine, transport and the partition's replica over a data directory.
struct Node {
    id: i32,
    data_dir: PathBuf,
    engine: Arc<Engine>,
    transport: Arc<Transport>,
    partition: Arc<Partition>,
}

impl Node {
    /// Starts the broker's engine and transport on `data_dir` (listening on `port`, 0
    /// for any) and opens its replica.
    async fn start(id: i32, data_dir: &Path, port: u16) -> Node {
        Node::start_with(id, data_dir, port, false).await
    }

    /// [`Node::start`], on a data directory the broker sees as fresh (created by this
    /// start) when `fresh`.
    async fn start_with(id: i32, data_dir: &Path, port: u16, fresh: bool) -> Node {
        let meta_dir = data_dir.join("meta");
        std::fs::create_dir_all(&meta_dir).unwrap();
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::start(
            &meta_dir,
            EngineConfig {
                durability: Durability::Fsync,
                flush_interval: Duration::from_secs(1),
                debug_flush_delay: Duration::ZERO,
                debug_deferred_sync_delay: Duration::ZERO,
                data_dir: data_dir.to_path_buf(),
                journal_bytes: 1 << 20,
                producer_snapshot_interval: Duration::from_secs(30),
            },
            Arc::clone(&metrics),
        )
        .unwrap();
        if fresh {
            engine.mark_fresh_data_dir();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let transport = Arc::new(
            Transport::start(
                TransportConfig::new(id, CLUSTER_ID, listen),
                HashMap::new(),
                tx,
            )
            .await
            .unwrap(),
        );
        engine.connect(Arc::clone(&transport), rx).unwrap();
        let log =
            PartitionLog::open(&data_dir.join(format!("{TOPIC}-0")), LogConfig::default()).unwrap();
        let partition = Partition::open(
            TOPIC.to_string(),
            0,
            TOPIC_ID,
            log,
            Arc::clone(&engine),
            id,
            &BROKERS,
            metrics,
        )
        .unwrap();
        Node {
            id,
            data_dir: data_dir.to_path_buf(),
            engine,
            transport,
            partition,
        }
    }

    /// Stops the broker: its replica, persist loop (with a last sync) and transport.
    async fn stop(self) -> (PathBuf, u16) {
        let port = self.transport.local_addr().port();
        self.partition.close().await;
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .unwrap()
            .unwrap();
        self.transport.shutdown().await;
        (self.data_dir, port)
    }
}

/// Starts one broker of [`BROKERS`] on each directory and connects them all.
async fn start_all(dirs: &[tempfile::TempDir]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (id, dir) in BROKERS.iter().zip(dirs) {
        nodes.push(Node::start(*id, dir.path(), 0).await);
    }
    connect_all(&nodes.iter().collect::<Vec<_>>());
    nodes
}

/// Tells every node where the others listen.
fn connect_all(nodes: &[&Node]) {
    let peers: HashMap<i32, SocketAddr> = nodes
        .iter()
        .map(|n| (n.id, n.transport.local_addr()))
        .collect();
    for n in nodes {
        n.transport.set_peers(peers.clone());
    }
}

/// The node whose replica leads with a current high watermark, waiting up to 20 s.
async fn leader<'a>(nodes: &[&'a Node]) -> &'a Node {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: Vec<&Node> = nodes
            .iter()
            .copied()
            .filter(|n| n.partition.status().leader_ready)
            .collect();
        if let [one] = ready.as_slice() {
            return one;
        }
        assert!(Instant::now() < deadline, "no single leader within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn batch(n: u64) -> Bytes {
    let value = format!("record {n}");
    let mut out = Vec::new();
    let record = RecordSpec {
        timestamp_ms: 1_700_000_000_000 + n as i64,
        key: None,
        value: Some(value.as_bytes()),
    };
    encode_uncompressed(&mut out, 0, -1, &[record]);
    Bytes::from(out)
}

/// Appends `count` single-record batches on `leader`, each acknowledged as acks=-1
/// would be; returns their offsets.
async fn produce(leader: &Node, first: u64, count: u64) -> Vec<i64> {
    let counts = BatchCounts {
        batches: 1,
        offsets: 1,
    };
    let mut offsets = Vec::new();
    for n in first..first + count {
        let appended = leader.partition.append(&batch(n), counts).unwrap();
        leader
            .partition
            .wait_acknowledgeable(&appended)
            .await
            .unwrap();
        offsets.push(appended.base_offset);
    }
    offsets
}

/// Every byte of the replica's log below `end`.
fn log_bytes(node: &Node, end: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = 0;
    let guard = node.partition.log();
    while offset < end {
        let bytes = guard.read(offset as u64, 1 << 20, end as u64).unwrap();
        assert!(!bytes.is_empty(), "broker {}: nothing at {offset}", node.id);
        let mut next = offset;
        for view in rill_record::batches(&bytes) {
            next = view.unwrap().next_offset();
        }
        out.extend_from_slice(&bytes);
        offset = next;
    }
    out
}

/// Waits until every node's high watermark reaches `end`, then checks their logs
/// below it are byte-identical.
async fn assert_converged(nodes: &[&Node], end: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes {
        while n.partition.status().commit_offset < end {
            assert!(
                Instant::now() < deadline,
                "broker {} stuck at high watermark {} < {end}",
                n.id,
                n.partition.status().commit_offset
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let reference = log_bytes(nodes[0], end);
    for n in &nodes[1..] {
        assert!(
            log_bytes(n, end) == reference,
            "broker {}'s log differs from broker {}'s",
            n.id,
            nodes[0].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_one_leader_replicate_and_survive_its_loss() {
    let dirs: Vec<tempfile::TempDir> = BROKERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut nodes = start_all(&dirs).await;

    let first_leader = leader(&nodes.iter().collect::<Vec<_>>()).await;
    let first_term = first_leader.partition.status().term;
    let acked = produce(first_leader, 0, 200).await;
    // Offset 0 is the leader's LEADER_CHANGE control batch.
    assert_eq!(acked, (1..=200).collect::<Vec<i64>>());
    assert_converged(&nodes.iter().collect::<Vec<_>>(), 201).await;

    // The leader's broker stops; the other two elect a new leader in a later term,
    // which still holds every acknowledged batch and takes new ones.
    let position = nodes.iter().position(|n| n.id == first_leader.id).unwrap();
    let old = nodes.remove(position);
    let old_id = old.id;
    let (old_dir, old_port) = old.stop().await;
    let survivors: Vec<&Node> = nodes.iter().collect();
    let new_leader = leader(&survivors).await;
    assert!(new_leader.partition.status().term > first_term);
    let more = produce(new_leader, 200, 100).await;
    assert!(more[0] > 200, "new leader reused offsets: {more:?}");
    let end = more.last().unwrap() + 1;
    assert_converged(&survivors, end).await;

    // The old leader comes back on its directory and port and catches up to the
    // same bytes.
    nodes.push(Node::start(old_id, &old_dir, old_port).await);
    connect_all(&nodes.iter().collect::<Vec<_>>());
    assert_converged(&nodes.iter().collect::<Vec<_>>(), end).await;
    for n in nodes {
        n.stop().await;
    }
}

/// Whether any of `nodes` leads, checked for `period`.
async fn any_leader_within(nodes: &[&Node], period: Duration) -> bool {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if nodes.iter().any(|n| n.partition.status().leader_ready) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A follower is stopped and its data directory wiped while the leader stops too. The
/// follower restarts empty and learns from its peer's handshake that the cluster knew
/// it: it must not vote (its lost life may have voted in the terms to come), so the
/// remaining replica cannot be elected with it. Once the old leader is back, a leader is
/// elected without it, it catches up, waits out its rejoin delay and votes again: with
/// the old leader gone once more, it and the third replica elect a leader that kept
/// every acknowledged batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_wiped_directory_votes_only_after_catching_up() {
    let dirs: Vec<tempfile::TempDir> = BROKERS
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let mut nodes = start_all(&dirs).await;
    let first_leader = leader(&nodes.iter().collect::<Vec<_>>()).await.id;
    let acked = produce(leader(&nodes.iter().collect::<Vec<_>>()).await, 0, 50).await;
    let end = acked.last().unwrap() + 1;
    assert_converged(&nodes.iter().collect::<Vec<_>>(), end).await;

    // The leader and one follower stop; the follower's directory is wiped.
    let wiped_id = BROKERS
        .iter()
        .copied()
        .find(|&b| b != first_leader)
        .unwrap();
    let mut stopped = Vec::new();
    for id in [first_leader, wiped_id] {
        let position = nodes.iter().position(|n| n.id == id).unwrap();
        stopped.push((id, nodes.remove(position).stop().await));
    }
    let survivor = &nodes[0];
    // The survivor's metadata registers an earlier incarnation of the wiped broker (its
    // hello tells the restarted one it is rejoining).
    survivor
        .transport
        .set_registered(wiped_id, uuid::Uuid::from_u128(42));
    let (_, (wiped_dir, wiped_port)) = stopped.pop().unwrap();
    std::fs::remove_dir_all(&wiped_dir).unwrap();
    let wiped = Node::start_with(wiped_id, &wiped_dir, wiped_port, true).await;
    let started = Instant::now();
    nodes.push(wiped);
    connect_all(&nodes.iter().collect::<Vec<_>>());
    assert!(
        !any_leader_within(&nodes.iter().collect::<Vec<_>>(), Duration::from_secs(3)).await,
        "a leader was elected with the vote of a replica that lost its votes"
    );

    // The old leader returns: a leader is elected without the wiped replica's vote, and
    // the wiped replica catches up.
    let (old_id, (old_dir, old_port)) = stopped.pop().unwrap();
    nodes.push(Node::start(old_id, &old_dir, old_port).await);
    connect_all(&nodes.iter().collect::<Vec<_>>());
    let more = produce(leader(&nodes.iter().collect::<Vec<_>>()).await, 50, 20).await;
    let end = more.last().unwrap() + 1;
    assert_converged(&nodes.iter().collect::<Vec<_>>(), end).await;
    println!(
        "wiped replica caught up {:.2} s after its restart",
        started.elapsed().as_secs_f64()
    );

    // Past its rejoin delay it votes again: without the current leader, it and the
    // other replica elect a leader (which needs its vote) holding every batch.
    let wait = rill_broker::replica::engine::REJOIN_VOTE_WAIT.saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    let current = leader(&nodes.iter().collect::<Vec<_>>()).await.id;
    assert_ne!(current, wiped_id, "the wiped replica never campaigned");
    let position = nodes.iter().position(|n| n.id == current).unwrap();
    nodes.remove(position).stop().await;
    let pair: Vec<&Node> = nodes.iter().collect();
    let last = produce(leader(&pair).await, 70, 10).await;
    assert_converged(&pair, last.last().unwrap() + 1).await;
    for n in nodes {
        n.stop().await;
    }
}
