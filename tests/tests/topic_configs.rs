//! Topic configs, as third-party clients use them, against real `rilld` processes:
//!
//! * kafka-python's `KafkaAdminClient` (single broker): CreateTopics with configs
//!   (`compression.type=lz4` accepted, an unknown key and a bad value refused naming the
//!   key), IncrementalAlterConfigs (SET, APPEND, DELETE), validate_only, the legacy
//!   AlterConfigs, DescribeConfigs with sources; `compression.type` and
//!   `message.timestamp.type=LogAppendTime` seen in the stored batches and by kafka-python's
//!   consumer; DeleteRecords moving the earliest offset; all of it after a restart too.
//! * librdkafka's admin API and `rill topic alter` on a 3-broker cluster: altered configs
//!   visible in DescribeConfigs on every broker, also after every broker restarted;
//!   DeleteRecords moves the log start on every replica.
//! * Bad input (10,000 configs in one request, a 1 MB value, wrong types, read-only broker
//!   configs): clear errors, and the broker keeps serving.

mod cluster_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::{wait_registered, Cluster};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, MetadataRequest,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use rill_tests::raw::{requests, RawConn};
use rill_tests::{rill_bin, run_piped, RilldProcess};
use serde_json::Value;

/// Kafka's INVALID_CONFIG, INVALID_REQUEST and UNKNOWN_TOPIC_OR_PARTITION.
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Kafka's ConfigResource types and ConfigSource values.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;
/// Record batch attributes: codec bits and the LogAppendTime bit.
const ATTR_CODEC_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const CODEC_GZIP: i16 = 1;

fn python() -> PathBuf {
    match std::env::var_os("RILL_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "RILL_TEST_PYTHON is not set: run the tests through scripts/test, which installs \
             kafka-python into a virtual environment and names its python there"
        ),
    }
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// DescribeConfigs of one topic through `conn`.
fn describe_topic(conn: &mut RawConn, topic: &str) -> DescribeConfigsResponse {
    conn.call(
        4,
        &DescribeConfigsRequest::default()
            .with_include_synonyms(true)
            .with_resources(vec![DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(text(topic))
                .with_configuration_keys(None)]),
    )
}

/// (value, source) of `key` in a DescribeConfigs answer for one topic.
fn config_of(response: &DescribeConfigsResponse, key: &str) -> Option<(Option<String>, i8)> {
    let result = response.results.first()?;
    result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .map(|c| (c.value.as_ref().map(|v| v.to_string()), c.config_source))
}

/// Every line of the kafka-python script's output as JSON, keyed by step.
fn run_kafka_python_admin(bootstrap: &str, topic: &str) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("kafka_python_admin.py");
    let mut command = Command::new(python());
    command.arg(script).arg(bootstrap).arg(topic);
    let output = run_piped(command, None, "kafka_python_admin.py");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "kafka-python admin script failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn step<'a>(steps: &'a [Value], name: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("step {name} missing: {steps:?}"))
}

/// The attributes of every batch of partition 0 (raw Fetch), control batches left out.
fn stored_batch_attributes(conn: &mut RawConn, topic: &str, from_offset: i64) -> Vec<i16> {
    let response = conn.call(12, &requests::fetch(topic, 0, from_offset, 0, 1));
    let records: Bytes = response.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let mut attributes = Vec::new();
    let mut pos = 0;
    while pos + 61 <= records.len() {
        let length = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let attrs = i16::from_be_bytes(records[pos + 21..pos + 23].try_into().unwrap());
        if attrs & 0x20 == 0 {
            attributes.push(attrs);
        }
        pos += 12 + length;
    }
    attributes
}

#[test]
fn kafka_python_creates_alters_describes_and_deletes_records() {
    let mut broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let steps = run_kafka_python_admin(&bootstrap, "kp-configs");
    let log = || broker.log();

    assert_eq!(
        step(&steps, "create")["result"]["topics"][0]["error_code"],
        0,
        "{}",
        log()
    );
    // An unknown key and a bad value are refused, naming the key.
    for (name, key) in [
        ("create_unknown", "retention.mss"),
        ("create_bad_value", "segment.ms"),
    ] {
        let topic = &step(&steps, name)["result"]["topics"][0];
        assert_eq!(topic["error_code"], INVALID_CONFIG, "{name}: {topic}");
        let message = topic["error_message"].as_str().unwrap_or_default();
        assert!(message.contains(key), "{name}: {message}");
    }
    for name in ["alter_incremental", "alter_validate_only", "alter_legacy"] {
        assert_eq!(
            step(&steps, name)["result"]["topic"]["kp-configs"],
            "OK",
            "{name}: {steps:?}"
        );
    }
    // validate_only changed nothing.
    assert_eq!(
        step(&steps, "alter_validate_only")["after"]["value"],
        "1048588"
    );
    let described = &step(&steps, "describe")["configs"];
    assert_eq!(described["compression.type"]["value"], "gzip");
    assert_eq!(described["segment.ms"]["value"], "600000");
    assert_eq!(described["cleanup.policy"]["value"], "delete,compact");
    assert_eq!(described["min.insync.replicas"]["value"], "1");
    assert_eq!(
        described["message.timestamp.type"]["value"],
        "LogAppendTime"
    );
    // DELETE returned retention.ms to the broker default (7 days).
    assert_eq!(described["retention.ms"]["value"], "604800000");
    assert_eq!(described["retention.ms"]["source"], "DEFAULT_CONFIG");
    assert_eq!(described["segment.ms"]["source"], "DYNAMIC_TOPIC_CONFIG");

    // LogAppendTime: the Produce answer and every consumed record carry the broker's time.
    let produced = step(&steps, "produce");
    let consumed = step(&steps, "consume");
    let answer_timestamps: Vec<i64> = produced["timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(
        answer_timestamps.iter().all(|t| *t > 1_000_100),
        "Produce answered the producer's timestamps, not log-append time: {answer_timestamps:?}"
    );
    assert_eq!(consumed["values"].as_array().unwrap().len(), 10);
    assert!(
        consumed["timestamp_types"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == 1),
        "timestamp types: {consumed}"
    );
    // The producer sent uncompressed batches; the topic stores them gzip-compressed and
    // stamped with log-append time.
    let mut conn = RawConn::connect(broker.addr());
    let attributes = stored_batch_attributes(&mut conn, "kp-configs", 5);
    assert!(!attributes.is_empty());
    for attrs in &attributes {
        assert_eq!(attrs & ATTR_CODEC_MASK, CODEC_GZIP, "attributes {attrs:#x}");
        assert_ne!(attrs & ATTR_LOG_APPEND_TIME, 0, "attributes {attrs:#x}");
    }
    // DeleteRecords moved the earliest offset.
    let deleted = &step(&steps, "delete_records")["result"];
    let deleted = deleted.as_object().unwrap().values().next().unwrap();
    assert_eq!(deleted["low_watermark"], 5, "{deleted}");
    assert_eq!(step(&steps, "earliest")["offset"], 5);

    // Everything survives a restart.
    broker.stop();
    broker.restart();
    let mut conn = RawConn::connect(broker.addr());
    let described = describe_topic(&mut conn, "kp-configs");
    assert_eq!(
        config_of(&described, "compression.type"),
        Some((Some("gzip".into()), SOURCE_TOPIC))
    );
    assert_eq!(
        config_of(&described, "cleanup.policy"),
        Some((Some("delete,compact".into()), SOURCE_TOPIC))
    );
    assert_eq!(
        config_of(&described, "retention.ms").map(|(_, source)| source),
        Some(SOURCE_DEFAULT)
    );
    let (low, high) = watermarks(&broker.bootstrap(), "kp-configs");
    println!("watermarks after restart: low {low} high {high}");
    assert_eq!(low, 5, "after a restart the log still starts at 5");
}

/// An IncrementalAlterConfigs request for topic `topic` with `configs` (key, op, value).
fn incremental(
    topic: &str,
    configs: Vec<(String, i8, Option<String>)>,
) -> IncrementalAlterConfigsRequest {
    IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(text(topic))
        .with_configs(
            configs
                .into_iter()
                .map(|(k, op, v)| {
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(k))
                        .with_config_operation(op)
                        .with_value(v.map(StrBytes::from_string))
                })
                .collect(),
        )])
}

#[test]
fn bad_config_requests_get_clear_errors_and_the_broker_keeps_serving() {
    let broker = RilldProcess::start();
    let mut conn = RawConn::connect(broker.addr());
    let created = conn.call(4, &requests::create_topic("bad-input", 1, &[]));
    assert_eq!(created.topics[0].error_code, 0);

    let check = |response: &kafka_protocol::messages::IncrementalAlterConfigsResponse,
                 code: i16,
                 says: &str| {
        let r = &response.responses[0];
        let message = r.error_message.as_deref().unwrap_or_default().to_string();
        println!(
            "error {} ({} bytes): {message}",
            r.error_code,
            message.len()
        );
        assert_eq!(r.error_code, code, "{message}");
        assert!(message.contains(says), "{message}");
        assert!(message.len() < 1_000, "the message is bounded");
    };

    // 10,000 configs in one request: distinct unknown keys, then one key repeated.
    let many: Vec<_> = (0..10_000)
        .map(|i| (format!("no.such.key.{i}"), 0i8, Some("1".to_string())))
        .collect();
    check(
        &conn.call(1, &incremental("bad-input", many)),
        INVALID_CONFIG,
        "no.such.key.0",
    );
    let repeated: Vec<_> = (0..10_000)
        .map(|i| ("retention.ms".to_string(), 0i8, Some(i.to_string())))
        .collect();
    check(
        &conn.call(1, &incremental("bad-input", repeated)),
        INVALID_REQUEST,
        "twice",
    );
    let mut create = requests::create_topic("bad-many", 1, &[]);
    create.topics[0].configs = (0..10_000)
        .map(|i| {
            kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                .with_name(text("segment.ms"))
                .with_value(Some(StrBytes::from_string(i.to_string())))
        })
        .collect();
    let created = conn.call::<CreateTopicsRequest>(4, &create);
    assert_eq!(created.topics[0].error_code, INVALID_CONFIG);

    // A 1 MB value, wrong types, out of range.
    let huge = "9".repeat(1 << 20);
    check(
        &conn.call(
            1,
            &incremental("bad-input", vec![("retention.ms".into(), 0, Some(huge))]),
        ),
        INVALID_CONFIG,
        "bytes",
    );
    for (key, value, says) in [
        ("retention.ms", "forever", "64-bit integer"),
        ("segment.bytes", "100", "range"),
        ("preallocate", "maybe", "boolean"),
        ("compression.type", "brotli", "one of"),
        ("min.cleanable.dirty.ratio", "2", "range"),
    ] {
        check(
            &conn.call(
                1,
                &incremental("bad-input", vec![(key.into(), 0, Some(value.into()))]),
            ),
            INVALID_CONFIG,
            key,
        );
        check(
            &conn.call(
                1,
                &incremental("bad-input", vec![(key.into(), 0, Some(value.into()))]),
            ),
            INVALID_CONFIG,
            says,
        );
    }
    // APPEND to a non-list key, an unknown operation, an unknown topic, a broker resource.
    check(
        &conn.call(
            1,
            &incremental(
                "bad-input",
                vec![("retention.ms".into(), 2, Some("1".into()))],
            ),
        ),
        INVALID_CONFIG,
        "list",
    );
    check(
        &conn.call(
            1,
            &incremental(
                "bad-input",
                vec![("retention.ms".into(), 7, Some("1".into()))],
            ),
        ),
        INVALID_REQUEST,
        "operation",
    );
    check(
        &conn.call(
            1,
            &incremental(
                "no-such-topic",
                vec![("retention.ms".into(), 0, Some("1".into()))],
            ),
        ),
        UNKNOWN_TOPIC_OR_PARTITION,
        "",
    );
    let mut broker_resource =
        incremental("1", vec![("log_retention_ms".into(), 0, Some("1".into()))]);
    broker_resource.resources[0].resource_type = RESOURCE_BROKER;
    check(
        &conn.call(1, &broker_resource),
        INVALID_REQUEST,
        "read-only",
    );

    // Nothing was stored, and the broker keeps serving.
    let described = describe_topic(&mut conn, "bad-input");
    assert_eq!(
        config_of(&described, "retention.ms").map(|(_, source)| source),
        Some(SOURCE_DEFAULT)
    );
    let metadata = conn.call(12, &MetadataRequest::default().with_topics(None));
    assert!(metadata
        .topics
        .iter()
        .any(|t| t.name.as_ref().is_some_and(|n| n.as_str() == "bad-input")));
    let ok = conn.call(
        1,
        &incremental(
            "bad-input",
            vec![("retention.ms".into(), 0, Some("1000".into()))],
        ),
    );
    assert_eq!(ok.responses[0].error_code, 0);
}

/// ListOffsets earliest and latest of `topic`-0, through librdkafka.
fn watermarks(bootstrap: &str, topic: &str) -> (i64, i64) {
    // A broker that just restarted knows no topic until it replayed the metadata log; a
    // fresh client each time, so no cached metadata of that moment stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "watermarks")
            .create()
            .expect("consumer");
        match rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            topic,
            0,
            Duration::from_secs(10),
        ) {
            Ok(watermarks) => return watermarks,
            Err(e) if Instant::now() < deadline => {
                println!("watermarks not yet: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("watermarks: {e}"),
        }
    }
}

fn rdkafka_admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .create()
        .expect("admin client")
}

/// Waits until DescribeConfigs on every running broker shows `expected` (key, value,
/// source) for `topic`; brokers apply the metadata log on their own schedule.
fn wait_configs_everywhere(
    cluster: &Cluster,
    topic: &str,
    expected: &[(&str, &str, i8)],
    what: &str,
) {
    for (index, broker) in cluster.brokers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut conn = RawConn::connect(broker.addr());
            let described = describe_topic(&mut conn, topic);
            let seen: Vec<_> = expected
                .iter()
                .map(|(key, _, _)| config_of(&described, key))
                .collect();
            let wanted: Vec<_> = expected
                .iter()
                .map(|(_, value, source)| Some((Some(value.to_string()), *source)))
                .collect();
            if seen == wanted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: broker {} shows {seen:?}, expected {wanted:?}\n{}",
                index + 1,
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The log start offset of `topic`-0 on every broker, from the admin port's JSON.
fn log_starts(cluster: &Cluster, topic: &str) -> Vec<i64> {
    cluster
        .brokers
        .iter()
        .map(|b| {
            let json: Value = serde_json::from_str(&b.admin_get("/partitions")).expect("json");
            json["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["topic"] == topic && p["partition"] == 0)
                .map_or(-1, |p| p["log_start_offset"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_altered_through_librdkafka_and_rill_are_on_every_broker_and_survive_restarts() {
    let mut cluster = Cluster::start();
    wait_registered(&cluster, 3).await;
    let admin = rdkafka_admin(&cluster.bootstrap());
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let topic = "cluster-configs";

    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(3))
                .set("compression.type", "lz4")
                .set("retention.ms", "7200000")],
            &options,
        )
        .await
        .expect("create");
    assert_eq!(created, vec![Ok(topic.to_string())], "{}", cluster.logs());
    let unknown = admin
        .create_topics(
            &[
                NewTopic::new("cluster-unknown", 1, TopicReplication::Fixed(3))
                    .set("retention.mss", "1"),
            ],
            &options,
        )
        .await
        .expect("create");
    // (librdkafka's result carries the code only; the message naming the key is checked
    // with kafka-python and raw requests.)
    let refusal = format!("{:?}", unknown[0]);
    assert!(refusal.contains("InvalidConfig"), "{refusal}");

    // librdkafka's AlterConfigs (the legacy API: the whole set) goes to the controller.
    let altered = admin
        .alter_configs(
            &[AlterConfig::new(ResourceSpecifier::Topic(topic))
                .set("compression.type", "lz4")
                .set("retention.ms", "123456")
                .set("segment.bytes", "2097152")],
            &options,
        )
        .await
        .expect("alter");
    assert!(altered[0].is_ok(), "{altered:?}\n{}", cluster.logs());
    wait_configs_everywhere(
        &cluster,
        topic,
        &[
            ("compression.type", "lz4", SOURCE_TOPIC),
            ("retention.ms", "123456", SOURCE_TOPIC),
            ("segment.bytes", "2097152", SOURCE_TOPIC),
        ],
        "after librdkafka's AlterConfigs",
    );

    // kafka-python sends AlterConfigs to any broker, not the controller: a broker that
    // is not the controller forwards it.
    let controller = rill_client::Admin::new(rill_client::ClientConfig::new(&cluster.bootstrap()))
        .expect("admin")
        .describe_cluster()
        .await
        .expect("describe cluster")
        .controller_id;
    let other = cluster
        .brokers
        .iter()
        .enumerate()
        .find(|(i, _)| *i as i32 + 1 != controller)
        .map(|(_, b)| b.bootstrap())
        .expect("a broker that is not the controller");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("kafka_python_admin.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args(["alter", &other, topic, "segment.ms=3600000"]);
    let output = run_piped(command, None, "kafka_python_admin.py alter");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success() && stdout.contains(r#""cluster-configs": "OK""#),
        "kafka-python alter through broker {other} (controller {controller}): {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_configs_everywhere(
        &cluster,
        topic,
        &[("segment.ms", "3600000", SOURCE_TOPIC)],
        "after kafka-python's IncrementalAlterConfigs through a non-controller broker",
    );

    // `rill topic alter`: IncrementalAlterConfigs, the other keys keep their values.
    let mut command = Command::new(rill_bin());
    command.args([
        "--bootstrap-server",
        &cluster.bootstrap(),
        "topic",
        "alter",
        topic,
        "--config",
        "max.message.bytes=2000000",
        "--delete-config",
        "retention.ms",
    ]);
    let output = run_piped(command, None, "rill topic alter");
    assert!(
        output.status.success(),
        "rill topic alter: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = [
        ("compression.type", "lz4", SOURCE_TOPIC),
        ("segment.ms", "3600000", SOURCE_TOPIC),
        ("segment.bytes", "2097152", SOURCE_TOPIC),
        ("max.message.bytes", "2000000", SOURCE_TOPIC),
        ("retention.ms", "604800000", SOURCE_DEFAULT),
    ];
    wait_configs_everywhere(&cluster, topic, &expected, "after rill topic alter");

    // `rill topic describe` lists the non-default configs.
    let mut command = Command::new(rill_bin());
    command.args([
        "--bootstrap-server",
        &cluster.bootstrap(),
        "topic",
        "describe",
        topic,
    ]);
    let described =
        String::from_utf8_lossy(&run_piped(command, None, "rill topic describe").stdout)
            .to_string();
    assert!(
        described.contains("config max.message.bytes=2000000"),
        "{described}"
    );
    assert!(!described.contains("config retention.ms"), "{described}");

    // DeleteRecords through librdkafka moves the log start on every replica.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .create()
        .expect("producer");
    for i in 0..20 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&format!("r{i}")),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}\n{}", cluster.logs()));
    }
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, Offset::Offset(8))
        .expect("offset");
    let deleted = admin
        .delete_records(&offsets, &options)
        .await
        .unwrap_or_else(|e| panic!("delete records: {e}\n{}", cluster.logs()));
    let low = deleted.elements()[0].offset();
    assert_eq!(low, Offset::Offset(8), "{deleted:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_starts(&cluster, topic) != vec![8, 8, 8] {
        assert!(
            Instant::now() < deadline,
            "log starts {:?}\n{}",
            log_starts(&cluster, topic),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every broker restarts: the configs and the log start come back from the metadata
    // log and the replicas' files.
    for broker in &mut cluster.brokers {
        broker.stop();
    }
    for broker in &mut cluster.brokers {
        broker.restart();
    }
    wait_registered(&cluster, 3).await;
    wait_configs_everywhere(&cluster, topic, &expected, "after every broker restarted");
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_starts(&cluster, topic) != vec![8, 8, 8] {
        assert!(
            Instant::now() < deadline,
            "log starts after restart {:?}\n{}",
            log_starts(&cluster, topic),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (low, high) = watermarks(&cluster.bootstrap(), topic);
    println!("watermarks after restart: low {low} high {high}");
    assert_eq!(low, 8);
}

/// The log start offset of `topic`-0 on a single broker, from its admin port.
fn log_start(broker: &RilldProcess, topic: &str) -> i64 {
    let json: Value = serde_json::from_str(&broker.admin_get("/partitions")).expect("json");
    json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["topic"] == topic && p["partition"] == 0)
        .map_or(-1, |p| p["log_start_offset"].as_i64().unwrap())
}

#[test]
fn retention_altered_on_a_live_topic_deletes_segments_without_a_restart() {
    let broker = RilldProcess::start_with(&["--retention-check-interval-ms", "200"]);
    let mut conn = RawConn::connect(broker.addr());
    let topic = "live-retention";
    let created = conn.call(
        4,
        &requests::create_topic(topic, 1, &[("segment.bytes", "1048576")]),
    );
    assert_eq!(created.topics[0].error_code, 0);
    // About 4 MiB in 400 KiB batches: four 1 MiB segments or so, timestamped now (the
    // default retention.ms keeps them).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let value = vec![7u8; 100 * 1024];
    for i in 0..10 {
        let values: Vec<&[u8]> = vec![&value; 4];
        let produced = conn.call(
            9,
            &requests::produce(
                topic,
                0,
                rill_tests::raw::record_batch(&values, now_ms + i),
                -1,
            ),
        );
        assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    }
    // No retention by size yet: nothing goes.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(log_start(&broker, topic), 0);

    let altered = conn.call(
        1,
        &incremental(
            topic,
            vec![("retention.bytes".into(), 0, Some("1048576".into()))],
        ),
    );
    assert_eq!(altered.responses[0].error_code, 0);
    let started = Instant::now();
    while log_start(&broker, topic) <= 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "retention.bytes did not apply to the live topic\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "log start {} after {} ms",
        log_start(&broker, topic),
        started.elapsed().as_millis()
    );
}
