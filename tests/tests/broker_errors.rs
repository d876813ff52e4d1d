//! Every bad-input case gets its Kafka error code (or, for an oversized frame, a
//! closed connection), and none of them disturbs the broker or other connections.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest,
};
use kafka_protocol::ResponseError;
use rill_tests::raw::requests::{create_topic, fetch, produce, topic_name};
use rill_tests::raw::{encode_request, record_batch, RawConn};
use rill_tests::RilldProcess;

const PRODUCE_V: i16 = 9;
const FETCH_V: i16 = 12;

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// The broker still answers a fresh connection.
fn assert_alive(broker: &RilldProcess) {
    let mut conn = RawConn::connect(broker.addr());
    let response = conn.call(3, &ApiVersionsRequest::default());
    assert_eq!(response.error_code, 0, "broker log:\n{}", broker.log());
}

fn make_topic(conn: &mut RawConn, name: &str, configs: &[(&str, &str)]) {
    let response = conn.call(4, &create_topic(name, 1, configs));
    assert_eq!(
        response.topics[0].error_code, 0,
        "{:?}",
        response.topics[0].error_message
    );
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let broker = RilldProcess::start_with(&["--socket-request-max-bytes", "1048576"]);
    let mut bystander = RawConn::connect(broker.addr());
    let mut conn = RawConn::connect(broker.addr());
    // Announce a 512 MiB frame and send nothing else: the broker must refuse it from
    // the prefix alone (it cannot wait for, or allocate, the body).
    conn.send_bytes(&(512i32 << 20).to_be_bytes());
    assert!(
        conn.is_closed_by_peer(),
        "oversized frame did not close the connection"
    );
    // Just above the limit is refused too, even with the whole body sent.
    let mut conn = RawConn::connect(broker.addr());
    let mut frame = BytesMut::new();
    frame.put_i32(1_048_577);
    frame.put_bytes(0, 1_048_577);
    conn.send_bytes(&frame);
    assert!(conn.is_closed_by_peer());
    // A connection opened before is unaffected.
    assert_eq!(
        bystander.call(3, &ApiVersionsRequest::default()).error_code,
        0
    );
    assert_alive(&broker);
}

#[test]
fn large_non_produce_frame_is_refused_from_its_header() {
    // Default limits: 100 MiB for Produce, 4 MiB for every other API.
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    // A Metadata request (api key 3) announcing 5 MiB: refused as soon as the api key
    // has arrived, without waiting for (or buffering) the body.
    let mut header = BytesMut::new();
    header.put_i32(5 << 20);
    header.put_i16(3);
    conn.send_bytes(&header);
    assert!(
        conn.is_closed_by_peer(),
        "a 5 MiB Metadata frame did not close the connection"
    );
    assert_alive(&broker);
}

#[test]
fn unknown_api_key_gets_unsupported_version() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    // Api key 9999 with a v1 header: size, key, version, correlation id, client id.
    let mut frame = BytesMut::new();
    frame.put_i32(2 + 2 + 4 + 2);
    frame.put_i16(9999);
    frame.put_i16(0);
    frame.put_i32(77);
    frame.put_i16(-1);
    conn.send_bytes(&frame);
    let mut response = conn.recv_frame().expect("a response");
    assert_eq!(&response.split_to(4)[..], &77i32.to_be_bytes());
    assert_eq!(
        &response[..],
        &code(ResponseError::UnsupportedVersion).to_be_bytes()
    );
    // The connection stays usable.
    assert_eq!(conn.call(3, &ApiVersionsRequest::default()).error_code, 0);
}

#[test]
fn unknown_api_versions_version_is_answered_with_v0_and_the_table() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    // ApiVersions v99: header v2 (flexible), empty tagged fields, empty body.
    let mut frame = BytesMut::new();
    frame.put_i32(2 + 2 + 4 + 2 + 1);
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(99);
    frame.put_i32(5);
    frame.put_i16(-1);
    frame.put_u8(0);
    conn.send_bytes(&frame);
    // Decode as ApiVersions v0.
    let (id, response) = conn.recv::<ApiVersionsRequest>(0);
    assert_eq!(id, 5);
    assert_eq!(response.error_code, code(ResponseError::UnsupportedVersion));
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn unsupported_version_of_a_known_api_gets_unsupported_version() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    // Produce v2 is older than the served range (3..). The codec cannot encode v2,
    // so encode v3 and patch the version field (bytes 6..8: after size and api key).
    let mut frame = encode_request(
        ApiKey::Produce as i16,
        3,
        9,
        &produce("t", 0, record_batch(&[b"x"], 0), 1),
    )
    .to_vec();
    frame[6..8].copy_from_slice(&2i16.to_be_bytes());
    conn.send_bytes(&frame);
    let mut response = conn.recv_frame().expect("a response");
    assert_eq!(&response.split_to(4)[..], &9i32.to_be_bytes());
    assert_eq!(
        &response[..],
        &code(ResponseError::UnsupportedVersion).to_be_bytes()
    );
    assert_alive(&broker);
}

#[test]
fn corrupt_batch_gets_corrupt_message() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    make_topic(&mut conn, "corrupt", &[]);
    let mut batch = record_batch(&[b"hello", b"world"], 1_700_000_000_000).to_vec();
    let last = batch.len() - 1;
    batch[last] ^= 0xff; // a record byte: the CRC no longer matches
    let response = conn.call(PRODUCE_V, &produce("corrupt", 0, Bytes::from(batch), -1));
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(
        p.error_code,
        code(ResponseError::CorruptMessage),
        "{:?}",
        p.error_message
    );
    // A batch whose length field runs past the data.
    let mut short = record_batch(&[b"hello"], 0).to_vec();
    short.truncate(30);
    let response = conn.call(PRODUCE_V, &produce("corrupt", 0, Bytes::from(short), 1));
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, code(ResponseError::CorruptMessage));
    // Nothing was appended; a good batch still lands at offset 1 (after the
    // LEADER_CHANGE control batch at 0).
    let response = conn.call(
        PRODUCE_V,
        &produce("corrupt", 0, record_batch(&[b"ok"], 0), -1),
    );
    let p = &response.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 1));
}

#[test]
fn batch_over_max_message_bytes_gets_message_too_large() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    make_topic(&mut conn, "small", &[("max.message.bytes", "1000")]);
    let big = vec![b'x'; 2000];
    let response = conn.call(
        PRODUCE_V,
        &produce("small", 0, record_batch(&[&big], 0), -1),
    );
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, code(ResponseError::MessageTooLarge));
    let response = conn.call(
        PRODUCE_V,
        &produce("small", 0, record_batch(&[b"fits"], 0), -1),
    );
    assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
}

#[test]
fn unknown_topic_gets_unknown_topic_or_partition() {
    let broker = RilldProcess::start_with(&["--auto-create-topics", "false"]);
    let mut conn = RawConn::connect(broker.addr());
    let unknown = code(ResponseError::UnknownTopicOrPartition);

    let response = conn.call(PRODUCE_V, &produce("nope", 0, record_batch(&[b"x"], 0), 1));
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        unknown
    );

    let response = conn.call(FETCH_V, &fetch("nope", 0, 0, 0, 1));
    assert_eq!(response.responses[0].partitions[0].error_code, unknown);

    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name("nope"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)])]);
    let response = conn.call(7, &request);
    assert_eq!(response.topics[0].partitions[0].error_code, unknown);

    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("nope")))
        ]))
        .with_allow_auto_topic_creation(true);
    let response = conn.call(12, &request);
    assert_eq!(
        response.topics[0].error_code, unknown,
        "auto-creation is off"
    );

    // A partition that does not exist of a topic that does.
    make_topic(&mut conn, "one", &[]);
    let response = conn.call(PRODUCE_V, &produce("one", 5, record_batch(&[b"x"], 0), 1));
    assert_eq!(
        response.responses[0].partition_responses[0].error_code,
        unknown
    );
}

#[test]
fn fetch_beyond_the_log_gets_offset_out_of_range() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    make_topic(&mut conn, "oor", &[]);
    conn.call(
        PRODUCE_V,
        &produce("oor", 0, record_batch(&[b"a", b"b"], 0), -1),
    );
    let response = conn.call(FETCH_V, &fetch("oor", 0, 100, 0, 1));
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, code(ResponseError::OffsetOutOfRange));
    // Offset 0 is the LEADER_CHANGE control batch.
    assert_eq!(p.high_watermark, 3);
    let response = conn.call(FETCH_V, &fetch("oor", 0, -5, 0, 1));
    assert_eq!(
        response.responses[0].partitions[0].error_code,
        code(ResponseError::OffsetOutOfRange)
    );
}

#[test]
fn invalid_topic_settings_get_their_error_codes() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    make_topic(&mut conn, "exists", &[]);
    let cases: Vec<(CreateTopicsRequest, ResponseError)> = vec![
        (
            create_topic("exists", 1, &[]),
            ResponseError::TopicAlreadyExists,
        ),
        (
            create_topic("bad/name", 1, &[]),
            ResponseError::InvalidTopicException,
        ),
        (
            create_topic("zero", 0, &[]),
            ResponseError::InvalidPartitions,
        ),
        (
            create_topic("conf", 1, &[("retention.mss", "1")]),
            ResponseError::InvalidConfig,
        ),
        (
            create_topic("conf", 1, &[("segment.bytes", "10")]),
            ResponseError::InvalidConfig,
        ),
    ];
    for (request, expected) in cases {
        let response = conn.call(4, &request);
        assert_eq!(
            response.topics[0].error_code,
            code(expected),
            "{:?}",
            response.topics[0].name
        );
    }
    let mut rf3 = create_topic("rf3", 1, &[]);
    rf3.topics[0].replication_factor = 3;
    let response = conn.call(4, &rf3);
    assert_eq!(
        response.topics[0].error_code,
        code(ResponseError::InvalidReplicationFactor)
    );
}

#[test]
fn undecodable_body_closes_only_that_connection() {
    let broker = RilldProcess::start();
    let mut bystander = RawConn::connect(broker.addr());
    let mut conn = RawConn::connect(broker.addr());
    // A Produce v9 header followed by garbage claiming a huge topic array.
    let mut frame = BytesMut::new();
    let body: &[u8] = &[
        0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x27, 0x10, 0xff, 0xff, 0xff, 0x0f,
    ];
    frame.put_i32((2 + 2 + 4 + 2 + 1 + body.len()) as i32);
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(9);
    frame.put_i32(1);
    frame.put_i16(-1);
    frame.put_u8(0);
    frame.put_slice(body);
    conn.send_bytes(&frame);
    assert!(conn.is_closed_by_peer());
    assert_eq!(
        bystander.call(3, &ApiVersionsRequest::default()).error_code,
        0
    );
    let _ = (ProduceRequest::default(), FetchRequest::default());
    assert_alive(&broker);
}

/// The 18-byte Metadata v0 request whose topic-array count is 0x7fffffff: kafka-protocol's own
/// decoder preallocates that count (about 150 GB, and the process aborts). Rill's decoder
/// refuses it from the count and the bytes left; the connection is closed and the broker
/// keeps serving everyone else.
#[test]
fn metadata_v0_with_a_huge_topic_count_closes_only_that_connection() {
    let broker = RilldProcess::start();
    let mut bystander = RawConn::connect(broker.addr());
    let mut conn = RawConn::connect(broker.addr());
    let mut frame = BytesMut::new();
    frame.put_i32(14); // size of what follows
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(0); // version
    frame.put_i32(7); // correlation id
    frame.put_i16(-1); // null client id
    frame.put_i32(0x7fff_ffff); // topics array count
    assert_eq!(frame.len(), 18);
    conn.send_bytes(&frame);
    assert!(conn.is_closed_by_peer());
    assert_eq!(
        bystander.call(3, &ApiVersionsRequest::default()).error_code,
        0
    );
    assert_alive(&broker);
    assert!(
        broker.log().contains("undecodable Metadata v0 request"),
        "the broker says why it closed: {}",
        broker.log()
    );
}

/// xorshift64*: a tiny deterministic generator (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_mutated_frames_never_crash_the_broker_or_leak_into_other_connections() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut rng = Rng(seed);
    let broker = RilldProcess::start_with(&["--socket-request-max-bytes", "65536"]);
    let mut bystander = RawConn::connect(broker.addr());
    make_topic(&mut bystander, "fuzz", &[]);
    let ok = bystander.call(
        PRODUCE_V,
        &produce("fuzz", 0, record_batch(&[b"kept"], 0), -1),
    );
    assert_eq!(ok.responses[0].partition_responses[0].error_code, 0);

    // Valid frames of several APIs and versions to mutate.
    let seeds: Vec<Bytes> = vec![
        encode_request(
            ApiKey::Produce as i16,
            PRODUCE_V,
            1,
            &produce("fuzz", 0, record_batch(&[b"a", b"b"], 0), 1),
        ),
        encode_request(
            ApiKey::Produce as i16,
            3,
            1,
            &produce("fuzz", 0, record_batch(&[b"c"], 0), -1),
        ),
        encode_request(ApiKey::Fetch as i16, FETCH_V, 1, &fetch("fuzz", 0, 0, 0, 1)),
        encode_request(ApiKey::Fetch as i16, 4, 1, &fetch("fuzz", 0, 0, 0, 1)),
        encode_request(
            ApiKey::Metadata as i16,
            12,
            1,
            &MetadataRequest::default().with_topics(None),
        ),
        encode_request(
            ApiKey::CreateTopics as i16,
            4,
            1,
            &create_topic("fz", 2, &[("retention.ms", "1000")]),
        ),
        encode_request(
            ApiKey::ApiVersions as i16,
            3,
            1,
            &ApiVersionsRequest::default(),
        ),
    ];
    let frames = 5_000;
    let mut conn = RawConn::connect(broker.addr());
    for i in 0..frames {
        let mut frame = seeds[rng.below(seeds.len())].to_vec();
        match rng.below(5) {
            // Flip a few bytes after the size prefix.
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = 4 + rng.below(frame.len() - 4);
                    frame[at] = rng.next() as u8;
                }
            }
            // Huge counts: overwrite 4 bytes with 0x7fffffff / 0xffffffff.
            2 => {
                let at = 4 + rng.below(frame.len() - 8);
                let value: u32 = if rng.below(2) == 0 {
                    0x7fff_ffff
                } else {
                    0xffff_ffff
                };
                frame[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
            // Truncate the body but keep the prefix honest.
            3 => {
                let len = 4 + rng.below(frame.len() - 4);
                frame.truncate(len);
                let size = (len - 4) as i32;
                frame[..4].copy_from_slice(&size.to_be_bytes());
            }
            // Pure noise.
            _ => {
                let len = rng.below(200);
                frame = (len as i32).to_be_bytes().to_vec();
                frame.extend((0..len).map(|_| rng.next() as u8));
            }
        }
        if !conn.try_send_bytes(&frame) {
            // Closed by the broker after an earlier bad frame: expected.
            conn = RawConn::connect(broker.addr());
        }
        // Every 50 frames, start over on a fresh connection (the broker may have
        // closed this one, which is fine) and check the bystander still works.
        if i % 50 == 49 {
            conn = RawConn::connect(broker.addr());
            let response = bystander.call(3, &ApiVersionsRequest::default());
            assert_eq!(
                response.error_code, 0,
                "seed {seed}: bystander broken after {i} frames"
            );
        }
    }
    drop(conn);
    let log = broker.log();
    assert!(
        !log.contains("panicked"),
        "seed {seed}: a handler panicked:\n{log}"
    );
    let fetched = bystander.call(FETCH_V, &fetch("fuzz", 0, 0, 0, 1));
    let records = fetched.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(
        rill_tests::raw::decode_records(&records)[0],
        (1, b"kept".to_vec()),
        "seed {seed}: data intact"
    );
    assert_alive(&broker);
}

/// A data directory belongs to the broker that created it: starting another node id on
/// it is refused with an error naming both ids (its votes and replicas are not the
/// newcomer's to use), and the owner still starts on it afterwards.
#[test]
fn a_data_directory_refuses_another_node_id() {
    let mut owner = RilldProcess::start_with(&["--node-id", "1"]);
    owner.stop();
    let mut intruder = std::process::Command::new(rill_tests::rilld_bin())
        .arg("--data-dir")
        .arg(owner.data_dir())
        .args(["--node-id", "2", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run rilld");
    // Bounded: a broker that accepted the directory would run until killed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = intruder.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = intruder.kill();
            let _ = intruder.wait();
            panic!("rilld kept running as node 2 on node 1's data directory");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut intruder.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "rilld started as node 2:\n{stderr}");
    assert!(
        stderr.contains("belongs to node_id 1") && stderr.contains("not to node_id 2"),
        "{stderr}"
    );
    owner.restart();
    assert_alive(&owner);
}
