//! Fetch response encoding: the hand-written chunked writer (record bytes not copied) against
//! `kafka-protocol`'s encoder (record bytes copied into one buffer), for 8 partitions of 1 MiB.
//!
//! `cargo bench -p rill-protocol --bench fetch_encode`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rill_protocol::codec::encode_response;
use rill_protocol::fetch::{
    encode_fetch_response, FetchPartitionPart, FetchResponseParts, FetchTopicPart,
};
use rill_protocol::kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, PartitionData,
};
use rill_protocol::kafka_protocol::messages::{ApiKey, FetchResponse, TopicName};
use rill_protocol::kafka_protocol::protocol::StrBytes;

const PARTITIONS: i32 = 8;
const RECORDS_BYTES_PER_PARTITION: usize = 1 << 20;

fn bench(c: &mut Criterion) {
    let records: Vec<Bytes> = (0..PARTITIONS)
        .map(|p| Bytes::from(vec![p as u8; RECORDS_BYTES_PER_PARTITION]))
        .collect();
    let parts = FetchResponseParts {
        topics: vec![FetchTopicPart {
            name: StrBytes::from_static_str("orders"),
            topic_id: uuid::Uuid::nil(),
            partitions: records
                .iter()
                .enumerate()
                .map(|(i, r)| FetchPartitionPart {
                    partition_index: i as i32,
                    high_watermark: 1000,
                    records: vec![r.clone()],
                    ..Default::default()
                })
                .collect(),
        }],
        ..Default::default()
    };
    let message = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
        .with_topic(TopicName(StrBytes::from_static_str("orders")))
        .with_partitions(
            records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    PartitionData::default()
                        .with_partition_index(i as i32)
                        .with_high_watermark(1000)
                        .with_records(Some(r.clone()))
                })
                .collect(),
        )]);

    let mut group = c.benchmark_group("fetch_response_8x1MiB");
    group.throughput(Throughput::Bytes(
        PARTITIONS as u64 * RECORDS_BYTES_PER_PARTITION as u64,
    ));
    group.bench_function("rill_chunked_zero_copy_v12", |b| {
        b.iter(|| encode_fetch_response(1, 12, &parts).unwrap())
    });
    group.bench_function("kafka_protocol_contiguous_v12", |b| {
        b.iter(|| encode_response(1, ApiKey::Fetch as i16, 12, &message).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
