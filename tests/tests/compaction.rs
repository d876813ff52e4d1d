//! Log compaction end to end: librdkafka produces keyed records and tombstones to a
//! `cleanup.policy=compact` topic whose segments roll every few hundred milliseconds;
//! the broker's cleaner compacts them; afterwards the log holds exactly the last
//! record per key at its original offset — read back by librdkafka from offset 0, and
//! read from every replica's own segment files on a 3-broker cluster.

mod cluster_common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rill_tests::RilldProcess;

use cluster_common::{wait_registered, Cluster};

const TIMEOUT: Duration = Duration::from_secs(20);
/// segment.ms of the test topics: a pause longer than this makes the next append roll.
const SEGMENT_MS: u64 = 300;
const KEYS: usize = 16;
const ROUNDS: usize = 5;
/// Cleaner flags: a short backoff so a dirty log is cleaned within a fraction of a second.
const CLEANER_FLAGS: [&str; 2] = ["--log-cleaner-backoff-ms", "100"];

/// offset → (key, value); `None` value = tombstone.
type Content = BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>)>;

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000");
    c
}

async fn create_topic(bootstrap: &str, topic: &str, replicas: i32, delete_retention_ms: &str) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let segment_ms = SEGMENT_MS.to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replicas))
        .set("cleanup.policy", "compact")
        .set("segment.ms", &segment_ms)
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", delete_retention_ms);
    let results = admin.create_topics(&[new], &options).await.expect("create");
    assert_eq!(results, vec![Ok(topic.to_string())]);
}

fn producer(bootstrap: &str) -> FutureProducer {
    client_config(bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer")
}

/// Sends one record (no payload = tombstone) and returns its offset.
async fn send(producer: &FutureProducer, topic: &str, key: &str, value: Option<&str>) -> i64 {
    let mut record = FutureRecord::<str, str>::to(topic).key(key).partition(0);
    if let Some(v) = value {
        record = record.payload(v);
    }
    let delivery = producer
        .send(record, TIMEOUT)
        .await
        .unwrap_or_else(|(e, _)| panic!("send {key}: {e}"));
    delivery.offset
}

/// Rounds of KEYS keyed records, one segment per round (a pause past segment.ms before
/// each); round 3 deletes keys 0..6 with tombstones, round 4 writes keys 0..2 again.
async fn produce_rounds(producer: &FutureProducer, topic: &str, written: &mut Content) {
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(SEGMENT_MS + 100)).await;
        let sends: Vec<_> = (0..KEYS)
            .filter(|&k| round != 4 || !(2..6).contains(&k))
            .map(|k| {
                let key = format!("key-{k}");
                let value = (!(round == 3 && k < 6)).then(|| format!("round-{round}-key-{k}"));
                async move {
                    let offset = send(producer, topic, &key, value.as_deref()).await;
                    (offset, key, value)
                }
            })
            .collect();
        for (offset, key, value) in futures::future::join_all(sends).await {
            written.insert(offset, (key.into_bytes(), value.map(String::into_bytes)));
        }
    }
}

/// After a pause past segment.ms, one more record: its append rolls the segment, so
/// everything before it lies in closed segments the cleaner may clean.
async fn roll_with_filler(producer: &FutureProducer, topic: &str, written: &mut Content) -> i64 {
    tokio::time::sleep(Duration::from_millis(SEGMENT_MS + 100)).await;
    let offset = send(producer, topic, "filler", Some("filler")).await;
    written.insert(offset, (b"filler".to_vec(), Some(b"filler".to_vec())));
    offset
}

/// The records a compacted log must hold: at or above `cleaned`, all; below it, each
/// key's last record below `cleaned`, except tombstones below `tombstones_gone_below`.
fn expected(written: &Content, cleaned: i64, tombstones_gone_below: i64) -> Content {
    let mut last: HashMap<&[u8], i64> = HashMap::new();
    for (&offset, (key, _)) in written.range(..cleaned) {
        last.insert(key, offset);
    }
    written
        .iter()
        .filter(|(&offset, (key, value))| {
            offset >= cleaned
                || (last[key.as_slice()] == offset
                    && (value.is_some() || offset >= tombstones_gone_below))
        })
        .map(|(&o, r)| (o, r.clone()))
        .collect()
}

/// The replica directories of `topic` partition 0 under a broker's data directory.
fn replica_dir(data_dir: &Path, topic: &str) -> PathBuf {
    let prefix = format!("{topic}-0");
    std::fs::read_dir(data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name == prefix || name.starts_with(&format!("{prefix}."))
        })
        .unwrap_or_else(|| panic!("no replica of {topic} in {}", data_dir.display()))
}

/// The cleaned offset in a replica's cleaner checkpoint (0 if none yet).
fn cleaned_offset(dir: &Path) -> i64 {
    let Ok(text) = std::fs::read_to_string(dir.join("cleaner-offset-checkpoint")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("cleaned_offset "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until the cleaner of every replica in `dirs` has cleaned up to `offset`.
fn wait_cleaned(dirs: &[PathBuf], offset: i64, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let started = Instant::now();
    while dirs.iter().any(|d| cleaned_offset(d) < offset) {
        assert!(
            Instant::now() < deadline,
            "not cleaned up to {offset} within 30 s: {:?}\n{}",
            dirs.iter().map(|d| cleaned_offset(d)).collect::<Vec<_>>(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "cleaned up to {offset} on {} replica(s) after {:?}",
        dirs.len(),
        started.elapsed()
    );
}

/// Every data record of a replica, read from its own `.log` files (control batches
/// skipped, as consumers do), with the batch count and bytes.
fn replica_records(dir: &Path) -> (Content, usize, usize) {
    try_replica_records(dir).expect("read the replica's segment files")
}

/// [`replica_records`] of a replica whose broker may be running: the cleaner can swap
/// a segment for its cleaned copy between the listing and the read (NotFound), and the
/// caller then reads again.
fn try_replica_records(dir: &Path) -> std::io::Result<(Content, usize, usize)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    let mut content = Content::new();
    let (mut batch_count, mut bytes) = (0, 0);
    for file in files {
        let data = std::fs::read(&file)?;
        let mut pos = 0;
        while pos + 12 <= data.len() && data[pos + 8..pos + 12] != [0, 0, 0, 0] {
            let batch = rill_record::BatchView::new(&data[pos..]).expect("a whole batch");
            batch.verify_crc().expect("a good CRC");
            pos += batch.size_bytes();
            batch_count += 1;
            bytes += batch.size_bytes();
            if batch.is_control() {
                continue;
            }
            for record in batch.records().expect("uncompressed") {
                let record = record.expect("a record");
                content.insert(
                    record.offset,
                    (
                        record.key.expect("keyed").to_vec(),
                        record.value.map(<[u8]>::to_vec),
                    ),
                );
            }
        }
    }
    Ok((content, batch_count, bytes))
}

/// Consumes partition 0 from offset 0 with librdkafka up to `last_offset`.
fn consume_all(bootstrap: &str, topic: &str, last_offset: i64) -> Content {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut content = Content::new();
    let deadline = Instant::now() + TIMEOUT;
    while content
        .last_key_value()
        .is_none_or(|(&o, _)| o < last_offset)
    {
        assert!(
            Instant::now() < deadline,
            "consumed only up to {:?}",
            content.keys().last()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("a message");
        content.insert(
            message.offset(),
            (
                message.key().expect("keyed").to_vec(),
                message.payload().map(<[u8]>::to_vec),
            ),
        );
    }
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topic_keeps_the_last_record_per_key_and_drops_old_tombstones() {
    let broker = RilldProcess::start_with(&CLEANER_FLAGS);
    let bootstrap = broker.bootstrap();
    let topic = "compacted";
    create_topic(&bootstrap, topic, 1, "0").await;
    let producer = producer(&bootstrap);

    // A compacted topic refuses a record without a key, as Kafka does.
    let keyless = producer
        .send(
            FutureRecord::<str, str>::to(topic)
                .payload("no key")
                .partition(0),
            TIMEOUT,
        )
        .await;
    let error = keyless
        .err()
        .map(|(e, _)| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("InvalidRecord") || error.contains("invalid"),
        "{error:?}"
    );

    let mut written = Content::new();
    produce_rounds(&producer, topic, &mut written).await;
    let filler = roll_with_filler(&producer, topic, &mut written).await;
    let dir = replica_dir(&broker.data_dir(), topic);
    wait_cleaned(std::slice::from_ref(&dir), filler, || broker.log());
    let tombstones_first_cleaned_below = cleaned_offset(&dir);
    // delete.retention.ms=0: the next pass drops the tombstones the first one kept.
    let filler = roll_with_filler(&producer, topic, &mut written).await;
    wait_cleaned(std::slice::from_ref(&dir), filler, || broker.log());
    let cleaned = cleaned_offset(&dir);

    let want = expected(&written, cleaned, tombstones_first_cleaned_below);
    let (on_disk, batches, bytes) = replica_records(&dir);
    let last = *written.keys().last().unwrap();
    let consumed = consume_all(&bootstrap, topic, last);
    println!(
        "written {} records, {} left ({} batches, {bytes} bytes on disk), cleaned below {cleaned}",
        written.len(),
        on_disk.len(),
        batches
    );
    assert!(want.len() < written.len() / 2, "the sample must compact");
    assert!(
        want.values().all(|(_, v)| v.is_some()),
        "every tombstone is gone"
    );
    assert_eq!(on_disk, want, "the replica's files");
    assert_eq!(
        consumed,
        want,
        "what librdkafka reads from offset 0\n{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_of_a_compacted_topic_holds_the_same_compacted_records() {
    let cluster = Cluster::start_with(&CLEANER_FLAGS);
    wait_registered(&cluster, 3).await;
    let bootstrap = cluster.bootstrap();
    let topic = "compacted-rf3";
    // Tombstones stay a day: every replica's result is then the same whatever its
    // number of passes.
    create_topic(&bootstrap, topic, 3, "86400000").await;
    let producer = producer(&bootstrap);
    let mut written = Content::new();
    produce_rounds(&producer, topic, &mut written).await;
    let filler = roll_with_filler(&producer, topic, &mut written).await;
    let dirs: Vec<PathBuf> = cluster
        .brokers
        .iter()
        .map(|b| replica_dir(&b.data_dir(), topic))
        .collect();
    wait_cleaned(&dirs, filler, || cluster.logs());

    let want = expected(&written, filler, 0);
    assert!(want.len() < written.len() / 2, "the sample must compact");
    for (i, dir) in dirs.iter().enumerate() {
        let (on_disk, batches, bytes) = replica_records(dir);
        let below: Content = on_disk
            .range(..filler)
            .map(|(&o, r)| (o, r.clone()))
            .collect();
        let want_below: Content = want.range(..filler).map(|(&o, r)| (o, r.clone())).collect();
        println!(
            "broker {}: {} records below {filler} ({batches} batches, {bytes} bytes)",
            i + 1,
            below.len()
        );
        assert_eq!(below, want_below, "broker {}'s replica", i + 1);
    }
    let consumed = consume_all(&bootstrap, topic, filler);
    assert_eq!(consumed, want, "what librdkafka reads from the leader");
}

/// The `__consumer_offsets` replicas of this broker with a cleaner checkpoint past 0.
fn cleaned_offsets_partitions(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("__consumer_offsets-")
                && cleaned_offset(p) > 0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_consumer_offsets_replay_the_last_commit_after_a_restart() {
    use rdkafka::consumer::CommitMode;
    // Segments of every topic (`__consumer_offsets` included) roll after 200 ms.
    let mut args = CLEANER_FLAGS.to_vec();
    args.extend(["--log-segment-ms", "200", "--offsets-topic-partitions", "1"]);
    let mut broker = RilldProcess::start_with(&args);
    let bootstrap = broker.bootstrap();
    let commit = |consumer: &BaseConsumer, offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("plain", 0, Offset::Offset(offset))
            .unwrap();
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    };
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", "standalone")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let producer = producer(&bootstrap);
    send(&producer, "plain", "k", Some("v")).await; // auto-creates the topic
                                                    // Rounds of commits, each round in its own segment of __consumer_offsets.
    let mut commits = 0;
    for round in 0..4 {
        for i in 0..10 {
            commit(&consumer, round * 10 + i);
            commits += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    commit(&consumer, 1000); // rolls: the earlier commits become cleanable
                             // Wait until the rounds' segments are compacted: one commit per key is left of
                             // them, plus what the active segment holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dirs = cleaned_offsets_partitions(&broker.data_dir());
        // The broker runs: a segment swapped by the cleaner mid-read is read again.
        if let Some(Ok((records, batches, bytes))) = dirs.first().map(|d| try_replica_records(d)) {
            if records.len() <= 3 {
                println!(
                    "__consumer_offsets after compaction: {} records ({batches} batches, {bytes} bytes) for {commits} commits",
                    records.len()
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "__consumer_offsets not compacted\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(consumer);

    broker.stop();
    broker.restart();
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", "standalone")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("plain", 0);
    let started = Instant::now();
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(list) => break list.elements_for_topic("plain")[0].offset(),
            Err(e) if started.elapsed() < TIMEOUT => {
                println!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("committed offsets: {e}\n{}", broker.log()),
        }
    };
    assert_eq!(committed, Offset::Offset(1000), "{}", broker.log());
}
