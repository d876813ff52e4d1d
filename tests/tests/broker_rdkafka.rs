//! librdkafka (through the `rdkafka` crate) against the real `rilld`: create topic,
//! produce, consume, watermarks, offsets-for-times, configs, partitions, delete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rill_tests::RilldProcess;

const TIMEOUT: Duration = Duration::from_secs(20);
const PARTITIONS: i32 = 3;
const RECORDS: usize = 300;
/// Record i gets timestamp BASE_TS + 10 * i.
const BASE_TS: i64 = 1_700_000_000_000;

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        // The broker advertises exactly what it listens on; no retries needed locally.
        .set("socket.timeout.ms", "10000");
    c
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    config(bootstrap).create().expect("admin client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_creates_produces_consumes_and_deletes() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let admin = admin(&bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));

    // Create, with a config override.
    let topic = NewTopic::new("rdk", PARTITIONS, TopicReplication::Fixed(1))
        .set("retention.ms", "86400000")
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(&[topic], &options)
        .await
        .expect("create");
    assert_eq!(results, vec![Ok("rdk".to_string())], "{}", broker.log());
    // Creating it again is refused.
    let again = NewTopic::new("rdk", 1, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(&[again], &options)
        .await
        .expect("create");
    assert!(results[0].is_err());

    // Configs come back with their source.
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic("rdk")], &options)
        .await
        .expect("describe");
    let resource = described[0].as_ref().expect("topic configs");
    let retention = resource.get("retention.ms").expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("86400000"));
    assert!(!retention.is_default);
    assert_eq!(
        resource
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref()),
        Some("compact")
    );
    // A key nobody set is a default; segment.bytes is not: the harness sets the broker's
    // log_segment_bytes (Kafka's source STATIC_BROKER_CONFIG).
    assert!(
        resource
            .get("delete.retention.ms")
            .expect("delete.retention.ms")
            .is_default
    );
    assert!(
        !resource
            .get("segment.bytes")
            .expect("segment.bytes")
            .is_default
    );

    // Produce with acks=all, keys spreading records over the partitions.
    let producer: FutureProducer = config(&bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sent: BTreeMap<(i32, i64), (String, i64)> = BTreeMap::new();
    let deliveries: Vec<_> = (0..RECORDS)
        .map(|i| {
            let producer = producer.clone();
            async move {
                let value = format!("value-{i:04}");
                let key = format!("key-{i}");
                let ts = BASE_TS + 10 * i as i64;
                let record = FutureRecord::to("rdk")
                    .key(&key)
                    .payload(&value)
                    .partition((i % PARTITIONS as usize) as i32)
                    .timestamp(ts);
                let delivery = producer.send(record, TIMEOUT).await;
                (value, ts, delivery)
            }
        })
        .collect();
    for (value, ts, delivery) in futures::future::join_all(deliveries).await {
        let delivery = delivery.unwrap_or_else(|(e, _)| panic!("delivery failed: {e}"));
        sent.insert((delivery.partition, delivery.offset), (value, ts));
    }
    assert_eq!(sent.len(), RECORDS, "offsets are unique per partition");
    for p in 0..PARTITIONS {
        let offsets: Vec<i64> = sent
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        // Offset 0 holds the partition's LEADER_CHANGE control batch.
        let expected: Vec<i64> = (1..=offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}: offsets dense from 1");
    }

    // Consume everything back by assignment (no group).
    // librdkafka wants a group.id even for assign(); with explicit start offsets and
    // no commits it never needs the group coordinator (not served yet).
    let consumer: BaseConsumer = config(&bootstrap)
        .set("group.id", "rdk-assign")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset("rdk", p, Offset::Beginning)
            .expect("add");
    }
    consumer.assign(&assignment).expect("assign");
    let mut received: BTreeMap<(i32, i64), (String, i64)> = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while received.len() < RECORDS {
        assert!(
            Instant::now() < deadline,
            "consumed only {}",
            received.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("message");
            let value = String::from_utf8(message.payload().expect("payload").to_vec()).unwrap();
            let ts = message.timestamp().to_millis().expect("timestamp");
            received.insert((message.partition(), message.offset()), (value, ts));
        }
    }
    assert_eq!(
        received, sent,
        "every record, at its offset, with its timestamp"
    );

    // Watermarks.
    for p in 0..PARTITIONS {
        let count = sent.keys().filter(|(q, _)| *q == p).count() as i64;
        let (low, high) = consumer
            .fetch_watermarks("rdk", p, TIMEOUT)
            .expect("watermarks");
        // The high watermark counts the LEADER_CHANGE control batch at offset 0.
        assert_eq!((low, high), (0, count + 1), "partition {p}");
    }

    // Offsets for times: the first record at or after the timestamp.
    let query_ts = BASE_TS + 10 * 150 + 5; // between records 150 and 151
    let mut query = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        query
            .add_partition_offset("rdk", p, Offset::Offset(query_ts))
            .expect("add");
    }
    let answer = consumer
        .offsets_for_times(query, Timeout::After(TIMEOUT))
        .expect("offsets_for_times");
    for element in answer.elements() {
        let expected = sent
            .iter()
            .filter(|((p, _), (_, ts))| *p == element.partition() && *ts >= query_ts)
            .map(|((_, o), _)| *o)
            .min()
            .expect("a later record");
        assert_eq!(
            element.offset(),
            Offset::Offset(expected),
            "partition {}",
            element.partition()
        );
    }
    // Past the last record: end.
    let mut late = TopicPartitionList::new();
    late.add_partition_offset("rdk", 0, Offset::Offset(BASE_TS * 2))
        .expect("add");
    let answer = consumer
        .offsets_for_times(late, Timeout::After(TIMEOUT))
        .expect("offsets_for_times");
    assert_eq!(answer.elements()[0].offset(), Offset::End);

    // More partitions.
    let results = admin
        .create_partitions(&[NewPartitions::new("rdk", 5)], &options)
        .await
        .expect("create partitions");
    assert_eq!(results, vec![Ok("rdk".to_string())]);
    let metadata = consumer
        .fetch_metadata(Some("rdk"), TIMEOUT)
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 5);

    // Delete.
    let results = admin
        .delete_topics(&["rdk"], &options)
        .await
        .expect("delete");
    assert_eq!(results, vec![Ok("rdk".to_string())]);
    let metadata = consumer.fetch_metadata(None, TIMEOUT).expect("metadata");
    assert!(metadata.topics().iter().all(|t| t.name() != "rdk"));
    assert!(
        !broker.data_dir().join("rdk-0").exists(),
        "partition data removed"
    );
}

/// librdkafka's DescribeConfigs of the broker resource lists the broker's keys with their
/// values and whether they were set (here: one by flag, one by the test harness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_describes_the_broker_configs() {
    let broker = RilldProcess::start_with(&["--connections-max-per-ip", "7"]);
    let admin = admin(&broker.bootstrap());
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Broker(1)], &options)
        .await
        .expect("describe");
    let resource = described[0].as_ref().expect("broker configs");
    let per_ip = resource
        .get("connections_max_per_ip")
        .expect("connections_max_per_ip");
    assert_eq!(per_ip.value.as_deref(), Some("7"));
    assert!(!per_ip.is_default);
    let budget = resource
        .get("queued_request_max_bytes")
        .expect("queued_request_max_bytes");
    assert_eq!(budget.value.as_deref(), Some("536870912"));
    assert!(budget.is_default);
    for key in [
        "connections_max_idle_ms",
        "request_read_timeout_ms",
        "log_dir_free_bytes_min",
        "durability",
    ] {
        assert!(resource.get(key).is_some(), "{key} missing");
    }
}
