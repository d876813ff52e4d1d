//! Protocol behaviour of the real `rilld` seen through raw requests: pipelining,
//! Fetch long polls and limits, ListOffsets, OffsetForLeaderEpoch, DescribeCluster,
//! CreateTopics validate_only, acks=0, the connection limit.

use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiVersionsRequest, BrokerId, CreateTopicsRequest, DescribeClusterRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, OffsetForLeaderEpochRequest, ProduceRequest,
};
use rill_tests::raw::requests::{create_topic, fetch, produce, topic_name};
use rill_tests::raw::{decode_records, record_batch, RawConn};
use rill_tests::RilldProcess;

const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;
const TS: i64 = 1_700_000_000_000;

fn setup(topic: &str, partitions: i32) -> (RilldProcess, RawConn) {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(4, &create_topic(topic, partitions, &[]));
    assert_eq!(response.topics[0].error_code, 0);
    (broker, conn)
}

fn produce_values(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    values: &[&[u8]],
    ts: i64,
) -> i64 {
    let response = conn.call(
        PRODUCE_V,
        &produce(topic, partition, record_batch(values, ts), -1),
    );
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0);
    p.base_offset
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (broker, mut conn) = setup("pipe", 1);
    // 60 requests of four kinds written back to back before reading anything; the
    // slow ones (acks=-1 produce waits for a flush, fetch waits up to 200 ms) must
    // not let faster later ones overtake them.
    let mut expected = Vec::new();
    for i in 0..15 {
        expected.push((
            conn.send(
                PRODUCE_V,
                &produce("pipe", 0, record_batch(&[b"p"], TS), -1),
            ),
            'P',
        ));
        expected.push((conn.send(3, &ApiVersionsRequest::default()), 'A'));
        expected.push((
            conn.send(FETCH_V, &fetch("pipe", 0, 1_000 + i, 200, 1)),
            'F',
        ));
        expected.push((
            conn.send(12, &MetadataRequest::default().with_topics(None)),
            'M',
        ));
    }
    for (id, kind) in expected {
        let got = match kind {
            'P' => conn.recv::<ProduceRequest>(PRODUCE_V).0,
            'A' => conn.recv::<ApiVersionsRequest>(3).0,
            'F' => conn.recv::<FetchRequest>(FETCH_V).0,
            _ => conn.recv::<MetadataRequest>(12).0,
        };
        assert_eq!(got, id, "responses out of order");
    }
    // Per-API request metrics counted them.
    let metrics = broker.admin_get("/metrics");
    assert!(
        metrics.contains("rill_request_duration_seconds_count{api=\"Produce\"} 15"),
        "{metrics}"
    );
    assert!(metrics.contains("rill_request_duration_seconds_count{api=\"Fetch\"} 15"));
}

#[test]
fn fetch_long_poll_is_woken_by_an_append_and_times_out_when_idle() {
    let (broker, mut conn) = setup("poll", 1);
    // Idle: answered empty after about max_wait_ms.
    let started = Instant::now();
    // From offset 1: offset 0 is the LEADER_CHANGE control batch.
    let response = conn.call(FETCH_V, &fetch("poll", 0, 1, 300, 1));
    let waited = started.elapsed();
    assert!(response.responses[0].partitions[0]
        .records
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    assert!(
        waited >= Duration::from_millis(290),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3));

    // A 10 s poll answered as soon as another connection produces.
    let id = conn.send(FETCH_V, &fetch("poll", 0, 1, 10_000, 1));
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    let mut producer = RawConn::connect(broker.addr());
    produce_values(&mut producer, "poll", 0, &[b"wake"], TS);
    let (got, response) = conn.recv::<FetchRequest>(FETCH_V);
    assert_eq!(got, id);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "long poll not woken"
    );
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(decode_records(&records), vec![(1, b"wake".to_vec())]);

    // min_bytes larger than what arrives: waits for the whole max_wait.
    let started = Instant::now();
    let response = conn.call(FETCH_V, &fetch("poll", 0, 0, 400, 1 << 20));
    assert!(started.elapsed() >= Duration::from_millis(390));
    assert!(!response.responses[0].partitions[0]
        .records
        .clone()
        .unwrap()
        .is_empty());
}

#[test]
fn fetch_from_the_middle_of_a_batch_returns_the_whole_batch() {
    let (_broker, mut conn) = setup("mid", 1);
    let values: Vec<Vec<u8>> = (0..10).map(|i| format!("r{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    // Offset 0 is the LEADER_CHANGE control batch: the batch covers 1..=10.
    assert_eq!(produce_values(&mut conn, "mid", 0, &refs, TS), 1);
    let response = conn.call(FETCH_V, &fetch("mid", 0, 5, 0, 1));
    let p = &response.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 11));
    let raw = p.records.clone().unwrap();
    // The batch as stored: base offset 1 in its first 8 bytes, and all 10 records.
    assert_eq!(raw.len(), record_batch(&refs, TS).len(), "the whole batch");
    assert_eq!(&raw[..8], &1i64.to_be_bytes());
    let records = decode_records(&raw);
    assert_eq!(
        records.len(),
        10,
        "whole batch, starting at its base offset"
    );
    assert_eq!(records[0].0, 1);
}

#[test]
fn fetch_respects_partition_and_response_byte_limits() {
    let (_broker, mut conn) = setup("limits", 2);
    let value = vec![b'v'; 1000];
    for partition in 0..2 {
        for _ in 0..20 {
            produce_values(&mut conn, "limits", partition, &[&value], TS);
        }
    }
    let one_batch = record_batch(&[&value], TS).len();
    // partition_max_bytes of 3 batches: at most 3 whole batches come back (from
    // offset 1, after the LEADER_CHANGE control batch).
    let mut request = fetch("limits", 0, 1, 0, 1);
    request.topics[0].partitions[0].partition_max_bytes = (3 * one_batch) as i32;
    let response = conn.call(FETCH_V, &request);
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(records.len(), 3 * one_batch);
    // A limit smaller than one batch still returns the first batch (progress).
    request.topics[0].partitions[0].partition_max_bytes = 10;
    let response = conn.call(FETCH_V, &request);
    assert_eq!(
        response.responses[0].partitions[0]
            .records
            .clone()
            .unwrap()
            .len(),
        one_batch
    );
    // Response max_bytes of 5 batches over two partitions: 5 batches in total.
    let mut both = fetch("limits", 0, 1, 0, 1);
    let mut second = both.topics[0].partitions[0].clone();
    second.partition = 1;
    both.topics[0].partitions.push(second);
    both.max_bytes = (5 * one_batch) as i32;
    let response = conn.call(FETCH_V, &both);
    let total: usize = response.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
        .sum();
    assert_eq!(total, 5 * one_batch);
}

#[test]
fn list_offsets_answers_earliest_latest_by_timestamp_and_max_timestamp() {
    let (_broker, mut conn) = setup("times", 1);
    // Offset 0: the LEADER_CHANGE control batch (no timestamp). Offsets 1..=3 at TS,
    // TS+1, TS+2; 4..=6 at TS+100..=TS+102; one late batch with an older timestamp
    // at offset 7.
    produce_values(&mut conn, "times", 0, &[b"a", b"b", b"c"], TS);
    produce_values(&mut conn, "times", 0, &[b"d", b"e", b"f"], TS + 100);
    produce_values(&mut conn, "times", 0, &[b"g"], TS + 50);
    let query = |conn: &mut RawConn, timestamp: i64| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("times"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let response = conn.call(7, &request);
        let p = &response.topics[0].partitions[0];
        assert_eq!(p.error_code, 0);
        (p.offset, p.timestamp)
    };
    assert_eq!(query(&mut conn, -2).0, 0, "earliest");
    assert_eq!(query(&mut conn, -1).0, 8, "latest");
    assert_eq!(query(&mut conn, TS + 1), (2, TS + 1), "exact record");
    assert_eq!(query(&mut conn, TS + 3).0, 4, "first at or after");
    assert_eq!(query(&mut conn, TS + 1_000), (-1, -1), "none after");
    assert_eq!(query(&mut conn, -3), (6, TS + 102), "max timestamp");
}

#[test]
fn offset_for_leader_epoch_and_describe_cluster_describe_the_single_node() {
    let (broker, mut conn) = setup("epochs", 1);
    produce_values(&mut conn, "epochs", 0, &[b"a", b"b"], TS);
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic_name("epochs"))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(-1)
                .with_leader_epoch(1)])]);
    let response = conn.call(4, &request);
    let p = &response.topics[0].partitions[0];
    // The group's first term is epoch 1: its LEADER_CHANGE batch at 0, records 1..=2.
    assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (0, 1, 3));
    let mut older = request.clone();
    older.topics[0].partitions[0].leader_epoch = 0;
    let p = &conn.call(4, &older).topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_epoch, p.end_offset), (0, -1, -1));

    let cluster = conn.call(1, &DescribeClusterRequest::default());
    assert_eq!(cluster.error_code, 0);
    assert_eq!(cluster.controller_id, BrokerId(1));
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(cluster.brokers[0].port, i32::from(broker.addr().port()));
    let metadata = conn.call(12, &MetadataRequest::default().with_topics(None));
    assert_eq!(metadata.cluster_id, Some(cluster.cluster_id));
}

#[test]
fn create_topics_validate_only_creates_nothing_and_acks_zero_gets_no_response() {
    let (_broker, mut conn) = setup("acks", 1);
    let mut request: CreateTopicsRequest = create_topic("dry", 4, &[]);
    request.validate_only = true;
    let response = conn.call(4, &request);
    assert_eq!(response.topics[0].error_code, 0);
    let metadata = conn.call(
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name("dry")))
            ]))
            .with_allow_auto_topic_creation(false),
    );
    assert_eq!(
        metadata.topics[0].error_code, 3,
        "validate_only must not create"
    );

    // acks=0 produce, then ApiVersions: the next frame read is the ApiVersions answer.
    conn.send(
        PRODUCE_V,
        &produce("acks", 0, record_batch(&[b"fire"], TS), 0),
    );
    let id = conn.send(3, &ApiVersionsRequest::default());
    assert_eq!(conn.recv::<ApiVersionsRequest>(3).0, id);
    // From offset 1 (0 is the LEADER_CHANGE control batch, which alone would satisfy
    // min_bytes before the acks=0 record commits): the long poll waits for "fire".
    let response = conn.call(FETCH_V, &fetch("acks", 0, 1, 1000, 1));
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(decode_records(&records), vec![(1, b"fire".to_vec())]);
}

#[test]
fn connections_over_the_limit_are_closed_and_others_keep_working() {
    let broker = RilldProcess::start_with(&["--connections-max", "2"]);
    let mut first = RawConn::connect(broker.addr());
    let mut second = RawConn::connect(broker.addr());
    assert_eq!(first.call(3, &ApiVersionsRequest::default()).error_code, 0);
    assert_eq!(second.call(3, &ApiVersionsRequest::default()).error_code, 0);
    let mut third = RawConn::connect(broker.addr());
    assert!(
        third.is_closed_by_peer(),
        "third connection must be refused"
    );
    assert_eq!(first.call(3, &ApiVersionsRequest::default()).error_code, 0);
    drop(second);
    // The freed slot is reusable once the broker has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut conn = RawConn::connect(broker.addr());
        conn.send(3, &ApiVersionsRequest::default());
        if conn.recv_frame().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(broker.metric("rill_connections_refused_total") >= 1);
}

#[test]
fn fetch_v13_and_later_address_topics_by_id() {
    let (_broker, mut conn) = setup("byid", 1);
    produce_values(&mut conn, "byid", 0, &[b"id"], TS);
    let metadata = conn.call(12, &MetadataRequest::default().with_topics(None));
    let topic_id = metadata.topics[0].topic_id;
    assert!(!topic_id.is_nil());
    let mut request = fetch("byid", 0, 0, 0, 1);
    request.topics[0].topic = Default::default();
    request.topics[0].topic_id = topic_id;
    let response = conn.call(16, &request);
    assert_eq!(response.responses[0].topic_id, topic_id);
    let records = response.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(decode_records(&records), vec![(1, b"id".to_vec())]);
    // An unknown id.
    request.topics[0].topic_id = Default::default();
    let response = conn.call(16, &request);
    assert_eq!(
        response.responses[0].partitions[0].error_code, 100,
        "UNKNOWN_TOPIC_ID"
    );
}

#[test]
fn retention_bytes_deletes_old_segments_and_advances_the_log_start() {
    let broker = RilldProcess::start_with(&["--retention-check-interval-ms", "100"]);
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(
        4,
        &create_topic(
            "retained",
            1,
            &[("segment.bytes", "1048576"), ("retention.bytes", "2097152")],
        ),
    );
    assert_eq!(response.topics[0].error_code, 0);
    // 100 batches of ~40 KB: about four 1 MiB segments.
    let value = vec![b'r'; 40_000];
    for _ in 0..100 {
        produce_values(&mut conn, "retained", 0, &[&value], TS);
    }
    let earliest = |conn: &mut RawConn| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("retained"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-2)])]);
        conn.call(7, &request).topics[0].partitions[0].offset
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while earliest(&mut conn) == 0 {
        assert!(
            Instant::now() < deadline,
            "retention never ran:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = earliest(&mut conn);
    assert!(start > 0 && start < 100);
    // Fetching below the log start is out of range; from it works.
    let response = conn.call(FETCH_V, &fetch("retained", 0, 0, 0, 1));
    assert_eq!(response.responses[0].partitions[0].error_code, 1);
    let response = conn.call(FETCH_V, &fetch("retained", 0, start, 0, 1));
    let p = &response.responses[0].partitions[0];
    assert_eq!((p.error_code, p.log_start_offset), (0, start));
}

#[test]
fn an_acks_all_answer_means_other_connections_already_see_the_records() {
    let (broker, mut producer) = setup("ryw", 1);
    let mut reader = RawConn::connect(broker.addr());
    let latest = |conn: &mut RawConn| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("ryw"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1)])]);
        conn.call(7, &request).topics[0].partitions[0].offset
    };
    for i in 0..200 {
        let base = produce_values(&mut producer, "ryw", 0, &[b"x"], TS);
        assert_eq!(base, i + 1, "offset 0 is the LEADER_CHANGE control batch");
        assert!(
            latest(&mut reader) > base,
            "record {base} acknowledged but not visible"
        );
    }
}
