//! The broker is SIGKILLed and restarted in the middle of a produce loop. The producer
//! retries through the outage; every record that got an acknowledgement (acks=all) is
//! read back at its acknowledged offset. rill-client is not idempotent, so a batch whose
//! acknowledgement was lost in the crash may be written twice: duplicates are allowed
//! (and counted), losses are not.

mod client_common;

use std::collections::HashMap;
use std::time::Duration;

use rill_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use rill_tests::RilldProcess;

use client_common::{consume_all, create_topic};

const RECORDS: usize = 30_000;
const KILL_AT: usize = 10_000;
const RESTART_AT: usize = 15_000;
const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retries_through_a_broker_kill_and_loses_no_acknowledged_record() {
    let mut broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "crash", PARTITIONS).await;

    let mut config = ProducerConfig::new(&bootstrap);
    config.acks = Acks::All;
    config.linger_ms = 2;
    config.batch_bytes_max = 64 * 1024;
    config.client.request_timeout_ms = 5_000;
    config.client.retry_backoff_max_ms = 200;
    config.delivery_timeout_ms = 60_000;
    let producer = Producer::new(config).expect("producer");

    let mut deliveries = Vec::with_capacity(RECORDS);
    for n in 0..RECORDS {
        if n == KILL_AT {
            // No flush first: the kill lands while batches are queued and in flight.
            broker.kill();
        }
        if n == RESTART_AT {
            tokio::task::block_in_place(|| broker.restart());
            assert_eq!(broker.bootstrap(), bootstrap, "restart keeps the port");
        }
        let record =
            ProducerRecord::new("crash", format!("record {n}")).with_key(format!("k{}", n % 97));
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");

    let mut acked: HashMap<usize, (i32, i64)> = HashMap::new();
    for (n, d) in deliveries.into_iter().enumerate() {
        match d.await {
            Ok(meta) => {
                acked.insert(n, (meta.partition, meta.offset));
            }
            Err(e) => panic!(
                "record {n} failed although the broker came back: {e}\n{}",
                broker.log()
            ),
        }
    }
    assert_eq!(acked.len(), RECORDS);

    let records = consume_all(&bootstrap, "crash", Duration::from_secs(60)).await;
    let mut at: HashMap<(i32, i64), String> = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in records {
        let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
        *copies.entry(v.clone()).or_default() += 1;
        at.insert((r.partition, r.offset), v);
    }
    for (n, (p, o)) in &acked {
        let expected = format!("record {n}");
        assert_eq!(
            at.get(&(*p, *o)),
            Some(&expected),
            "acknowledged record {n} not at {p}/{o}"
        );
    }
    // Order per partition survives the retries: acknowledged offsets grow with the send
    // order (one batch in flight per partition, failed batches retried first).
    let mut by_partition: HashMap<i32, Vec<(i64, usize)>> = HashMap::new();
    for (n, (p, o)) in &acked {
        by_partition.entry(*p).or_default().push((*o, *n));
    }
    for (p, mut v) in by_partition {
        v.sort_unstable();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p}: acknowledged offsets out of send order"
        );
    }
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    assert!(
        copies.len() == RECORDS,
        "every record is in the log at least once ({} distinct)",
        copies.len()
    );
    let retries = producer.retries_total();
    assert!(
        retries > 0,
        "the kill must have hit batches that then were retried"
    );
    eprintln!(
        "broker killed and restarted: {RECORDS} acknowledged, 0 lost, {duplicates} duplicate copies, {retries} batch retries"
    );
}

/// With the broker down, `send` stops returning once `buffer_bytes_max` is used up
/// (bounded memory), and continues when the broker is back and batches drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_buffer_space_while_the_broker_is_down() {
    let mut broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "pressure", 1).await;
    let mut config = ProducerConfig::new(&bootstrap);
    config.buffer_bytes_max = 64 * 1024;
    config.batch_bytes_max = 16 * 1024;
    config.client.retry_backoff_max_ms = 100;
    let producer = Producer::new(config).expect("producer");
    // Metadata is cached by the first record.
    producer
        .send(ProducerRecord::new("pressure", "first"))
        .await
        .expect("send")
        .await
        .expect("first record delivered");
    broker.kill();

    let value = vec![b'x'; 1000];
    let mut deliveries = Vec::new();
    let blocked_at = loop {
        let send = producer.send(ProducerRecord::new("pressure", value.clone()));
        match tokio::time::timeout(Duration::from_millis(500), send).await {
            Ok(d) => deliveries.push(d.expect("send")),
            Err(_) => break deliveries.len(),
        }
        assert!(
            deliveries.len() <= 64,
            "64 KiB buffer took more than 64 records of 1 KB"
        );
    };
    assert!(blocked_at >= 32, "blocked after only {blocked_at} records");

    tokio::task::block_in_place(|| broker.restart());
    let resumed = tokio::time::timeout(
        Duration::from_secs(30),
        producer.send(ProducerRecord::new("pressure", "after")),
    )
    .await
    .expect("send resumes once the broker is back")
    .expect("send");
    for d in deliveries {
        d.await.expect("queued record delivered after the restart");
    }
    resumed.await.expect("delivered");
}

/// A consumer that loses its broker mid-stream reconnects and continues at the next
/// offset: nothing skipped, nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_resumes_at_the_next_offset_after_a_broker_restart() {
    use futures::StreamExt;
    use rill_client::{Consumer, ConsumerConfig, Offset, TopicPartition};

    let mut broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "resume", 1).await;
    // Small batches: a fetch returns whole batches, and the consumer must still have
    // fetches to make when the broker dies.
    let mut producer_config = ProducerConfig::new(&bootstrap);
    producer_config.batch_bytes_max = 4096;
    let producer = Producer::new(producer_config).expect("producer");
    let mut deliveries = Vec::new();
    for n in 0..20_000 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("resume", format!("r{n}")))
                .await
                .expect("send"),
        );
    }
    for d in deliveries {
        d.await.expect("delivered");
    }

    let mut config = ConsumerConfig::new(&bootstrap);
    // Small fetches, so the kill lands with most of the partition still unread.
    config.partition_fetch_bytes_max = 16 * 1024;
    config.prefetch_responses_max = 1;
    config.client.retry_backoff_max_ms = 100;
    let mut consumer = Consumer::new(config).expect("consumer");
    let tp = TopicPartition::new("resume", 0);
    consumer.assign(std::slice::from_ref(&tp));
    consumer.seek(&tp, Offset::Beginning).unwrap();
    let mut expected: i64 = 0;
    while expected < 20_000 {
        if expected == 5_000 {
            broker.kill();
            tokio::task::block_in_place(|| broker.restart());
        }
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a record within 30 s")
            .expect("stream open")
            .expect("record");
        // Offset 0 is the partition's LEADER_CHANGE control batch: record n is at n + 1.
        assert_eq!(record.offset, expected + 1, "skipped or repeated an offset");
        assert_eq!(
            record.value.as_deref(),
            Some(format!("r{expected}").as_bytes())
        );
        expected += 1;
    }
}

/// The consumer's next answer, failing the test after 30 s.
async fn next_within(
    consumer: &mut rill_client::Consumer,
) -> Result<rill_client::ConsumerRecord, rill_client::Error> {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("an answer within 30 s")
        .expect("stream open")
}

/// The `.log` segment files under `dir` whose path names `topic`, sorted.
fn segment_files(dir: &std::path::Path, topic: &str, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            segment_files(&path, topic, out);
        } else if path.extension().is_some_and(|e| e == "log")
            && path.to_string_lossy().contains(topic)
        {
            out.push(path);
        }
    }
    out.sort();
}

/// A batch whose CRC fails on the way to the application (a byte flipped in the
/// broker's segment file, under its mapping): the records before it arrive in order,
/// then every poll reports the error instead of skipping the batch (the stream decodes
/// batches after the fetcher has moved on, so it must rewind), and a seek past it reads
/// on. Never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reports_a_corrupt_batch_and_does_not_skip_it() {
    use rill_client::{Consumer, ConsumerConfig, Offset, TopicPartition};
    use std::io::{Seek, SeekFrom, Write};

    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "corrupt", 1).await;
    let producer = Producer::new(ProducerConfig::new(&bootstrap)).expect("producer");
    // Three batches of 10 records: one flush each.
    for b in 0..3 {
        for n in 0..10 {
            let _delivered = producer
                .send(ProducerRecord::new("corrupt", format!("b{b}-r{n}")))
                .await
                .expect("send");
        }
        producer.flush().await.expect("flush");
    }

    // The data batches in the segment: (file, position, base offset, next offset).
    let mut files = Vec::new();
    segment_files(&broker.data_dir(), "corrupt", &mut files);
    let mut batches = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read segment");
        let mut pos = 0;
        while pos + 12 <= data.len() && data[pos + 8..pos + 12] != [0, 0, 0, 0] {
            let batch = rill_record::BatchView::new(&data[pos..]).expect("a whole batch");
            if !batch.is_control() {
                batches.push((file.clone(), pos, batch.base_offset(), batch.next_offset()));
            }
            pos += batch.size_bytes();
        }
    }
    assert_eq!(batches.len(), 3, "three data batches in {files:?}");
    let (file, pos, bad_base, bad_next) = batches[1].clone();
    // The last byte of the middle batch: its last record's value, inside the CRC.
    let bad_len = {
        let data = std::fs::read(&file).expect("read segment");
        rill_record::BatchView::new(&data[pos..])
            .expect("batch")
            .size_bytes()
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .expect("open segment");
    f.seek(SeekFrom::Start((pos + bad_len - 1) as u64))
        .expect("seek");
    f.write_all(b"X").expect("flip a byte");
    drop(f);

    let mut config = ConsumerConfig::new(&bootstrap);
    config.client.retry_backoff_max_ms = 100;
    let mut consumer = Consumer::new(config).expect("consumer");
    let tp = TopicPartition::new("corrupt", 0);
    consumer.assign(std::slice::from_ref(&tp));
    consumer.seek(&tp, Offset::Beginning).unwrap();
    for n in 0..10 {
        let record = next_within(&mut consumer)
            .await
            .expect("a record before the bad batch");
        assert_eq!(record.value.as_deref(), Some(format!("b0-r{n}").as_bytes()));
    }
    for attempt in 0..3 {
        match next_within(&mut consumer).await {
            Err(e) => println!("poll {attempt} at the bad batch: {e}"),
            Ok(r) => panic!(
                "poll {attempt}: got offset {} past the corrupt batch {bad_base}..{bad_next}",
                r.offset
            ),
        }
    }
    assert_eq!(consumer.position(&tp).await.expect("position"), bad_base);
    consumer.seek(&tp, Offset::At(bad_next)).unwrap();
    for n in 0..10 {
        let record = next_within(&mut consumer)
            .await
            .expect("a record after the bad batch");
        assert_eq!(record.value.as_deref(), Some(format!("b2-r{n}").as_bytes()));
    }
}
