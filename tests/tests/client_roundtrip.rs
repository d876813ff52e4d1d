//! rill-client against a real rilld: 100,000 keyed records with headers round-trip with
//! every compression codec and every acks level; keys land where Kafka's partitioner puts
//! them; seek and offsets-for-time work.

mod client_common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rill_client::partitioner::partition_for_key;
use rill_client::{
    Acks, Compression, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use rill_tests::RilldProcess;

use client_common::{consume_all, create_topic};

const RECORDS: usize = 100_000;
const PARTITIONS: i32 = 4;

fn key(n: usize) -> String {
    format!("key-{}", n % 1000)
}

fn value(n: usize) -> String {
    // ~100 bytes, varied enough that compression is real but not trivial.
    format!("value-{n:08}-{}", "abcdefghij".repeat(1 + n % 9))
}

/// Produces RECORDS keyed records with headers, reads them all back, and checks every
/// field, the partition of every key, and that offsets per partition are exactly
/// 0..count with acknowledged offsets matching what is read.
async fn round_trip(compression: Compression, acks: Acks) {
    round_trip_with(compression, acks, 1, 256 * 1024).await
}

/// [`round_trip`] with `in_flight` batches per partition of at most `batch_bytes_max`;
/// also checks that each partition holds its records in the order they were sent.
async fn round_trip_with(
    compression: Compression,
    acks: Acks,
    in_flight: usize,
    batch_bytes_max: usize,
) {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let topic = format!("rt-{compression:?}-{acks:?}-{in_flight}").to_lowercase();
    create_topic(&bootstrap, &topic, PARTITIONS).await;

    let mut config = ProducerConfig::new(&bootstrap);
    config.acks = acks;
    config.compression = compression;
    config.linger_ms = 5;
    config.batch_bytes_max = batch_bytes_max;
    config.in_flight_batches_per_partition_max = in_flight;
    let producer = Producer::new(config).expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        let record = ProducerRecord::new(topic.clone(), value(n))
            .with_key(key(n))
            .with_header("seq", n.to_string())
            .with_header("codec", format!("{compression:?}"));
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    let mut acked: HashMap<(i32, i64), usize> = HashMap::new();
    for (n, d) in deliveries.into_iter().enumerate() {
        let meta = d.await.unwrap_or_else(|e| panic!("record {n}: {e}"));
        assert_eq!(
            meta.partition,
            partition_for_key(key(n).as_bytes(), PARTITIONS),
            "record {n} not on Kafka's partition for its key"
        );
        if acks == Acks::None {
            assert_eq!(meta.offset, -1, "acks=0 reports no offset");
        } else {
            assert!(
                acked.insert((meta.partition, meta.offset), n).is_none(),
                "offset reused"
            );
        }
    }
    producer.close().await.expect("close");
    if acks != Acks::All {
        // Nothing tells an acks=0 producer when the broker has appended, and acks=1 is
        // answered before the append commits (the high watermark, which a consumer
        // reads up to, follows the fsync): poll the end offsets (with a deadline)
        // before reading up to them. (Reading up to the end offsets of the moment lost
        // records under load: 2 failures in one loaded run.)
        // Each partition's end offset also counts its LEADER_CHANGE control batch.
        wait_for_records(&bootstrap, &topic, RECORDS as i64 + i64::from(PARTITIONS)).await;
    }

    let records = consume_all(&bootstrap, &topic, Duration::from_secs(120)).await;
    assert_eq!(records.len(), RECORDS, "broker log:\n{}", broker.log());
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    let mut last_seq: HashMap<i32, usize> = HashMap::new();
    let mut seen = vec![false; RECORDS];
    for r in &records {
        // Offset 0 of each partition is its LEADER_CHANGE control batch.
        let expected_offset = next_offset.entry(r.partition).or_insert(1);
        assert_eq!(
            r.offset, *expected_offset,
            "offsets of partition {} not contiguous",
            r.partition
        );
        *expected_offset += 1;
        let seq: usize = std::str::from_utf8(r.headers[0].value.as_deref().expect("seq value"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.headers[0].key, "seq");
        if let Some(previous) = last_seq.insert(r.partition, seq) {
            assert!(
                previous < seq,
                "partition {}: record {seq} stored after record {previous}",
                r.partition
            );
        }
        assert_eq!(r.headers[1].key, "codec");
        assert_eq!(
            r.headers[1].value.as_deref(),
            Some(format!("{compression:?}").as_bytes())
        );
        assert_eq!(r.key.as_deref(), Some(key(seq).as_bytes()));
        assert_eq!(r.value.as_deref(), Some(value(seq).as_bytes()));
        assert_eq!(
            r.partition,
            partition_for_key(key(seq).as_bytes(), PARTITIONS)
        );
        if acks != Acks::None {
            assert_eq!(
                acked.get(&(r.partition, r.offset)),
                Some(&seq),
                "acknowledged offset differs"
            );
        }
        assert!(
            !std::mem::replace(&mut seen[seq], true),
            "record {seq} read twice"
        );
    }
}

/// Polls until the end offsets of `topic`'s partitions add up to `expected` (30 s
/// deadline).
async fn wait_for_records(bootstrap: &str, topic: &str, expected: i64) {
    let consumer = Consumer::new(ConsumerConfig::new(bootstrap)).expect("consumer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut total = 0;
        for p in 0..PARTITIONS {
            total += consumer
                .latest_offset(&TopicPartition::new(topic, p))
                .await
                .expect("latest offset");
        }
        if total >= expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {total} of {expected} records arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_uncompressed_acks_all() {
    round_trip(Compression::None, Acks::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_uncompressed_acks_leader() {
    round_trip(Compression::None, Acks::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_uncompressed_acks_none() {
    round_trip(Compression::None, Acks::None).await;
}

/// Five batches of 16 KiB per partition in flight (many more batches than the other
/// runs): pipelined requests land in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_pipelined_acks_all() {
    round_trip_with(Compression::None, Acks::All, 5, 16 * 1024).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_gzip() {
    round_trip(Compression::Gzip, Acks::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_snappy() {
    round_trip(Compression::Snappy, Acks::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_lz4() {
    round_trip(Compression::Lz4, Acks::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_100k_keyed_records_zstd() {
    round_trip(Compression::Zstd, Acks::All).await;
}

/// `Producer::try_send_many_batched` in the bulk loop its docs show (and `rill bench
/// produce` runs), idempotent at acks=all, under a buffer so small that the fast path
/// stops at back-pressure and the loop's `send_ref_batched` waits: every record lands
/// exactly once, in send order per partition, keyed ones on their key's partition; the
/// batch reports count every record, and their first offsets and counts tile each
/// partition's offsets exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_sends_under_back_pressure_keep_order_and_report_every_batch() {
    const BULK_RECORDS: usize = 20_000;
    const GROUP_RECORDS: usize = 64;
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let topic = "bulk";
    create_topic(&bootstrap, topic, PARTITIONS).await;
    let mut config = ProducerConfig::new(&bootstrap);
    config.acks = Acks::All;
    config.linger_ms = 1;
    config.batch_bytes_max = 16 * 1024;
    config.buffer_bytes_max = 64 * 1024;
    let producer = Producer::new(config).expect("producer");
    let keyed = |n: usize| n % 3 == 0;
    let records: Vec<ProducerRecord> = (0..BULK_RECORDS)
        .map(|n| {
            let record = ProducerRecord::new(topic, value(n));
            if keyed(n) {
                record.with_key(key(n))
            } else {
                record
            }
        })
        .collect();
    let mut opened = Vec::new();
    let (mut next, mut waits) = (0, 0);
    while next < records.len() {
        let group_end = (next + GROUP_RECORDS).min(records.len());
        next += producer
            .try_send_many_batched(&records[next..group_end], &mut opened)
            .expect("bulk send");
        if next < group_end {
            opened.extend(
                producer
                    .send_ref_batched(&records[next])
                    .await
                    .expect("send"),
            );
            next += 1;
            waits += 1;
        }
    }
    assert!(
        waits > 0,
        "the fast path never stopped: back-pressure was not exercised"
    );
    producer.flush().await.expect("flush");
    let mut reported = 0;
    let mut batches: HashMap<i32, Vec<(i64, u32)>> = HashMap::new();
    for delivery in opened {
        let report = delivery.await;
        let first = report.first.expect("batch delivered");
        reported += report.records as usize;
        batches
            .entry(first.partition)
            .or_default()
            .push((first.offset, report.records));
    }
    assert_eq!(
        reported, BULK_RECORDS,
        "the batch reports count every record"
    );
    producer.close().await.expect("close");

    let read = consume_all(&bootstrap, topic, Duration::from_secs(60)).await;
    assert_eq!(read.len(), BULK_RECORDS, "broker log:\n{}", broker.log());
    let mut last: HashMap<i32, usize> = HashMap::new();
    let mut per_partition: HashMap<i32, i64> = HashMap::new();
    let mut seen = vec![false; BULK_RECORDS];
    for r in &read {
        let bytes = r.value.as_deref().expect("value");
        let n: usize = std::str::from_utf8(&bytes[6..14])
            .expect("utf-8")
            .parse()
            .expect("record number");
        assert_eq!(bytes, value(n).as_bytes());
        assert!(!std::mem::replace(&mut seen[n], true), "record {n} twice");
        if keyed(n) {
            assert_eq!(
                r.partition,
                partition_for_key(key(n).as_bytes(), PARTITIONS)
            );
        }
        if let Some(previous) = last.insert(r.partition, n) {
            assert!(
                previous < n,
                "partition {}: record {n} stored after record {previous}",
                r.partition
            );
        }
        *per_partition.entry(r.partition).or_default() += 1;
    }
    for (partition, mut ranges) in batches {
        ranges.sort_unstable();
        // Offset 0 of each partition is its LEADER_CHANGE control batch.
        let mut expected = 1;
        for (first, records) in ranges {
            assert_eq!(
                first, expected,
                "partition {partition}: reports tile the log"
            );
            expected += i64::from(records);
        }
        assert_eq!(
            expected - 1,
            per_partition[&partition],
            "partition {partition}"
        );
    }
}

async fn next(c: &mut Consumer) -> rill_client::ConsumerRecord {
    tokio::time::timeout(Duration::from_secs(30), c.next())
        .await
        .expect("a record within 30 s")
        .expect("stream open")
        .expect("record")
}

/// Seek to an offset, to a timestamp, to the end; offsets-for-time and earliest/latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_seeks_by_offset_time_and_end_and_finds_offsets_for_times() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let topic = "seek";
    create_topic(&bootstrap, topic, 1).await;
    let producer = Producer::new(ProducerConfig::new(&bootstrap)).expect("producer");
    // Timestamps 10 ms apart from a fixed base, so time lookups have exact answers.
    let base_ms: i64 = 1_700_000_000_000;
    let mut deliveries = Vec::new();
    for n in 0..1000i64 {
        let record = ProducerRecord::new(topic, format!("v{n}"))
            .with_partition(0)
            .with_timestamp_ms(base_ms + n * 10);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    // No flush: linger alone must send the batch.
    for (n, d) in deliveries.into_iter().enumerate() {
        // After the LEADER_CHANGE control batch at offset 0.
        assert_eq!(d.await.expect("delivered").offset, n as i64 + 1);
    }

    let tp = TopicPartition::new(topic, 0);
    let mut consumer = Consumer::new(ConsumerConfig::new(&bootstrap)).expect("consumer");
    consumer.assign(std::slice::from_ref(&tp));
    assert_eq!(consumer.earliest_offset(&tp).await.unwrap(), 0);
    // Record n is at offset n + 1 (offset 0: the LEADER_CHANGE control batch).
    assert_eq!(consumer.latest_offset(&tp).await.unwrap(), 1001);
    assert_eq!(
        consumer.offset_for_time(&tp, base_ms + 5000).await.unwrap(),
        Some(501)
    );
    // Between two records: the first at or after.
    assert_eq!(
        consumer.offset_for_time(&tp, base_ms + 5005).await.unwrap(),
        Some(502)
    );
    assert_eq!(
        consumer.offset_for_time(&tp, base_ms - 1).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        consumer
            .offset_for_time(&tp, base_ms + 100_000)
            .await
            .unwrap(),
        None
    );

    consumer.seek(&tp, Offset::At(901)).unwrap();
    assert_eq!(consumer.position(&tp).await.unwrap(), 901);
    let r = next(&mut consumer).await;
    assert_eq!((r.offset, r.value.as_deref()), (901, Some(&b"v900"[..])));
    assert_eq!(r.timestamp_ms, base_ms + 9000);

    consumer
        .seek(&tp, Offset::Timestamp(base_ms + 2500))
        .unwrap();
    assert_eq!(consumer.position(&tp).await.unwrap(), 251);
    assert_eq!(next(&mut consumer).await.offset, 251);
    assert_eq!(next(&mut consumer).await.offset, 252);
    assert_eq!(consumer.position(&tp).await.unwrap(), 253);

    // From the beginning: the control batch at 0 is skipped.
    consumer.seek(&tp, Offset::Beginning).unwrap();
    // The fetcher reads ahead while the application does not poll: the position is
    // still where the application reads next, not where the fetcher got to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(consumer.position(&tp).await.unwrap(), 0);
    assert_eq!(next(&mut consumer).await.offset, 1);

    // From the end, only records produced afterwards arrive.
    consumer.seek(&tp, Offset::End).unwrap();
    // Pins "end" to the log end as it is now, before the new record exists.
    assert_eq!(consumer.position(&tp).await.unwrap(), 1001);
    producer
        .send(ProducerRecord::new(topic, Bytes::from_static(b"after")).with_partition(0))
        .await
        .unwrap()
        .await
        .unwrap();
    let r = next(&mut consumer).await;
    assert_eq!((r.offset, r.value.as_deref()), (1001, Some(&b"after"[..])));
}

/// `Consumer::next_batch` (borrowed batches) hands out exactly the records the stream
/// does — offsets, timestamps, keys, values, headers — when mixed with the stream in
/// any order, and honours positions and seeks: after a seek into the middle of a batch
/// the next batch starts at the sought offset, and `position` after a batch is the
/// offset after its last record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_batch_hands_out_the_stream_s_records_mixed_with_it_and_after_seeks() {
    const COUNT: i64 = 3_000;
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let topic = "batches";
    create_topic(&bootstrap, topic, 1).await;
    let mut config = ProducerConfig::new(&bootstrap);
    // Small batches: ~1 KiB each, so a fetch returns many.
    config.batch_bytes_max = 1024;
    let producer = Producer::new(config).expect("producer");
    let mut deliveries = Vec::new();
    for n in 0..COUNT {
        let mut record = ProducerRecord::new(topic, value(n as usize)).with_partition(0);
        if n % 3 == 0 {
            record = record.with_key(key(n as usize));
        }
        if n % 7 == 0 {
            record = record.with_header("seq", n.to_string());
        }
        if n % 11 == 0 {
            record.value = None;
        }
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for d in deliveries {
        d.await.expect("delivered");
    }
    let reference = consume_all(&bootstrap, topic, Duration::from_secs(60)).await;
    assert_eq!(reference.len(), COUNT as usize);
    let by_offset: HashMap<i64, &rill_client::ConsumerRecord> =
        reference.iter().map(|r| (r.offset, r)).collect();
    let same = |got: &rill_client::ConsumerRecord| {
        let want = by_offset[&got.offset];
        assert_eq!(got.timestamp_ms, want.timestamp_ms, "offset {}", got.offset);
        assert_eq!(got.key, want.key, "offset {}", got.offset);
        assert_eq!(got.value, want.value, "offset {}", got.offset);
        assert_eq!(got.headers, want.headers, "offset {}", got.offset);
    };

    let tp = TopicPartition::new(topic, 0);
    let mut consumer = Consumer::new(ConsumerConfig::new(&bootstrap)).expect("consumer");
    consumer.assign(std::slice::from_ref(&tp));
    consumer.seek(&tp, Offset::Beginning).unwrap();
    let mut expected = 1; // offset 0: the LEADER_CHANGE control batch
    let (mut batches, mut step) = (0, 0usize);
    while expected <= COUNT {
        step += 1;
        // A few records through the stream, then a batch.
        for _ in 0..step % 3 {
            if expected > COUNT {
                break;
            }
            let r = next(&mut consumer).await;
            assert_eq!(r.offset, expected);
            same(&r);
            expected += 1;
        }
        if expected > COUNT {
            break;
        }
        let batch = tokio::time::timeout(Duration::from_secs(30), consumer.next_batch())
            .await
            .expect("a batch within 30 s")
            .expect("open")
            .expect("batch");
        assert!(!batch.is_empty());
        assert_eq!((batch.topic(), batch.partition()), (topic, 0));
        for r in batch.iter() {
            assert_eq!(r.offset(), expected);
            let owned = r.to_record();
            assert_eq!(
                (owned.key.as_deref(), owned.value.as_deref()),
                (r.key(), r.value())
            );
            let headers: Vec<(String, Option<Vec<u8>>)> = r
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect();
            let owned_headers: Vec<(String, Option<Vec<u8>>)> = owned
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.as_ref().map(|v| v.to_vec())))
                .collect();
            assert_eq!(headers, owned_headers);
            same(&owned);
            expected += 1;
        }
        let last = batch.last_offset().expect("records");
        batches += 1;
        assert_eq!(consumer.position(&tp).await.unwrap(), last + 1);
    }
    println!("read {COUNT} records in {batches} batches mixed with stream polls");
    assert!(batches > 20, "the batches must be many: {batches}");

    // Into the middle of a batch: the batch starts at the sought offset.
    for sought in [1500, 17, COUNT] {
        consumer.seek(&tp, Offset::At(sought)).unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(30), consumer.next_batch())
            .await
            .expect("a batch within 30 s")
            .expect("open")
            .expect("batch");
        let first = batch.iter().next().expect("a record");
        assert_eq!(first.offset(), sought);
        same(&first.to_record());
    }
}
