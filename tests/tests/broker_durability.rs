//! Durability: acks=-1 means flushed; a SIGKILL loses nothing acknowledged; a
//! graceful stop flushes and exits 0; topics survive restarts.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{DescribeConfigsRequest, MetadataRequest, ProduceRequest};
use kafka_protocol::protocol::StrBytes;
use rill_tests::raw::requests::{create_topic, produce, topic_name};
use rill_tests::raw::{read_all, record_batch, RawConn};
use rill_tests::RilldProcess;

const PRODUCE_V: i16 = 9;

/// (base offset, error code) of a single-partition produce.
fn produce_one(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    values: &[&[u8]],
    acks: i16,
) -> (i64, i16) {
    let response = conn.call(
        PRODUCE_V,
        &produce(
            topic,
            partition,
            record_batch(values, 1_700_000_000_000),
            acks,
        ),
    );
    let p = &response.responses[0].partition_responses[0];
    (p.base_offset, p.error_code)
}

/// The durable end offset of partition 0 of `topic` from the admin port.
fn durable_end(broker: &RilldProcess, topic: &str) -> i64 {
    let json = broker.admin_get("/partitions");
    // {"partitions":[{"topic":"t","partition":0,...,"durable_end_offset":N,...}]}
    let key = format!("\"topic\":\"{topic}\"");
    let entry = json
        .split('{')
        .find(|e| e.contains(&key) && e.contains("\"partition\":0,"))
        .unwrap_or_else(|| panic!("{topic} missing in {json}"));
    let value = entry
        .split("\"durable_end_offset\":")
        .nth(1)
        .expect("field");
    value
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()
        .unwrap()
        .parse()
        .expect("number")
}

#[test]
fn sigkill_after_acks_all_produces_loses_no_acknowledged_record() {
    let mut broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(
        conn.call(4, &create_topic("durable", 2, &[])).topics[0].error_code,
        0
    );
    // Four producers on their own connections, concurrently, 50 batches each.
    let addr = broker.addr();
    let producers: Vec<_> = (0..4)
        .map(|producer| {
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(addr);
                let mut acked = Vec::new();
                for i in 0..50 {
                    let values: Vec<Vec<u8>> = (0..3)
                        .map(|r| format!("p{producer}-b{i}-r{r}").into_bytes())
                        .collect();
                    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
                    let partition = i % 2;
                    let (base, code) = produce_one(&mut conn, "durable", partition, &refs, -1);
                    assert_eq!(code, 0);
                    for (r, v) in values.into_iter().enumerate() {
                        acked.push((partition, base + r as i64, v));
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(i32, i64, Vec<u8>)> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer thread"))
        .collect();
    assert_eq!(acked.len(), 4 * 50 * 3);
    broker.kill();
    broker.restart();

    let mut conn = RawConn::connect(broker.addr());
    let mut stored = std::collections::HashMap::new();
    for partition in 0..2 {
        for (offset, value) in read_all(&mut conn, "durable", partition) {
            stored.insert((partition, offset), value);
        }
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(value),
            "acknowledged record at {partition}/{offset} lost or moved\n{}",
            broker.log()
        );
    }
    assert_eq!(stored.len(), acked.len(), "nothing unacknowledged appeared");
}

#[test]
fn no_acks_all_response_leaves_before_the_flush_that_covers_it() {
    // Every flush is held back 300 ms, so an answer sent before its flush would be
    // seen with the durable end offset still behind it.
    const DELAY_MS: u64 = 300;
    let broker = RilldProcess::start_with(&["--debug-flush-delay-ms", &DELAY_MS.to_string()]);
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(
        conn.call(4, &create_topic("ordered", 1, &[])).topics[0].error_code,
        0
    );

    // The observation can fail: acks=1 is answered before its flush.
    let started = Instant::now();
    let (base, code) = produce_one(&mut conn, "ordered", 0, &[b"a", b"b"], 1);
    let acks_one_latency = started.elapsed();
    // Offset 0 is the group's LEADER_CHANGE control batch.
    assert_eq!((base, code), (1, 0));
    assert!(
        durable_end(&broker, "ordered") < base + 2,
        "acks=1 should not wait for the flush"
    );
    assert!(acks_one_latency < Duration::from_millis(DELAY_MS));

    // acks=-1: when the answer arrives the flush covering it has completed.
    for round in 0..3 {
        let started = Instant::now();
        let (base, code) = produce_one(&mut conn, "ordered", 0, &[b"x", b"y", b"z"], -1);
        assert_eq!(code, 0);
        let durable = durable_end(&broker, "ordered");
        assert!(
            durable >= base + 3,
            "round {round}: answered at durable end {durable} < {}",
            base + 3
        );
        assert!(started.elapsed() >= Duration::from_millis(DELAY_MS));
    }

    // Group commit: 8 concurrent acks=-1 producers share flushes.
    let flushes_before = broker.metric("rill_log_flushes_total");
    let acks_before = broker.metric("rill_acks_all_responses_total");
    let addr = broker.addr();
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(addr);
                barrier.wait();
                for i in 0..3 {
                    let value = format!("t{t}-{i}");
                    let (base, code) =
                        produce_one(&mut conn, "ordered", 0, &[value.as_bytes()], -1);
                    assert_eq!(code, 0);
                    assert!(base >= 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    let flushes = broker.metric("rill_log_flushes_total") - flushes_before;
    let acks = broker.metric("rill_acks_all_responses_total") - acks_before;
    assert_eq!(acks, 24);
    assert!(
        flushes < acks,
        "{flushes} flushes for {acks} acks=-1 responses: no group commit"
    );
    eprintln!("group commit: {acks} acks=-1 responses shared {flushes} flushes");
}

#[test]
fn graceful_stop_flushes_and_exits_zero_and_topics_survive_restart() {
    for durability in ["fsync", "interval"] {
        let mut broker = RilldProcess::start_with(&[
            "--durability",
            durability,
            "--flush-interval-ms",
            "3600000",
            "--debug-flush-delay-ms",
            "300",
        ]);
        let mut conn = RawConn::connect(broker.addr());
        let created = conn.call(
            4,
            &create_topic("kept", 3, &[("retention.ms", "123456789")]),
        );
        assert_eq!(created.topics[0].error_code, 0);
        let metadata = |conn: &mut RawConn| {
            conn.call(
                12,
                &MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default(
                )
                .with_name(Some(topic_name("kept")))])),
            )
        };
        let before = metadata(&mut conn);
        // acks=1: answered before any flush; only the shutdown flush makes it durable
        // (with a one-hour interval in the `interval` case).
        for i in 0..10 {
            let value = format!("v{i}");
            assert_eq!(
                produce_one(&mut conn, "kept", 1, &[value.as_bytes()], 1),
                (i + 1, 0),
                "offset 0 is the LEADER_CHANGE control batch"
            );
        }
        // An acks=-1 produce still in flight when the signal arrives (with fsync,
        // its flush is held back 300 ms): it is finished and answered before exit.
        let id = conn.send(
            PRODUCE_V,
            &produce("kept", 2, record_batch(&[b"late"], 0), -1),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while broker.metric("rill_batches_in_total") < 11 {
            assert!(Instant::now() < deadline, "the late produce never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = broker.stop();
        assert!(
            status.success(),
            "{durability}: exit status {status}\n{}",
            broker.log()
        );
        let (got, response) = conn.recv::<ProduceRequest>(PRODUCE_V);
        assert_eq!(got, id);
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        drop(conn);
        assert!(broker.log().contains("flushed every partition"));

        broker.restart();
        let mut conn = RawConn::connect(broker.addr());
        let after = metadata(&mut conn);
        assert_eq!(
            after.topics[0].topic_id, before.topics[0].topic_id,
            "same topic id"
        );
        assert_eq!(after.topics[0].partitions.len(), 3);
        let values: Vec<Vec<u8>> = read_all(&mut conn, "kept", 1)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("v{i}").into_bytes()).collect();
        assert_eq!(values, expected, "{durability}");
        assert_eq!(read_all(&mut conn, "kept", 2).len(), 1);
        // Configs survived too.
        let described = conn.call(
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("kept"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
            ]),
        );
        let config = &described.results[0].configs[0];
        assert_eq!(config.value.as_ref().map(|v| v.as_str()), Some("123456789"));
        assert_eq!(config.config_source, 1, "TOPIC_CONFIG");
        let status = broker.interrupt();
        assert!(status.success(), "SIGINT: {status}");
    }
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let broker = RilldProcess::start();
    let output = std::process::Command::new(rill_tests::rilld_bin())
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .output()
        .expect("run a second rilld");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another rilld"), "{stderr}");
    // The first one is unaffected.
    let mut conn = RawConn::connect(broker.addr());
    assert_eq!(
        conn.call(4, &create_topic("still", 1, &[])).topics[0].error_code,
        0
    );
}

#[test]
fn a_topic_deleted_under_load_and_recreated_starts_empty_and_survives_restart() {
    use kafka_protocol::messages::DeleteTopicsRequest;
    let mut broker = RilldProcess::start();
    let mut admin = RawConn::connect(broker.addr());
    assert_eq!(
        admin.call(4, &create_topic("churn", 1, &[])).topics[0].error_code,
        0
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = broker.addr();
    let producer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut conn = RawConn::connect(addr);
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (_, code) = produce_one(&mut conn, "churn", 0, &[b"old"], -1);
                // 0 before the delete; UNKNOWN_TOPIC_OR_PARTITION or KAFKA_STORAGE_ERROR
                // while it happens; 0 again into the new topic.
                assert!(matches!(code, 0 | 3 | 56), "unexpected error {code}");
                answered += 1;
            }
            answered
        })
    };
    // Let some produces land, then delete and recreate while they continue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.metric("rill_batches_in_total") < 20 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let deleted = admin.call(
        4,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name("churn")])
            .with_timeout_ms(10_000),
    );
    assert_eq!(deleted.responses[0].error_code, 0);
    assert_eq!(
        admin.call(4, &create_topic("churn", 1, &[])).topics[0].error_code,
        0
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(producer.join().expect("producer") > 20);

    // The new topic starts at offset 0 (its LEADER_CHANGE control batch) with only
    // records produced after it existed, from offset 1 on.
    let before_restart = read_all(&mut admin, "churn", 0);
    assert!(before_restart
        .iter()
        .enumerate()
        .all(|(i, (o, _))| *o == i as i64 + 1));
    assert_eq!(
        produce_one(&mut admin, "churn", 0, &[b"new"], -1).0,
        before_restart.len() as i64 + 1
    );
    broker.kill();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    let after = read_all(&mut conn, "churn", 0);
    assert_eq!(after.len(), before_restart.len() + 1, "{}", broker.log());
    assert_eq!(after.last().map(|(_, v)| v.as_slice()), Some(&b"new"[..]));
}
