//! Idle cost on disk (issue 9): many small topics must not reserve a whole segment
//! each, and new partitions are refused with a clear error when the data directory
//! is short of space (`log_dir_free_bytes_min`), leaving nothing behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::MetadataRequest;
use kafka_protocol::ResponseError;
use rill_tests::raw::requests::{create_topic, topic_name};
use rill_tests::raw::RawConn;
use rill_tests::RilldProcess;

const MIB: u64 = 1024 * 1024;
/// Rill's default `segment.bytes` (128 MiB). The harness starts brokers with a
/// smaller `--log-segment-bytes` (and the flag cannot be repeated), so the topics
/// set the default back as their own `segment.bytes`: the same log configuration.
const DEFAULT_SEGMENT_BYTES: &str = "134217728";
const TOPICS: usize = 200;
/// 200 partitions at about 1 MiB each, plus metadata; a whole segment each would be
/// 25 GiB.
const ALLOCATED_MAX_BYTES: u64 = 300 * MIB;

/// Bytes the file system allocated for everything under `dir` (what `du` counts).
fn allocated_bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += meta.blocks() * 512;
        if meta.is_dir() {
            total += allocated_bytes_under(&entry.path());
        }
    }
    total
}

#[test]
fn two_hundred_idle_topics_with_default_segment_bytes_allocate_little_disk() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    for i in 0..TOPICS {
        let name = format!("idle-{i}");
        let response = conn.call(
            4,
            &create_topic(&name, 1, &[("segment.bytes", DEFAULT_SEGMENT_BYTES)]),
        );
        assert_eq!(
            response.topics[0].error_code,
            0,
            "create {name}: {:?}\n{}",
            response.topics[0].error_message,
            broker.log()
        );
        // Checked as we go, so that a regression to full preallocation fails after
        // a few topics instead of filling the disk of the machine running the test.
        if i % 10 == 9 {
            let allocated = allocated_bytes_under(&broker.data_dir());
            assert!(
                allocated < ALLOCATED_MAX_BYTES,
                "{} topics allocated {} MiB under the data directory (limit for {TOPICS}: {} MiB)",
                i + 1,
                allocated / MIB,
                ALLOCATED_MAX_BYTES / MIB
            );
        }
    }
    let allocated = allocated_bytes_under(&broker.data_dir());
    println!(
        "{TOPICS} one-partition topics: {:.1} MiB allocated under the data directory",
        allocated as f64 / MIB as f64
    );
}

#[test]
fn new_partitions_are_refused_with_kafka_storage_error_below_log_dir_free_bytes_min() {
    // More than any disk has: the check must refuse every creation.
    let broker = RilldProcess::start_with(&["--log-dir-free-bytes-min", &i64::MAX.to_string()]);
    let mut conn = RawConn::connect(broker.addr());
    let storage_error = ResponseError::KafkaStorageError.code();

    let response = conn.call(4, &create_topic("refused", 3, &[]));
    let topic = &response.topics[0];
    assert_eq!(topic.error_code, storage_error, "{:?}", topic.error_message);
    let message = topic
        .error_message
        .as_deref()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("log_dir_free_bytes_min"),
        "the error names the key: {message}"
    );

    // Auto-creation through Metadata is refused the same way.
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("auto")))
        ]))
        .with_allow_auto_topic_creation(true);
    let response = conn.call(12, &request);
    assert_eq!(response.topics[0].error_code, storage_error);

    // Nothing was created: no topic in Metadata, no partition directory, no metadata file.
    let response = conn.call(12, &MetadataRequest::default().with_topics(None));
    assert!(response.topics.is_empty(), "{:?}", response.topics);
    for entry in std::fs::read_dir(broker.data_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.starts_with("refused") && !name.starts_with("auto"),
            "left behind: {name}"
        );
    }
    let meta: Vec<_> = std::fs::read_dir(broker.data_dir().join("meta"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".topic"))
        .collect();
    assert!(meta.is_empty(), "topic metadata left behind: {meta:?}");
}
