//! A connection's pipelined Produce requests are appended in the order they were sent.
//!
//! librdkafka with its default in-flight limit (1,000,000 requests per connection) and
//! `linger.ms=0` sends many Produce requests for one partition before the first is
//! answered; every one must land in request order. Before the broker ordered the
//! append stage of a connection's requests, each request's handler task raced the
//! others and 20,000 records came back out of order at a few hundred places per run.
//! `RILL_ORDER_RUNS` sets the number of rdkafka runs (default 10).

mod client_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rill_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use rill_tests::RilldProcess;

use client_common::{consume_all, create_topic};

const RECORDS: u64 = 100_000;
const TIMEOUT: Duration = Duration::from_secs(120);

fn runs() -> usize {
    std::env::var("RILL_ORDER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Produces `RECORDS` records numbered 0.. (value = the number, big endian) to
/// partition 0 of `topic` with librdkafka's defaults for pipelining, acks=all, no retries.
async fn produce_numbered_with_rdkafka(bootstrap: &str, topic: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("acks", "all")
        .set("retries", "0")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "120000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for n in 0..RECORDS {
        let value = n.to_be_bytes();
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(0)
            .payload(&value[..]);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for (n, result) in join_all(deliveries).await.into_iter().enumerate() {
        result
            .expect("delivery future")
            .unwrap_or_else(|(e, _)| panic!("record {n} not delivered: {e}"));
    }
}

/// Reads partition 0 of `topic` from the beginning with librdkafka and returns the
/// record numbers in offset order.
fn consume_numbers_with_rdkafka(bootstrap: &str, topic: &str) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "order-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut numbers = Vec::with_capacity(RECORDS as usize);
    while numbers.len() < RECORDS as usize {
        assert!(
            Instant::now() < deadline,
            "read {} of {RECORDS} records",
            numbers.len()
        );
        let Some(message) = consumer.poll(Timeout::After(Duration::from_millis(100))) else {
            continue;
        };
        let message = message.expect("consume");
        let value: [u8; 8] = message
            .payload()
            .and_then(|p| p.try_into().ok())
            .expect("an 8-byte record number");
        numbers.push(u64::from_be_bytes(value));
    }
    numbers
}

/// The positions where `numbers` is not `0, 1, 2, …`.
fn misplaced(numbers: &[u64]) -> Vec<usize> {
    numbers
        .iter()
        .enumerate()
        .filter(|(i, n)| **n != *i as u64)
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_pipelined_produce_is_stored_in_produce_order() {
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    for run in 0..runs() {
        let topic = format!("order-{run}");
        create_topic(&bootstrap, &topic, 1).await;
        produce_numbered_with_rdkafka(&bootstrap, &topic).await;
        let numbers = consume_numbers_with_rdkafka(&bootstrap, &topic);
        let wrong = misplaced(&numbers);
        assert!(
            wrong.is_empty(),
            "run {run}: {} of {RECORDS} records out of order, first at offsets {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rill_client_pipelined_produce_is_stored_in_produce_order() {
    const PARTITIONS: i32 = 4;
    let broker = RilldProcess::start();
    let bootstrap = broker.bootstrap();
    let topic = "order-rill";
    create_topic(&bootstrap, topic, PARTITIONS).await;
    let mut config = ProducerConfig::new(&bootstrap);
    config.acks = Acks::All;
    config.linger_ms = 0;
    let producer = Producer::new(config).expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS as usize);
    for n in 0..RECORDS {
        // Partitions' batches travel in pipelined requests on the one connection.
        let record = ProducerRecord::new(topic, n.to_be_bytes().to_vec())
            .with_partition((n % PARTITIONS as u64) as i32);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    for (n, delivery) in deliveries.into_iter().enumerate() {
        delivery
            .await
            .unwrap_or_else(|e| panic!("record {n} not delivered: {e}"));
    }
    producer.close().await.expect("close");

    let records = consume_all(&bootstrap, topic, TIMEOUT).await;
    assert_eq!(records.len(), RECORDS as usize);
    let mut last: HashMap<i32, u64> = HashMap::new();
    for record in &records {
        let value: [u8; 8] = record.value.as_deref().unwrap().try_into().unwrap();
        let n = u64::from_be_bytes(value);
        assert_eq!(n % PARTITIONS as u64, record.partition as u64);
        if let Some(previous) = last.insert(record.partition, n) {
            assert_eq!(
                n,
                previous + PARTITIONS as u64,
                "partition {} offset {}: record {n} after {previous}",
                record.partition,
                record.offset
            );
        }
    }
}
