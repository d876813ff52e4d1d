//! How many times the broker copies a record batch, checked by pointer identity on
//! the real code paths (the same functions the connection task calls):
//!
//! * Produce: socket bytes → frame buffer (the `read` syscall; the kernel's copy)
//!   → `records` is a slice of that buffer (0 copies: framing, header parsing and
//!   body decoding only slice it) → storage's append copies it into the mapped
//!   segment (1 copy). Records are never decoded.
//! * Fetch: storage hands out a slice of the mapped segment → the response chunks
//!   contain that very slice (0 copies) → `writev` (the kernel's copy into the
//!   socket buffer).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, ProduceRequest, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use rill_broker::config::{Cli, Config};
use rill_broker::context::Broker;
use rill_broker::state::PartitionManager;
use rill_protocol::frame::FrameCodec;
use rill_protocol::header::parse_request_header;
use rill_storage::batch::{encode_uncompressed, RecordSpec};
use tokio_util::codec::Decoder;

fn broker(dir: &std::path::Path) -> Broker {
    let mut config = Config::load(&<Cli as clap::Parser>::parse_from(["rilld"])).unwrap();
    config.data_dir = dir.to_path_buf();
    config.topic_defaults.segment_bytes = 1 << 20;
    let config = Arc::new(config);
    let manager = PartitionManager::open(Arc::clone(&config)).unwrap();
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let manager = Arc::new(manager);
    Broker {
        groups: rill_broker::group::GroupCoordinator::new(
            Arc::clone(&config),
            Arc::clone(&manager),
            shutdown.clone(),
        ),
        config,
        manager,
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        shutdown,
    }
}

fn batch(value_bytes: usize) -> Vec<u8> {
    let value = vec![7u8; value_bytes];
    let mut out = Vec::new();
    let record = RecordSpec {
        timestamp_ms: 1_700_000_000_000,
        key: None,
        value: Some(&value),
    };
    encode_uncompressed(&mut out, 0, -1, &[record]);
    out
}

fn contains(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

#[tokio::test]
async fn produce_copies_a_batch_once_and_fetch_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    broker
        .manager
        .create_topic("copies", 1, 1, Default::default(), false)
        .await
        .unwrap();
    let produced = batch(100_000);

    // ---- Produce: the request as it arrives on the socket.
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("copies")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(produced.clone())))])]);
    let mut payload = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(1)
        .encode(&mut payload, 2)
        .unwrap();
    request.encode(&mut payload, 9).unwrap();
    let mut wire = BytesMut::new();
    wire.put_i32(payload.len() as i32);
    wire.put_slice(&payload);

    // What the connection task does: frame, parse the header, decode the body.
    let mut frame = FrameCodec::new(1 << 20)
        .decode(&mut wire)
        .unwrap()
        .unwrap()
        .freeze();
    let frame_buffer = frame.clone();
    parse_request_header(&mut frame).unwrap();
    let decoded: ProduceRequest = rill_protocol::codec::decode_request(frame, 9).unwrap();
    let records = decoded.topic_data[0].partition_data[0]
        .records
        .clone()
        .unwrap();
    assert_eq!(&records[..], &produced[..]);
    assert!(
        contains(&frame_buffer, &records),
        "decoding must slice the frame buffer, not copy it"
    );

    // The append: the one copy, into the mapped segment.
    let (_, partition) = broker.manager.partition("copies", 0).unwrap();
    let counts = rill_broker::api::produce_check::check_client_batches(&records, 1 << 20).unwrap();
    let appended = partition.append(&records, counts).unwrap();
    partition.wait_acknowledgeable(&appended).await.unwrap();
    // Offset 0 holds the group's LEADER_CHANGE control batch (term 1).
    assert_eq!(appended.base_offset, 1);
    let stored = partition.read(1, 1 << 20).unwrap().records;
    assert_eq!(stored.len(), produced.len());
    assert!(
        !contains(&frame_buffer, &stored),
        "the log holds its own copy"
    );
    // Offsets/epoch are stamped in the log's copy; the CRC-covered part is untouched.
    assert_eq!(&stored[21..], &produced[21..]);

    // ---- Fetch: the response chunks carry the storage slice itself.
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("copies")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(1)
                .with_partition_max_bytes(1 << 20)])]);
    let chunks = rill_broker::api::fetch::handle(&broker, 7, fetch, 12)
        .await
        .unwrap();
    let slice = chunks
        .iter()
        .find(|c| c.len() == stored.len())
        .expect("the batch travels as its own chunk");
    assert_eq!(
        slice.as_ptr(),
        stored.as_ptr(),
        "the chunk is the mapped segment, not a copy"
    );
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let metadata: usize = total - stored.len();
    assert!(
        metadata < 200,
        "only {metadata} bytes of headers were encoded"
    );
}
