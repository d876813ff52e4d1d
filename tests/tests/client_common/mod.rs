//! Helpers shared by the `client_*` integration tests (rill-client against a real rilld).

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rill_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, NewTopic, Offset, TopicPartition,
};

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin = Admin::new(ClientConfig::new(bootstrap)).expect("admin");
    admin
        .create_topics(&[NewTopic::new(topic, partitions)])
        .await
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
}

/// A consumer assigned to every partition of `topic`, positioned at the beginning.
pub async fn consumer_from_beginning(
    bootstrap: &str,
    topic: &str,
) -> (Consumer, Vec<TopicPartition>) {
    let mut consumer = Consumer::new(ConsumerConfig::new(bootstrap)).expect("consumer");
    let partitions = consumer.partitions_for(topic).await.expect("partitions");
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(&tps);
    for tp in &tps {
        consumer.seek(tp, Offset::Beginning).expect("seek");
    }
    (consumer, tps)
}

/// Reads every record of `topic` up to the end offsets it has now (all partitions),
/// failing the test if that takes longer than `timeout`.
pub async fn consume_all(bootstrap: &str, topic: &str, timeout: Duration) -> Vec<ConsumerRecord> {
    let (mut consumer, tps) = consumer_from_beginning(bootstrap, topic).await;
    let mut remaining = 0i64;
    for tp in &tps {
        remaining += consumer.latest_offset(tp).await.expect("latest")
            - consumer.earliest_offset(tp).await.expect("earliest");
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(remaining as usize);
    while (out.len() as i64) < remaining {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "read {} of {remaining} records before the timeout",
                    out.len()
                )
            });
        out.push(next.expect("stream ended").expect("record"));
    }
    out
}

static RILL: OnceLock<PathBuf> = OnceLock::new();

/// The `rill` CLI binary, built once per test process into the test's target dir and
/// profile (or `RILL_BIN` if set), like the harness does for `rilld`.
pub fn rill_bin() -> PathBuf {
    RILL.get_or_init(|| {
        if let Some(path) = std::env::var_os("RILL_BIN") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary is in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("profile dir has a parent");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("rill-tests is inside the workspace");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace)
            .args([
                "build",
                "-p",
                "rill-client",
                "--features",
                "cli",
                "--bin",
                "rill",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let status = command.status().expect("run cargo build for rill");
        assert!(status.success(), "building rill failed");
        profile_dir.join("rill")
    })
    .clone()
}
