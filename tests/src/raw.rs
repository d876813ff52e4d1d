//! A raw Kafka-protocol connection for tests that need to send exact requests
//! (error cases, pipelining, versions): encoding and decoding use the third-party
//! `kafka-protocol` crate directly, not Rill's own protocol crate, so the broker is
//! checked against an independent codec.
//!
//! Test harness only: it decodes what our own broker answers, so `kafka-protocol`'s
//! unbounded decoders (forbidden elsewhere by clippy.toml) are acceptable here.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// A blocking connection speaking raw Kafka frames.
pub struct RawConn {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl RawConn {
    /// Connects (with a 10 s read timeout so a missing response fails the test).
    pub fn connect(addr: SocketAddr) -> RawConn {
        RawConn::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// Wraps a connected stream (e.g. one bound to a chosen local address), with the
    /// same 10 s read timeout as [`RawConn::connect`].
    pub fn from_stream(stream: TcpStream) -> RawConn {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Sends a request of type `R` at `version`; returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> i32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let frame = encode_request(R::KEY, version, correlation_id, request);
        self.send_bytes(&frame);
        correlation_id
    }

    /// Writes bytes as they are (a hand-made frame, or garbage).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Writes bytes as they are; false if the broker has closed the connection.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Reads one response frame payload (after the size prefix); `None` on EOF.
    pub fn recv_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        match self.stream.read_exact(&mut size) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    || e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
        let size = i32::from_be_bytes(size);
        assert!((0..=256 << 20).contains(&size), "response size {size}");
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).expect("read body");
        Some(Bytes::from(body))
    }

    /// Reads the response to a request of type `R` sent at `version`; returns
    /// (correlation id, response).
    pub fn recv<R: Request>(&mut self, version: i16) -> (i32, R::Response) {
        let mut frame = self
            .recv_frame()
            .expect("connection closed instead of a response");
        let header_version = R::Response::header_version(version);
        let header = ResponseHeader::decode(&mut frame, header_version).expect("response header");
        let response = R::Response::decode(&mut frame, version).expect("response body");
        assert_eq!(frame.remaining(), 0, "trailing bytes in response");
        (header.correlation_id, response)
    }

    /// Sends a request and reads its response, checking the correlation id; `None` if
    /// the broker closed the connection instead of answering (or before the request
    /// could be written).
    pub fn try_call<R: Request>(&mut self, version: i16, request: &R) -> Option<R::Response> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let frame = encode_request(R::KEY, version, correlation_id, request);
        if !self.try_send_bytes(&frame) {
            return None;
        }
        let mut frame = self.recv_frame()?;
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .expect("response header");
        assert_eq!(header.correlation_id, correlation_id, "correlation id");
        Some(R::Response::decode(&mut frame, version).expect("response body"))
    }

    /// Sends a request and reads its response, checking the correlation id.
    pub fn call<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        let id = self.send(version, request);
        let (got, response) = self.recv::<R>(version);
        assert_eq!(got, id, "correlation id");
        response
    }

    /// Reads and discards everything until the broker closes the connection; returns the
    /// bytes read (frames may end cut short).
    pub fn drain_to_eof(&mut self) -> usize {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total_bytes = 0;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return total_bytes,
                Ok(n) => total_bytes += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total_bytes,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// True once the broker has closed the connection (reads EOF or a reset).
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A complete request frame: size prefix, header, body.
pub fn encode_request<R: Request>(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("rill-tests")));
    let header_version = ApiKey::try_from(api_key)
        .map(|k| k.request_header_version(version))
        .unwrap_or(1);
    let mut payload = BytesMut::new();
    header.encode(&mut payload, header_version).expect("header");
    request.encode(&mut payload, version).expect("body");
    let mut frame = BytesMut::with_capacity(payload.len() + 4);
    frame.put_i32(payload.len() as i32);
    frame.extend_from_slice(&payload);
    frame.freeze()
}

/// The first `sent_bytes` of a Produce frame announcing `body_bytes`: a peer that
/// starts a request and stalls.
pub fn partial_produce_frame(body_bytes: i32, sent_bytes: usize) -> BytesMut {
    let mut frame = BytesMut::new();
    frame.put_i32(body_bytes);
    frame.put_i16(0); // Produce
    frame.put_i16(9); // Produce v9
    frame.put_bytes(0, sent_bytes.saturating_sub(frame.len()));
    frame
}

/// One uncompressed RecordBatch v2 holding `values` (keys null), timestamps from
/// `first_timestamp_ms` one millisecond apart.
pub fn record_batch(values: &[&[u8]], first_timestamp_ms: i64) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch whenever offset - sequence changes;
            // this keeps all records in one batch with base sequence -1 (none).
            sequence: i as i32 - 1,
            timestamp: first_timestamp_ms + i as i64,
            key: None,
            value: Some(Bytes::copy_from_slice(v)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf.freeze()
}

/// Decodes every record of the data batches in `records` (as returned by Fetch):
/// (offset, value). Control batches (each Raft term's LEADER_CHANGE entry) are
/// skipped, as every Kafka consumer does.
pub fn decode_records(records: &Bytes) -> Vec<(i64, Vec<u8>)> {
    let mut buf = records.clone();
    let mut out = Vec::new();
    while buf.remaining() > 0 {
        let set = RecordBatchDecoder::decode(&mut buf).expect("decode batch");
        for r in set.records.into_iter().filter(|r| !r.control) {
            out.push((r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()));
        }
    }
    out
}

/// The offset after the last batch in `records` (data or control), where the next
/// fetch starts; `None` for no batch.
pub fn next_fetch_offset(records: &Bytes) -> Option<i64> {
    let mut next = None;
    let mut rest = &records[..];
    while rest.len() >= 61 {
        let base = i64::from_be_bytes(rest[0..8].try_into().expect("8 bytes"));
        let length = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        let delta = i32::from_be_bytes(rest[23..27].try_into().expect("4 bytes"));
        next = Some(base + i64::from(delta) + 1);
        let size = 12 + length.max(0) as usize;
        if size > rest.len() {
            break;
        }
        rest = &rest[size..];
    }
    next
}

/// Every record of a partition from offset 0, in log order: (offset, value). Fetches
/// (v12) until the log end, stepping past control batches (each term's LEADER_CHANGE),
/// which hold offsets but no records.
pub fn read_all(conn: &mut RawConn, topic: &str, partition: i32) -> Vec<(i64, Vec<u8>)> {
    read_all_from(conn, topic, partition, 0)
}

/// [`read_all`] from `start_offset` (a log start that retention moved past 0).
pub fn read_all_from(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    start_offset: i64,
) -> Vec<(i64, Vec<u8>)> {
    let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut next = start_offset;
    loop {
        let response = conn.call::<kafka_protocol::messages::FetchRequest>(
            12,
            &requests::fetch(topic, partition, next, 0, 0),
        );
        let p = &response.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic}-{partition} at {next}");
        let records = p.records.clone().unwrap_or_default();
        let Some(after) = next_fetch_offset(&records) else {
            return out;
        };
        assert!(after > next, "fetch at {next} made no progress");
        out.extend(
            decode_records(&records)
                .into_iter()
                .filter(|(o, _)| *o >= next),
        );
        next = after;
    }
}

/// The producer ids of every data batch of `topic`-`partition` (control batches left
/// out), read raw from the log.
pub fn batch_producer_ids(conn: &mut RawConn, topic: &str, partition: i32) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut next = 0;
    loop {
        let response = conn.call::<kafka_protocol::messages::FetchRequest>(
            12,
            &requests::fetch(topic, partition, next, 0, 0),
        );
        let records = response.responses[0].partitions[0]
            .records
            .clone()
            .unwrap_or_default();
        let mut rest = &records[..];
        let mut progressed = false;
        while rest.len() >= 61 {
            let length = i32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            if rest.len() < 12 + length {
                break;
            }
            let base = i64::from_be_bytes(rest[0..8].try_into().unwrap());
            let attributes = i16::from_be_bytes(rest[21..23].try_into().unwrap());
            let last_delta = i32::from_be_bytes(rest[23..27].try_into().unwrap());
            if attributes & 0x20 == 0 {
                ids.push(i64::from_be_bytes(rest[43..51].try_into().unwrap()));
            }
            next = base + i64::from(last_delta) + 1;
            progressed = true;
            rest = &rest[12 + length..];
        }
        if !progressed {
            return ids;
        }
    }
}

/// Request builders for the APIs the broker tests use most.
pub mod requests {
    use bytes::Bytes;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{CreateTopicsRequest, FetchRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    /// A topic name.
    pub fn topic_name(name: &str) -> TopicName {
        TopicName(StrBytes::from_string(name.to_string()))
    }

    /// CreateTopics for one topic with `partitions` and `configs`.
    pub fn create_topic(
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> CreateTopicsRequest {
        CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.to_string()))
                                .with_value(Some(StrBytes::from_string(v.to_string())))
                        })
                        .collect(),
                )])
    }

    /// Produce one `records` blob to one partition.
    pub fn produce(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])])
    }

    /// Fetch (v4–v12, by name) one partition from `offset`.
    pub fn fetch(
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        min_bytes: i32,
    ) -> FetchRequest {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(min_bytes)
            .with_max_bytes(50 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_current_leader_epoch(-1)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(1 << 20)])])
    }
}
