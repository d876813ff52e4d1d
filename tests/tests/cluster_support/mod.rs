//! Helpers shared by the cluster test files (`cluster.rs`, `cluster_topics.rs`): three
//! `rilld` processes on loopback joined through `--controller-voters`, and questions
//! asked of them through rill-client's Admin.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rill_client::{Admin, ClientConfig, PartitionInfo};
use rill_tests::RilldProcess;

/// A free loopback port (bound and released: the broker binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Three brokers, ids 1..=3 (`brokers[id - 1]`), every one a controller voter.
pub struct Cluster {
    pub brokers: Vec<RilldProcess>,
}

impl Cluster {
    /// Starts three brokers with the harness defaults.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Starts three brokers, each with `extra` flags too.
    pub fn start_with(extra: &[&str]) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let id = (i + 1).to_string();
                let listen = format!("127.0.0.1:{port}");
                let mut args = vec![
                    "--node-id",
                    &id,
                    "--controller-voters",
                    &voters,
                    "--inter-broker-listen",
                    &listen,
                ];
                args.extend_from_slice(extra);
                RilldProcess::start_with(&args)
            })
            .collect();
        Cluster { brokers }
    }

    /// The running brokers' client addresses, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_without(&[])
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

    /// Broker `id`.
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

/// `topic`'s partitions as Metadata through `bootstrap` describes them.
pub async fn partitions_of(bootstrap: &str, topic: &str) -> Option<Vec<PartitionInfo>> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).ok()?;
    let topics = admin.describe_topics(&[topic]).await.ok()?;
    Some(topics.first()?.partitions.clone())
}

/// The broker id leading `partition` of `topic`, per Metadata.
pub async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> Option<i32> {
    let partitions = partitions_of(bootstrap, topic).await?;
    let leader = partitions.get(partition as usize)?.leader;
    (leader >= 0).then_some(leader)
}

/// The leader of `partition`, waiting up to 20 s for one (a restarted broker knows no
/// topic until it has replayed the metadata log).
pub async fn wait_leader(cluster: &Cluster, topic: &str, partition: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(leader) = leader_of(&cluster.bootstrap(), topic, partition).await {
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

/// The directory of this broker's replica of `topic`-`partition`, if it has one: a
/// cluster names replicas `<topic>-<partition>.<topic id>`.
pub fn replica_dir(data_dir: &Path, topic: &str, partition: i32) -> Option<PathBuf> {
    let prefix = format!("{topic}-{partition}.");
    std::fs::read_dir(data_dir)
        .ok()?
        .flatten()
        .find(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
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
