//! Request decoding on the broker's hot paths: Produce and Fetch bodies through Rill's own
//! bounded decoders (`rill_protocol::decode`) against `kafka-protocol`'s generated decoders,
//! the reference ("before": the broker decoded with them until issue 8), in the same run.
//!
//! `cargo bench -p rill-protocol --bench decode`
//!
//! Cases: Produce v9 with one partition of 64 KiB of records (the common pipelined case),
//! Produce v9 with 64 partitions of 1 KiB (per-partition overhead), Fetch v12 with 64
//! partitions (a consumer of a wide topic), Fetch v4 with 8 partitions.
#![allow(clippy::disallowed_methods)] // kafka-protocol's decoder is the reference here

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rill_protocol::decode::decode_body;
use rill_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use rill_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use rill_protocol::kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
use rill_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("orders"))
}

fn produce(partitions: i32, records_bytes: usize) -> ProduceRequest {
    let records = Bytes::from(vec![7u8; records_bytes]);
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(
                (0..partitions)
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(records.clone()))
                    })
                    .collect(),
            )])
}

fn fetch(partitions: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(52_428_800)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic())
            .with_partitions(
                (0..partitions)
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(p)
                            .with_fetch_offset(1_000_000 + i64::from(p))
                            .with_partition_max_bytes(1_048_576)
                    })
                    .collect(),
            )])
}

fn encode<T: Encodable>(message: &T, version: i16) -> Bytes {
    let mut buf = BytesMut::new();
    message.encode(&mut buf, version).expect("encodable");
    buf.freeze()
}

fn compare<T>(c: &mut Criterion, name: &str, message: &T, version: i16)
where
    T: Encodable + Decodable + rill_protocol::decode::Decode,
{
    let body = encode(message, version);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("rill_bounded", |b| {
        b.iter(|| decode_body::<T>(body.clone(), version).expect("decodes"))
    });
    group.bench_function("kafka_protocol", |b| {
        b.iter(|| <T as Decodable>::decode(&mut body.clone(), version).expect("decodes"))
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    compare(c, "produce_v9_1x64KiB", &produce(1, 64 * 1024), 9);
    compare(c, "produce_v9_64x1KiB", &produce(64, 1024), 9);
    compare(c, "fetch_v12_64_partitions", &fetch(64), 12);
    compare(c, "fetch_v4_8_partitions", &fetch(8), 4);
}

criterion_group!(benches, bench);
criterion_main!(benches);
