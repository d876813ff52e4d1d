//! Interop both ways between rill-client and third-party Kafka clients (kcat from
//! Debian, the `rdkafka` crate; both librdkafka) through a real rilld. Where placement is
//! compared, librdkafka uses `partitioner=murmur2_random`, Kafka's Java default.

mod client_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header as RdHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset as RdOffset, TopicPartitionList};
use rill_client::partitioner::partition_for_key;
use rill_client::{Compression, Producer, ProducerConfig, ProducerRecord};
use rill_tests::{kcat, RilldProcess};

use client_common::{consume_all, create_topic};

const RECORDS: usize = 10_000;
const PARTITIONS: i32 = 4;

/// (partition, offset) → (key, value, header value) for every record rill-client wrote.
type Written = HashMap<(i32, i64), (String, String, String)>;

async fn produce_with_rill(bootstrap: &str, topic: &str, compression: Compression) -> Written {
    let mut config = ProducerConfig::new(bootstrap);
    config.compression = compression;
    let producer = Producer::new(config).expect("producer");
    let mut pending = Vec::new();
    for n in 0..RECORDS {
        let (k, v, h) = (
            format!("k{}", n % 500),
            format!("value {n}"),
            format!("h{n}"),
        );
        let record = ProducerRecord::new(topic, v.clone())
            .with_key(k.clone())
            .with_header("origin", h.clone());
        pending.push((producer.send(record).await.expect("send"), (k, v, h)));
    }
    let mut written = HashMap::new();
    for (d, kvh) in pending {
        let meta = d.await.expect("delivered");
        assert_eq!(
            meta.partition,
            partition_for_key(kvh.0.as_bytes(), PARTITIONS)
        );
        written.insert((meta.partition, meta.offset), kvh);
    }
    producer.close().await.expect("close");
    written
}

/// Every codec rill-client writes but zstd is read by kcat: this machine's librdkafka was
/// built without libzstd ("libzstd not available at build time"), and so is the rdkafka
/// crate's default build. zstd is round-tripped rill → rill in client_roundtrip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_rill_client_are_read_by_kcat_with_each_codec_but_zstd() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
    ] {
        let topic = format!("to-kcat-{compression:?}").to_lowercase();
        create_topic(&bootstrap, &topic, PARTITIONS).await;
        let written = produce_with_rill(&bootstrap, &topic, compression).await;
        let stdout = kcat(
            &[
                "-C",
                "-b",
                &bootstrap,
                "-t",
                &topic,
                "-e",
                "-q",
                "-f",
                "%p|%o|%k|%s|%h\n",
            ],
            None,
        );
        let text = String::from_utf8(stdout).expect("utf-8");
        let mut read = 0;
        for line in text.lines() {
            let fields: Vec<&str> = line.splitn(5, '|').collect();
            let (p, o): (i32, i64) = (fields[0].parse().unwrap(), fields[1].parse().unwrap());
            let (k, v, h) = written
                .get(&(p, o))
                .unwrap_or_else(|| panic!("kcat read {p}/{o}, which rill-client did not write"));
            assert_eq!((fields[2], fields[3]), (k.as_str(), v.as_str()));
            assert_eq!(fields[4], format!("origin={h}"));
            read += 1;
        }
        assert_eq!(read, RECORDS, "{compression:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_kcat_are_read_by_rill_client_on_kafka_partitions() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    // Every codec this librdkafka writes (it has no zstd) is decoded by rill-client.
    for codec in ["none", "gzip", "snappy", "lz4"] {
        let topic = format!("from-kcat-{codec}");
        create_topic(&bootstrap, &topic, PARTITIONS).await;
        let mut input = String::new();
        for n in 0..RECORDS {
            input.push_str(&format!("key{}:line {n}\n", n % 300));
        }
        kcat(
            &[
                "-P",
                "-b",
                &bootstrap,
                "-t",
                &topic,
                "-K",
                ":",
                "-H",
                "via=kcat",
                "-X",
                "partitioner=murmur2_random",
                "-z",
                codec,
            ],
            Some(input.as_bytes()),
        );

        let records = consume_all(&bootstrap, &topic, Duration::from_secs(60)).await;
        assert_eq!(records.len(), RECORDS, "{codec}");
        let mut seen = vec![false; RECORDS];
        for r in &records {
            let key = std::str::from_utf8(r.key.as_deref().expect("key")).unwrap();
            let value = std::str::from_utf8(r.value.as_deref().expect("value")).unwrap();
            let n: usize = value
                .strip_prefix("line ")
                .expect("value format")
                .parse()
                .unwrap();
            assert_eq!(key, format!("key{}", n % 300));
            assert_eq!(
                r.partition,
                partition_for_key(key.as_bytes(), PARTITIONS),
                "key {key}"
            );
            assert_eq!(r.headers.len(), 1);
            assert_eq!(r.headers[0].key, "via");
            assert_eq!(r.headers[0].value.as_deref(), Some(&b"kcat"[..]));
            assert!(!std::mem::replace(&mut seen[n], true), "line {n} twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_rill_client_are_read_by_rdkafka() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "to-rdkafka", PARTITIONS).await;
    // Snappy: the rdkafka crate's default build of librdkafka has no zstd.
    let written = produce_with_rill(&bootstrap, "to-rdkafka", Compression::Snappy).await;

    let read = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = RdConfig::new()
            .set("bootstrap.servers", &bootstrap)
            // librdkafka wants a group id even for assign(); nothing is committed.
            .set("group.id", "rill-interop")
            .set("enable.auto.commit", "false")
            .create()
            .expect("rdkafka consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset("to-rdkafka", p, RdOffset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut read = Vec::new();
        let mut errors = Vec::new();
        while read.len() < RECORDS {
            assert!(
                Instant::now() < deadline,
                "rdkafka read only {} records; errors: {errors:?}",
                read.len()
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            // librdkafka also reports its group machinery here (the broker has no group
            // coordinator yet; assign() needs none): note such errors, keep reading.
            let m = match message {
                Ok(m) => m,
                Err(e) => {
                    if errors.len() < 10 {
                        errors.push(e.to_string());
                    }
                    continue;
                }
            };
            let header = m.headers().expect("headers").get(0);
            read.push((
                m.partition(),
                m.offset(),
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
                header.key.to_owned(),
                String::from_utf8(header.value.unwrap().to_vec()).unwrap(),
            ));
        }
        read
    })
    .await
    .expect("rdkafka thread");
    for (p, o, k, v, hk, hv) in read {
        let expected = written
            .get(&(p, o))
            .expect("rdkafka read a record rill-client wrote");
        assert_eq!((&k, &v, &hv), (&expected.0, &expected.1, &expected.2));
        assert_eq!(hk, "origin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_rdkafka_are_read_by_rill_client_on_the_same_partitions() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "from-rdkafka", PARTITIONS).await;
    let producer: FutureProducer = RdConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .set("compression.codec", "snappy")
        .set("linger.ms", "5")
        .create()
        .expect("rdkafka producer");
    let mut deliveries = Vec::new();
    for n in 0..RECORDS {
        let key = format!("user-{}", n % 700);
        let value = format!("event {n}");
        let record = FutureRecord::to("from-rdkafka")
            .key(&key)
            .payload(&value)
            .headers(OwnedHeaders::new().insert(RdHeader {
                key: "n",
                value: Some(&n.to_string()),
            }));
        // Enqueue without borrowing the record past this call.
        let send = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("rdkafka enqueue");
        deliveries.push((key, send));
    }
    let mut placed: HashMap<String, i32> = HashMap::new();
    for (key, d) in deliveries {
        let delivery = d
            .await
            .expect("rdkafka delivery not cancelled")
            .map_err(|(e, _)| e)
            .expect("rdkafka delivery");
        // librdkafka's murmur2_random and rill-client's partitioner agree.
        assert_eq!(
            delivery.partition,
            partition_for_key(key.as_bytes(), PARTITIONS),
            "key {key}"
        );
        placed.insert(key, delivery.partition);
    }

    let records = consume_all(&bootstrap, "from-rdkafka", Duration::from_secs(60)).await;
    assert_eq!(records.len(), RECORDS);
    let mut seen = vec![false; RECORDS];
    for r in &records {
        let key = String::from_utf8(r.key.as_deref().unwrap().to_vec()).unwrap();
        let value = String::from_utf8(r.value.as_deref().unwrap().to_vec()).unwrap();
        let n: usize = value.strip_prefix("event ").unwrap().parse().unwrap();
        assert_eq!(key, format!("user-{}", n % 700));
        assert_eq!(placed[&key], r.partition);
        assert_eq!(r.headers[0].key, "n");
        assert_eq!(
            r.headers[0].value.as_deref(),
            Some(n.to_string().as_bytes())
        );
        assert!(!std::mem::replace(&mut seen[n], true), "event {n} twice");
    }
}
