//! Disk faults under a real broker, injected by `rill-lossyfs`: an fsync that fails
//! with EIO, and a disk that fills up while partitions are created.

mod lossy_common;

use kafka_protocol::ResponseError;
use lossy_common::{metadata_error, read_all, topic_names, try_produce, Disk, CREATE_TOPICS_V};
use rill_lossyfs::MountOptions;
use rill_tests::raw::requests::create_topic;
use rill_tests::raw::RawConn;
use rill_tests::RilldProcess;

const MIB: u64 = 1024 * 1024;

fn storage_error() -> i16 {
    ResponseError::KafkaStorageError.code()
}

fn values(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}

/// Produces `batches` acks=-1 batches of `per_batch` records to partition 0 of `topic`,
/// each acknowledged; returns every record as (offset, value).
fn produce_acked(
    conn: &mut RawConn,
    topic: &str,
    tag: &str,
    batches: usize,
    per_batch: usize,
) -> Vec<(i64, Vec<u8>)> {
    let mut acked = Vec::new();
    for i in 0..batches {
        let batch = values(&format!("{tag}-{i}"), per_batch);
        let (base, code) = try_produce(conn, topic, 0, &batch, -1).expect("answer");
        assert_eq!(code, 0);
        acked.extend(
            batch
                .into_iter()
                .enumerate()
                .map(|(r, v)| (base + r as i64, v)),
        );
    }
    acked
}

/// Names in the data directory that start with `prefix` (partition directories).
fn entries_starting_with(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

// Failed before the replica engine: the broker answered 56 twice, then acknowledged
// again (its flush cleared the failure on the next successful fdatasync, which did not
// write the forgotten pages).
#[test]
fn failed_fsync_fails_the_produce_and_nothing_after_it_is_acknowledged() {
    let Some(mut disk) = Disk::mount("failed_fsync", MountOptions::default()) else {
        return;
    };
    let mut broker = RilldProcess::start_with_data_dir(disk.path(), &[]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(CREATE_TOPICS_V, &create_topic("eio", 1, &[]));
    assert_eq!(response.topics[0].error_code, 0);

    let acked = produce_acked(&mut conn, "eio", "before", 10, 3);

    let controls = disk.controls();
    controls.fail_next_fsync();
    let (_, code) = try_produce(&mut conn, "eio", 0, &values("failed", 3), -1).expect("answer");
    assert_eq!(
        controls.failed_fsyncs(),
        1,
        "the produce did not need the armed fsync"
    );
    assert_eq!(
        code,
        storage_error(),
        "the produce whose fsync failed must answer KAFKA_STORAGE_ERROR"
    );
    // Fail-stop: the pages of the failed range are gone (a later fsync succeeds
    // without writing them), so no later fsync may be trusted to cover that range.
    for i in 0..3 {
        let answer = try_produce(&mut conn, "eio", 0, &values(&format!("after-{i}"), 3), -1);
        assert_eq!(
            answer.map(|(_, code)| code),
            Some(storage_error()),
            "produce {i} after the failed fsync was not refused\n{}",
            broker.log()
        );
    }

    broker.kill();
    disk.power_cycle();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    let log = read_all(&mut conn, "eio", 0);
    for (offset, value) in &acked {
        assert!(
            log.iter().any(|(o, v)| o == offset && v == value),
            "acknowledged record at {offset} lost after the restart"
        );
    }
    let (base, code) =
        try_produce(&mut conn, "eio", 0, &values("recovered", 2), -1).expect("answer");
    assert_eq!(
        code, 0,
        "the partition takes writes again after the restart"
    );
    let log = read_all(&mut conn, "eio", 0);
    assert_eq!(log.last().map(|(o, _)| *o), Some(base + 1));
}

#[test]
fn create_topics_below_the_free_bytes_floor_is_refused_and_leaves_nothing() {
    // statfs of lossyfs reports free = limit - used: 8 MiB, below the 16 MiB floor.
    let Some(mut disk) = Disk::mount(
        "free_bytes_floor",
        MountOptions {
            size_limit_bytes: Some(8 * MIB),
        },
    ) else {
        return;
    };
    let mut broker = RilldProcess::start_with_data_dir(
        disk.path(),
        &["--log-dir-free-bytes-min", &(16 * MIB).to_string()],
    );
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(CREATE_TOPICS_V, &create_topic("floor", 8, &[]));
    let topic = &response.topics[0];
    assert_eq!(
        topic.error_code,
        storage_error(),
        "{:?}",
        topic.error_message
    );
    let message = topic
        .error_message
        .as_deref()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("log_dir_free_bytes_min"),
        "the error names the key: {message}"
    );
    assert!(!topic_names(&mut conn).contains(&"floor".to_string()));
    assert!(entries_starting_with(disk.path(), "floor").is_empty());

    broker.kill();
    disk.power_cycle();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    assert!(!topic_names(&mut conn).contains(&"floor".to_string()));
}

#[test]
fn create_topics_that_runs_out_of_space_midway_answers_an_error_and_leaves_no_trace() {
    // Room for a few partitions' first segment reservation (1 MiB each), not for 32:
    // the free-bytes floor is off, so the disk really fills during creation.
    let Some(mut disk) = Disk::mount(
        "enospc_midway",
        MountOptions {
            size_limit_bytes: Some(4 * MIB),
        },
    ) else {
        return;
    };
    let mut broker =
        RilldProcess::start_with_data_dir(disk.path(), &["--log-dir-free-bytes-min", "0"]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(CREATE_TOPICS_V, &create_topic("full", 32, &[]));
    let topic = &response.topics[0];
    assert_ne!(
        topic.error_code,
        0,
        "32 partitions fit in 4 MiB?\n{}",
        broker.log()
    );
    println!(
        "CreateTopics on a full disk answered error {} ({:?})",
        topic.error_code, topic.error_message
    );
    let no_trace = |conn: &mut RawConn, disk: &Disk, when: &str| {
        assert!(
            !topic_names(conn).contains(&"full".to_string()),
            "{when}: topic in Metadata"
        );
        assert_eq!(
            metadata_error(conn, "full"),
            ResponseError::UnknownTopicOrPartition.code(),
            "{when}"
        );
        let left = entries_starting_with(disk.path(), "full-");
        assert!(
            left.is_empty(),
            "{when}: partition directories left: {left:?}"
        );
    };
    no_trace(&mut conn, &disk, "after the failed creation");

    // A restart on the same disk (SIGKILL: nothing is flushed on the way out).
    broker.kill();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    no_trace(&mut conn, &disk, "after a restart");

    // And after a power loss on top: no half-created partition comes back.
    broker.kill();
    disk.power_cycle();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    no_trace(&mut conn, &disk, "after a power loss");

    // With room again, the same topic can be created and written.
    disk.controls().set_size_limit_bytes(None);
    let response = conn.call(CREATE_TOPICS_V, &create_topic("full", 32, &[]));
    assert_eq!(
        response.topics[0].error_code, 0,
        "{:?}",
        response.topics[0].error_message
    );
    let (_, code) = try_produce(&mut conn, "full", 31, &values("room", 1), -1).expect("answer");
    assert_eq!(code, 0);
}

/// Bytes of every file under `dir` (what lossyfs counts against its size limit).
fn file_bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            file_bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[test]
fn a_broker_restarted_on_a_full_disk_serves_reads_refuses_writes_and_recovers_with_space() {
    let Some(disk) = Disk::mount("full_restart", MountOptions::default()) else {
        return;
    };
    let mut broker =
        RilldProcess::start_with_data_dir(disk.path(), &["--log-dir-free-bytes-min", "0"]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(CREATE_TOPICS_V, &create_topic("kept", 1, &[]));
    assert_eq!(response.topics[0].error_code, 0);
    let acked = produce_acked(&mut conn, "kept", "kept", 5, 2);
    assert!(broker.stop().success());

    // The disk is full: not one more byte.
    let controls = disk.controls();
    controls.set_size_limit_bytes(Some(file_bytes_under(disk.path())));
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(read_all(&mut conn, "kept", 0), acked, "reads are served");
    let (_, code) = try_produce(&mut conn, "kept", 0, &values("refused", 1), -1).expect("answer");
    assert_eq!(
        code,
        storage_error(),
        "writes are refused with KAFKA_STORAGE_ERROR"
    );

    // Space comes back: the groups' waiting writes complete and produces work again.
    controls.set_size_limit_bytes(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, code) = try_produce(&mut conn, "kept", 0, &values("later", 1), -1).expect("answer");
        if code == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: {code}\n{}",
            broker.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    broker.kill();
}
