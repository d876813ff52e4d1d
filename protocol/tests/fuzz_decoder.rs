//! Decoder fuzz test (issue 3, "Bad input"): random and mutated frames thrown at the broker's
//! decode path — `FrameCodec` → `parse_request_header` → `decode_request_kind` (every served
//! api and version) → record-batch walking for Produce — asserting that nothing panics and
//! that no single allocation exceeds a bound derived from the frame size.
//!
//! * `cargo test -p rill-protocol --test fuzz_decoder` runs 100,000 frames.
//! * `RILL_FUZZ_LONG=1` runs 1,000,000; `RILL_FUZZ_FRAMES=N` runs N.
//! * `SEED=n` replays a run; a failure prints its seed and the offending frame in hex.
//!
//! A second test does the same for the client's side of Fetch: mutated Fetch responses (every
//! version, batches in every codec the build has) through `decode_response`, the batch walk,
//! bounded decompression and the record iterator.
//!
//! Issue 8 (acceptance 2 and 4) adds two tests that need no luck to find the dangerous bytes:
//!
//! * `every_count_at_its_maximum_is_a_typed_error`: for every served api and version, valid
//!   requests (the hand-written seed plus random ones from `RandomSource`) and random valid
//!   responses are decoded once through a probing `Source` that records where every length
//!   and count prefix starts — array counts, string, bytes and records lengths (nullable or
//!   not, compact or not), tagged-field counts and sizes. Each prefix in turn is set to its
//!   maximum (0x7fff, 0x7fffffff, or the varint ff ff ff ff 0f) and the frame goes through
//!   the real path (`parse_request_header` + `decode_request_kind`, or `decode_response`):
//!   it must be a `ProtocolError::MalformedBody`, with no allocation above the bound below.
//! * `the_523_byte_fetch_v7_response_and_mutated_responses_of_every_api_are_bounded`: the
//!   523-byte Fetch v7 response of issue 8 with a huge aborted-transactions count, records
//!   count or record key length, walked as the client does, is a typed error (or a short
//!   record walk that stops at the end of the bytes); then mutated random valid responses of
//!   every api and served version through `decode_response` (`frames / 5` of them).
//!
//! Allocations are measured by a counting global allocator in this test binary. Implementing
//! `GlobalAlloc` needs `unsafe`; it is confined to that impl, which only forwards to `System`
//! and updates thread-local counters (the library crate itself forbids unsafe code).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rill_protocol::batch::{self, BatchBuilder, ClientBatchRules, Compression, DecompressRecords};
use rill_protocol::codec::{decode_request_kind, decode_response, encode_request, encode_response};
use rill_protocol::decode::random::RandomSource;
use rill_protocol::decode::{Decode, DecodeError, Source, WireReader};
use rill_protocol::fetch::{
    encode_fetch_response, FetchPartitionPart, FetchResponseParts, FetchTopicPart,
};
use rill_protocol::frame::{FrameCodec, FRAME_RESERVE_STEP_BYTES};
use rill_protocol::header::{parse_request_header, RequestHeader};
use rill_protocol::kafka_protocol::messages::*;
use rill_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use rill_protocol::versions::{self, SUPPORTED};
use rill_protocol::ProtocolError;
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Counting allocator

#[derive(Clone, Copy)]
struct Tracking {
    armed: bool,
    largest_alloc_bytes: usize,
    live_bytes: isize,
    peak_live_bytes: isize,
}

thread_local! {
    static TRACKING: Cell<Tracking> = const {
        Cell::new(Tracking { armed: false, largest_alloc_bytes: 0, live_bytes: 0, peak_live_bytes: 0 })
    };
}

fn note_alloc(size: usize, freed: usize) {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = TRACKING.try_with(|t| {
        let mut s = t.get();
        if s.armed {
            s.largest_alloc_bytes = s.largest_alloc_bytes.max(size);
            s.live_bytes += size as isize - freed as isize;
            s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
            t.set(s);
        }
    });
}

struct CountingAllocator;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the bookkeeping touches only a
// `Cell` in a const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size(), 0);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size(), 0);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_alloc(0, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size, layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` with allocation tracking on; returns (largest single allocation, peak live bytes).
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    TRACKING.with(|t| {
        t.set(Tracking {
            armed: true,
            largest_alloc_bytes: 0,
            live_bytes: 0,
            peak_live_bytes: 0,
        })
    });
    let r = f();
    let s = TRACKING.with(|t| {
        let s = t.get();
        t.set(Tracking { armed: false, ..s });
        s
    });
    (r, s.largest_alloc_bytes, s.peak_live_bytes.max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// Bounds

/// Largest single allocation allowed while decoding the header and body of a frame of
/// `frame_bytes` bytes.
///
/// Decoded structures are larger in memory than on the wire: a 1-byte compact string becomes a
/// 32-byte `StrBytes`, a 3-byte config entry ~90 bytes, and a `Vec` that grows by doubling may
/// hold twice what it needs. So the bound is a fixed factor of the frame size, not the frame
/// size itself; what it rules out is an allocation sized by a *count* or *length* read off the
/// wire (the unpatched decoder reserved `count × element size`: gigabytes from a 17-byte frame).
fn single_alloc_bound(frame_bytes: usize) -> usize {
    SINGLE_ALLOC_FACTOR * frame_bytes + ALLOC_SLACK_BYTES
}
const SINGLE_ALLOC_FACTOR: usize = 64;
/// Peak memory held at once while decoding a frame (all decoded structures together).
fn peak_live_bound(frame_bytes: usize) -> usize {
    PEAK_LIVE_FACTOR * frame_bytes + 4 * ALLOC_SLACK_BYTES
}
const PEAK_LIVE_FACTOR: usize = 256;
/// Fixed allowance for small allocations whose size does not depend on the input (error
/// messages, a B-tree node for tagged fields, ...).
const ALLOC_SLACK_BYTES: usize = 4 * 1024;
/// Largest single allocation while splitting `input_bytes` received bytes into frames: the
/// receive buffer, which may grow ahead of the data by at most the data again or one step.
fn framing_alloc_bound(input_bytes: usize) -> usize {
    4 * input_bytes + 2 * FRAME_RESERVE_STEP_BYTES
}
/// FrameCodec limit used by the harness (mutations that inflate a size prefix are refused).
const FRAME_BYTES_MAX: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Seeds: a valid, well-populated request for every served api and version

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn sample_records(rng: &mut StdRng) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).with_producer(1000, 0, 0);
    for i in 0..rng.gen_range(1..4) {
        let value = format!("value-{i}");
        b.push(
            1_700_000_000_000 + i,
            (i % 2 == 0).then_some(&b"key"[..]),
            Some(value.as_bytes()),
            &[("h", Some(&b"v"[..]))],
        )
        .expect("sample batch");
    }
    let one = b.build().expect("sample batch");
    if rng.gen_bool(0.3) {
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        two.freeze()
    } else {
        one
    }
}

fn encode_seed<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Bytes {
    let header = RequestHeader {
        api_key: api as i16,
        api_version: version,
        correlation_id: 12345,
        client_id: Some("fuzz-client".into()),
    };
    encode_request(&header, body)
        .unwrap_or_else(|e| panic!("seed for {api:?} v{version} does not encode: {e}"))
}

/// A valid request frame (size prefix included) for `api` at `version`.
fn seed_frame(api: ApiKey, v: i16, rng: &mut StdRng) -> Bytes {
    let uuid = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    match api {
        ApiKey::ApiVersions => {
            let mut r = ApiVersionsRequest::default();
            if v >= 3 {
                r = r
                    .with_client_software_name(StrBytes::from_static_str("librdkafka"))
                    .with_client_software_version(StrBytes::from_static_str("2.16.0"));
            }
            encode_seed(api, v, &r)
        }
        ApiKey::Metadata => {
            let topic = |n: &str| {
                let t = metadata_request::MetadataRequestTopic::default().with_name(Some(name(n)));
                if v >= 10 {
                    t.with_topic_id(uuid)
                } else {
                    t
                }
            };
            let mut r =
                MetadataRequest::default().with_topics(Some(vec![topic("orders"), topic("t")]));
            if v >= 4 {
                r = r.with_allow_auto_topic_creation(rng.gen());
            }
            if v >= 8 {
                r = r.with_include_topic_authorized_operations(true);
            }
            encode_seed(api, v, &r)
        }
        ApiKey::Produce => {
            let r = ProduceRequest::default()
                .with_transactional_id(None)
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(name("orders"))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(sample_records(rng))),
                        produce_request::PartitionProduceData::default()
                            .with_index(1)
                            .with_records(Some(sample_records(rng))),
                    ])]);
            encode_seed(api, v, &r)
        }
        ApiKey::Fetch => {
            let partition = |p: i32| {
                let mut fp = fetch_request::FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(42)
                    .with_partition_max_bytes(1 << 20);
                if v >= 9 {
                    fp = fp.with_current_leader_epoch(3);
                }
                if v >= 12 {
                    fp = fp.with_last_fetched_epoch(2);
                }
                if v >= 5 {
                    fp = fp.with_log_start_offset(0);
                }
                fp
            };
            let mut topic = fetch_request::FetchTopic::default()
                .with_partitions(vec![partition(0), partition(1)]);
            if v <= 12 {
                topic = topic.with_topic(name("orders"));
            } else {
                topic = topic.with_topic_id(uuid);
            }
            let mut r = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(50 << 20)
                .with_isolation_level(1)
                .with_topics(vec![topic]);
            if v < 15 {
                r = r.with_replica_id(BrokerId(-1));
            }
            if v >= 7 {
                r = r.with_session_id(0).with_session_epoch(-1);
                let mut forgotten =
                    fetch_request::ForgottenTopic::default().with_partitions(vec![7]);
                if v <= 12 {
                    forgotten = forgotten.with_topic(name("old"));
                } else {
                    forgotten = forgotten.with_topic_id(uuid);
                }
                r = r.with_forgotten_topics_data(vec![forgotten]);
            }
            if v >= 11 {
                r = r.with_rack_id(StrBytes::from_static_str("rack-a"));
            }
            if v >= 12 {
                r = r.with_cluster_id(Some(StrBytes::from_static_str("cluster")));
            }
            encode_seed(api, v, &r)
        }
        ApiKey::ListOffsets => {
            let mut part = list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1);
            if v >= 4 {
                part = part.with_current_leader_epoch(5);
            }
            let mut r = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name("orders"))
                    .with_partitions(vec![part.clone(), part.with_partition_index(1)])]);
            if v >= 2 {
                r = r.with_isolation_level(1);
            }
            encode_seed(api, v, &r)
        }
        ApiKey::CreateTopics => {
            let r = CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_validate_only(rng.gen())
                .with_topics(vec![
                    create_topics_request::CreatableTopic::default()
                        .with_name(name("new-topic"))
                        .with_num_partitions(3)
                        .with_replication_factor(1)
                        .with_configs(vec![
                            create_topics_request::CreatableTopicConfig::default()
                                .with_name(StrBytes::from_static_str("retention.ms"))
                                .with_value(Some(StrBytes::from_static_str("1000"))),
                            create_topics_request::CreatableTopicConfig::default()
                                .with_name(StrBytes::from_static_str("cleanup.policy"))
                                .with_value(None),
                        ]),
                    create_topics_request::CreatableTopic::default()
                        .with_name(name("assigned"))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(vec![
                            create_topics_request::CreatableReplicaAssignment::default()
                                .with_partition_index(0)
                                .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                        ]),
                ]);
            encode_seed(api, v, &r)
        }
        ApiKey::DeleteTopics => {
            let mut r = DeleteTopicsRequest::default().with_timeout_ms(5000);
            if v <= 5 {
                r = r.with_topic_names(vec![name("a"), name("bb")]);
            } else {
                r = r.with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name("a")))
                    .with_topic_id(uuid)]);
            }
            encode_seed(api, v, &r)
        }
        ApiKey::CreatePartitions => {
            let r = CreatePartitionsRequest::default()
                .with_timeout_ms(5000)
                .with_validate_only(false)
                .with_topics(vec![
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name("orders"))
                        .with_count(6)
                        .with_assignments(Some(vec![
                            create_partitions_request::CreatePartitionsAssignment::default()
                                .with_broker_ids(vec![BrokerId(1)]),
                        ])),
                    create_partitions_request::CreatePartitionsTopic::default()
                        .with_name(name("t"))
                        .with_count(2)
                        .with_assignments(None),
                ]);
            encode_seed(api, v, &r)
        }
        ApiKey::DescribeConfigs => {
            let mut r = DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("orders"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str("retention.ms")])),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("1"))
                    .with_configuration_keys(None),
            ]);
            if v >= 1 {
                r = r.with_include_synonyms(true);
            }
            if v >= 3 {
                r = r.with_include_documentation(true);
            }
            encode_seed(api, v, &r)
        }
        ApiKey::DescribeCluster => {
            let mut r =
                DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
            if v >= 1 {
                r = r.with_endpoint_type(1);
            }
            encode_seed(api, v, &r)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let mut r = OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("orders"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(4)
                            .with_leader_epoch(3),
                    ]),
            ]);
            if v >= 3 {
                r = r.with_replica_id(BrokerId(-1));
            }
            encode_seed(api, v, &r)
        }
        // The group APIs: random valid messages (strings, ids and byte blobs of every
        // shape), which is what their decoders' lengths and counts see from a client.
        ApiKey::FindCoordinator => encode_seed(
            api,
            v,
            &random_message::<FindCoordinatorRequest>(rng.gen(), v),
        ),
        ApiKey::JoinGroup => encode_seed(api, v, &random_message::<JoinGroupRequest>(rng.gen(), v)),
        ApiKey::SyncGroup => encode_seed(api, v, &random_message::<SyncGroupRequest>(rng.gen(), v)),
        ApiKey::Heartbeat => encode_seed(api, v, &random_message::<HeartbeatRequest>(rng.gen(), v)),
        ApiKey::LeaveGroup => {
            encode_seed(api, v, &random_message::<LeaveGroupRequest>(rng.gen(), v))
        }
        ApiKey::OffsetCommit => {
            encode_seed(api, v, &random_message::<OffsetCommitRequest>(rng.gen(), v))
        }
        ApiKey::OffsetFetch => {
            encode_seed(api, v, &random_message::<OffsetFetchRequest>(rng.gen(), v))
        }
        ApiKey::ListGroups => {
            encode_seed(api, v, &random_message::<ListGroupsRequest>(rng.gen(), v))
        }
        ApiKey::DeleteGroups => {
            encode_seed(api, v, &random_message::<DeleteGroupsRequest>(rng.gen(), v))
        }
        ApiKey::DescribeGroups => encode_seed(
            api,
            v,
            &random_message::<DescribeGroupsRequest>(rng.gen(), v),
        ),
        ApiKey::OffsetDelete => {
            encode_seed(api, v, &random_message::<OffsetDeleteRequest>(rng.gen(), v))
        }
        ApiKey::AlterConfigs => {
            encode_seed(api, v, &random_message::<AlterConfigsRequest>(rng.gen(), v))
        }
        ApiKey::IncrementalAlterConfigs => encode_seed(
            api,
            v,
            &random_message::<IncrementalAlterConfigsRequest>(rng.gen(), v),
        ),
        ApiKey::DeleteRecords => encode_seed(
            api,
            v,
            &random_message::<DeleteRecordsRequest>(rng.gen(), v),
        ),
        ApiKey::InitProducerId => encode_seed(
            api,
            v,
            &random_message::<InitProducerIdRequest>(rng.gen(), v),
        ),
        other => panic!("no seed builder for served api {other:?}: add one"),
    }
}

fn all_seeds(rng: &mut StdRng) -> Vec<(ApiKey, i16, Bytes)> {
    let mut seeds = Vec::new();
    for range in SUPPORTED {
        let api = ApiKey::try_from(range.api_key).expect("served keys are known");
        for v in range.min..=range.max {
            seeds.push((api, v, seed_frame(api, v, rng)));
        }
    }
    seeds
}

// ---------------------------------------------------------------------------------------------
// The code under test: what the broker does with bytes from a socket

/// Outcome counters, to show the fuzzer reaches every stage.
#[derive(Default, Debug)]
struct Reached {
    frames: u64,
    headers: u64,
    bodies: u64,
    batches: u64,
    records: u64,
}

/// Stage 1: bytes from the socket to frames. Returns the complete frames in `input`.
fn frames_of(input: &[u8], reached: &mut Reached) -> Vec<Bytes> {
    let mut codec = FrameCodec::new(FRAME_BYTES_MAX);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        reached.frames += 1;
        frames.push(frame.freeze());
    }
    frames
}

/// Stage 2: one frame's header and body, as the broker decodes them.
fn decode_frame(frame: Bytes, reached: &mut Reached) {
    let mut body = frame;
    let Ok(header) = parse_request_header(&mut body) else {
        return;
    };
    reached.headers += 1;
    if !versions::is_supported(header.api_key, header.api_version) {
        return;
    }
    let Ok(request) = decode_request_kind(&header, body) else {
        return;
    };
    reached.bodies += 1;
    // Produce: what the broker checks before appending (header, CRC), plus a full record
    // walk as the client and tools do.
    if let RequestKind::Produce(produce) = request {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                let Some(records) = &partition.records else {
                    continue;
                };
                for view in batch::batches(records) {
                    let Ok(view) = view else { break };
                    reached.batches += 1;
                    let _ = view.verify_crc();
                    let _ = batch::validate_client_batch(&view, ClientBatchRules::default());
                    if let Ok(iter) = view.records() {
                        reached.records += iter.take_while(Result::is_ok).count() as u64;
                    }
                }
            }
        }
    }
}

/// Both stages, unmeasured (for the seed check).
fn broker_decode_path(input: &[u8], reached: &mut Reached) {
    for frame in frames_of(input, reached) {
        decode_frame(frame, reached);
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

fn fix_prefix(frame: &mut [u8]) {
    if frame.len() >= 4 {
        let len = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Values that break length and count fields.
const NASTY_I32: [i32; 9] = [
    i32::MAX,
    i32::MIN,
    -1,
    -2,
    0,
    0x7fff,
    0x0100_0000,
    0x4000_0000,
    1_000_000,
];
const NASTY_VARINTS: [&[u8]; 6] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],       // u32::MAX
    &[0xfe, 0xff, 0xff, 0xff, 0x0f],       // varint i32::MAX (zigzag)
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // overlong
    &[0x80, 0x80, 0x80, 0x80, 0x08],       // 2^31
    &[0x01],                               // -1 zigzag / 0 compact null
    &[0x80, 0x80, 0x80, 0x01],             // 2^21
];

fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut f = seed.to_vec();
    // Mostly one mutation, so that most inputs stay close enough to valid to reach the body
    // decoders; sometimes a few.
    let rounds = if rng.gen_bool(0.7) {
        1
    } else {
        rng.gen_range(2..=4)
    };
    for _ in 0..rounds {
        if f.len() <= 4 {
            f.extend((0..rng.gen_range(1..32)).map(|_| rng.gen::<u8>()));
        }
        // Positions past the request header (~25 bytes) most of the time: the header parser is
        // small and gets its share; the generated body decoders are the larger surface.
        let body = if f.len() > 32 && rng.gen_bool(0.8) {
            25..f.len()
        } else {
            4..f.len()
        };
        match rng.gen_range(0..10) {
            // flip bits
            0 => {
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(body.clone());
                    f[at] ^= 1 << rng.gen_range(0..8);
                }
            }
            // overwrite random bytes
            1 => {
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(body.clone());
                    f[at] = rng.gen();
                }
            }
            // a huge or negative i32 count/length anywhere
            2 | 3 => {
                let at = rng.gen_range(body.start..f.len().saturating_sub(3).max(body.start + 1));
                let v = NASTY_I32[rng.gen_range(0..NASTY_I32.len())];
                for (i, b) in v.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = f.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            // a huge i16 (string lengths, error codes)
            4 => {
                let at = rng.gen_range(body.clone());
                let v: i16 = [i16::MAX, -1, -2, i16::MIN, 0][rng.gen_range(0..5)];
                for (i, b) in v.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = f.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            // a nasty varint inserted or overwritten (compact lengths, record fields)
            5 => {
                let at = rng.gen_range(body.clone());
                let v = NASTY_VARINTS[rng.gen_range(0..NASTY_VARINTS.len())];
                if rng.gen_bool(0.5) {
                    f.splice(at..at, v.iter().copied());
                } else {
                    for (i, b) in v.iter().enumerate() {
                        if let Some(slot) = f.get_mut(at + i) {
                            *slot = *b;
                        }
                    }
                }
            }
            // truncate
            6 => {
                let at = rng.gen_range(4..=f.len());
                f.truncate(at);
            }
            // delete or duplicate a range
            7 => {
                let a = rng.gen_range(body.clone());
                let b = rng.gen_range(a..=f.len().min(a + 64));
                if rng.gen_bool(0.5) {
                    f.drain(a..b);
                } else {
                    let dup: Vec<u8> = f[a..b].to_vec();
                    f.splice(b..b, dup);
                }
            }
            // insert random bytes
            8 => {
                let at = rng.gen_range(4..=f.len());
                let n = rng.gen_range(1..16);
                f.splice(at..at, (0..n).map(|_| rng.gen::<u8>()));
            }
            // swap api version (decode the body with another version's layout)
            _ => {
                if f.len() >= 8 {
                    let key = i16::from_be_bytes([f[4], f[5]]);
                    let v = match versions::supported_range(key) {
                        Some(r) if rng.gen_bool(0.8) => rng.gen_range(r.min..=r.max),
                        _ => rng.gen_range(-1..20),
                    };
                    f[6..8].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    // Usually keep the size prefix consistent so the body reaches the decoders; sometimes not,
    // to exercise partial and refused frames.
    match rng.gen_range(0..20) {
        0 => {
            if f.len() >= 4 {
                f[..4].copy_from_slice(&rng.gen::<i32>().to_be_bytes());
            }
        }
        1 => {}
        _ => fix_prefix(&mut f),
    }
    f
}

/// A frame of random bytes, sometimes behind a valid header of a served api/version.
fn random_frame(rng: &mut StdRng) -> Vec<u8> {
    let len = rng.gen_range(0..256);
    let mut f = vec![0u8; 4];
    if rng.gen_bool(0.7) {
        let range = SUPPORTED[rng.gen_range(0..SUPPORTED.len())];
        f.extend_from_slice(&range.api_key.to_be_bytes());
        f.extend_from_slice(&rng.gen_range(range.min..=range.max).to_be_bytes());
        f.extend_from_slice(&rng.gen::<i32>().to_be_bytes());
        if rng.gen_bool(0.5) {
            f.extend_from_slice(&(-1i16).to_be_bytes());
            f.push(0);
        }
    }
    f.extend((0..len).map(|_| rng.gen::<u8>()));
    fix_prefix(&mut f);
    f
}

thread_local! {
    /// Set while this thread runs decoders under `catch_unwind`: their panics are reported
    /// with the offending input instead of by the default hook.
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` under `catch_unwind` without the default hook printing a caught panic. The hook
/// is installed once for the whole binary and stays silent only on threads inside this
/// function, so tests running in parallel keep their normal panic output.
fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(Cell::get) {
                default_hook(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The client's side: Fetch responses from a (possibly hostile) broker

/// Decompression cap the client-side fuzz uses (a consumer's own configuration).
const CLIENT_DECOMPRESSED_BYTES_MAX: usize = 256 * 1024;
/// zstd may allocate the window its frame header declares, up to the 8 MiB floor that
/// `decompress_records_bounded` allows, plus its block buffers.
const ZSTD_WINDOW_BYTES_MAX: usize = 9 * 1024 * 1024;

/// Largest single allocation allowed while a client decodes a Fetch response frame: the
/// decoder bound, or what the client's decompression cap allows.
fn client_alloc_bound(frame_bytes: usize) -> usize {
    single_alloc_bound(frame_bytes) + 2 * CLIENT_DECOMPRESSED_BYTES_MAX + ZSTD_WINDOW_BYTES_MAX
}

fn codecs() -> Vec<Compression> {
    if cfg!(feature = "compression") {
        vec![
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
    } else {
        vec![Compression::None]
    }
}

/// A Fetch response frame for every served Fetch version, with batches in each codec.
fn fetch_response_seeds(rng: &mut StdRng) -> Vec<(i16, Bytes)> {
    let range = versions::supported_range(ApiKey::Fetch as i16).expect("Fetch is served");
    let mut seeds = Vec::new();
    for version in range.min..=range.max {
        for codec in codecs() {
            let mut b = BatchBuilder::new(codec).with_producer(7, 0, 0);
            for i in 0..rng.gen_range(1..5) {
                let value = format!("value-{i}-{}", "abc".repeat(rng.gen_range(0..20)));
                b.push(i, Some(b"k"), Some(value.as_bytes()), &[("h", None)])
                    .expect("seed batch");
            }
            let batch = b.build().expect("seed batch");
            let parts = FetchResponseParts {
                session_id: if version >= 7 { 1 } else { 0 },
                topics: vec![FetchTopicPart {
                    name: StrBytes::from_static_str("orders"),
                    topic_id: uuid::Uuid::from_u128(42),
                    partitions: vec![FetchPartitionPart {
                        partition_index: 0,
                        high_watermark: 100,
                        records: vec![batch.clone(), sample_records(rng)],
                        ..Default::default()
                    }],
                }],
                ..Default::default()
            };
            let frame = encode_fetch_response(1, version, &parts)
                .expect("seed response")
                .to_contiguous();
            seeds.push((version, frame));
        }
    }
    seeds
}

/// What a consumer does with a Fetch response frame (payload after the size prefix).
fn client_decode_fetch(frame: Bytes, version: i16, reached: &mut Reached) {
    let Ok((_, response)) = decode_response::<FetchResponse>(frame, ApiKey::Fetch as i16, version)
    else {
        return;
    };
    reached.bodies += 1;
    for topic in &response.responses {
        for partition in &topic.partitions {
            let Some(records) = &partition.records else {
                continue;
            };
            for view in batch::batches(records) {
                let Ok(view) = view else { break };
                reached.batches += 1;
                if view.compression_id() == 0 {
                    if let Ok(iter) = view.records() {
                        reached.records += iter.take_while(Result::is_ok).count() as u64;
                    }
                } else if let Ok(plain) =
                    view.decompress_records_bounded(CLIENT_DECOMPRESSED_BYTES_MAX)
                {
                    let iter = batch::Records::new(&plain, &view);
                    reached.records += iter.take_while(Result::is_ok).count() as u64;
                }
            }
        }
    }
}

#[test]
fn fetch_response_seeds_decode_on_the_client() {
    let mut rng = StdRng::seed_from_u64(2);
    for (version, frame) in fetch_response_seeds(&mut rng) {
        let mut reached = Reached::default();
        for payload in frames_of(&frame, &mut reached) {
            client_decode_fetch(payload, version, &mut reached);
        }
        assert_eq!(reached.bodies, 1, "Fetch v{version}");
        assert!(
            reached.batches >= 2 && reached.records >= 2,
            "Fetch v{version}: {reached:?}"
        );
    }
}

#[test]
fn mutated_fetch_responses_never_panic_nor_over_allocate_on_the_client() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or_else(rand::random);
    let frames = frames_to_run() / 4;
    println!("client fetch fuzz: SEED={seed} frames={frames}");
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = fetch_response_seeds(&mut rng);

    let mut reached = Reached::default();
    let mut largest_seen = 0usize;
    let started = Instant::now();
    for i in 0..frames {
        let (version, seed_frame) = &seeds[rng.gen_range(0..seeds.len())];
        let input = mutate(seed_frame, &mut rng);
        let mut failure = None;
        for frame in frames_of(&input, &mut reached) {
            let len = frame.len();
            let (outcome, largest, _) =
                measure(|| catch_quietly(|| client_decode_fetch(frame, *version, &mut reached)));
            largest_seen = largest_seen.max(largest);
            if let Err(payload) = outcome {
                failure = Some(format!(
                    "panic decoding Fetch v{version} response #{i}: {}",
                    panic_message(&*payload)
                ));
            } else if largest > client_alloc_bound(len) {
                failure = Some(format!(
                    "Fetch v{version} response #{i} of {len} bytes made a single allocation of {largest} bytes (bound {})",
                    client_alloc_bound(len)
                ));
            }
        }
        if let Some(what) = failure {
            panic!("{what}; replay with SEED={seed}; input: {}", hex(&input));
        }
    }
    let elapsed = started.elapsed();
    println!(
        "client fetch fuzz: {frames} frames in {:.1} s ({:.0} frames/s); reached {reached:?}; \
         largest single allocation {largest_seen} bytes",
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64(),
    );
    assert!(reached.bodies > frames / 10, "{reached:?}");
    assert!(reached.records > frames / 10, "{reached:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests

fn frames_to_run() -> u64 {
    if let Ok(n) = std::env::var("RILL_FUZZ_FRAMES") {
        return n.parse().expect("RILL_FUZZ_FRAMES is a number");
    }
    if std::env::var("RILL_FUZZ_LONG").is_ok_and(|v| v == "1") {
        1_000_000
    } else {
        100_000
    }
}

#[test]
fn every_seed_is_a_valid_request_that_decodes() {
    let mut rng = StdRng::seed_from_u64(1);
    let seeds = all_seeds(&mut rng);
    let served: usize = SUPPORTED.iter().map(|r| (r.max - r.min + 1) as usize).sum();
    assert_eq!(seeds.len(), served);
    for (api, v, frame) in seeds {
        let mut reached = Reached::default();
        broker_decode_path(&frame, &mut reached);
        assert_eq!(
            (reached.frames, reached.headers, reached.bodies),
            (1, 1, 1),
            "{api:?} v{v}"
        );
        if api == ApiKey::Produce {
            assert!(reached.batches >= 2 && reached.records >= 2, "{reached:?}");
        }
    }
}

#[test]
fn allocator_harness_notices_a_large_allocation() {
    // The bound is only worth something if the counter sees allocations.
    let (_, largest, _) = measure(|| std::hint::black_box(vec![0u8; 1 << 20]));
    assert!(largest >= 1 << 20);
    assert!(largest > single_alloc_bound(100));
}

#[test]
fn random_and_mutated_frames_never_panic_nor_over_allocate() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or_else(rand::random);
    let frames = frames_to_run();
    println!("decoder fuzz: SEED={seed} frames={frames}");
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = all_seeds(&mut rng);

    let mut reached = Reached::default();
    let mut worst_single_ratio = 0.0f64;
    let mut worst_peak_ratio = 0.0f64;
    let mut largest_seen = 0usize;
    let mut failure: Option<String> = None;
    let started = Instant::now();
    for i in 0..frames {
        let input = if i % 10 == 0 {
            random_frame(&mut rng)
        } else {
            let (_, _, seed_frame) = &seeds[rng.gen_range(0..seeds.len())];
            mutate(seed_frame, &mut rng)
        };
        let ((frames_found, framing_panicked), framing_largest, _) =
            measure(|| match catch_quietly(|| frames_of(&input, &mut reached)) {
                Ok(frames) => (frames, None),
                Err(payload) => (Vec::new(), Some(panic_message(&*payload))),
            });
        if let Some(message) = framing_panicked {
            failure = Some(format!("panic while framing input #{i}: {message}"));
        } else if framing_largest > framing_alloc_bound(input.len()) {
            failure = Some(format!(
                "framing input #{i} of {} bytes made a single allocation of {framing_largest} bytes (bound {})",
                input.len(),
                framing_alloc_bound(input.len())
            ));
        }
        for frame in frames_found {
            if failure.is_some() {
                break;
            }
            let len = frame.len();
            let (outcome, largest, peak) =
                measure(|| catch_quietly(|| decode_frame(frame, &mut reached)));
            if let Err(payload) = outcome {
                failure = Some(format!(
                    "panic decoding a frame of input #{i}: {}",
                    panic_message(&*payload)
                ));
            } else if largest > single_alloc_bound(len) {
                failure = Some(format!(
                    "a frame of {len} bytes (input #{i}) made a single allocation of {largest} bytes (bound {})",
                    single_alloc_bound(len)
                ));
            } else if peak > peak_live_bound(len) {
                failure = Some(format!(
                    "a frame of {len} bytes (input #{i}) held {peak} bytes at once (bound {})",
                    peak_live_bound(len)
                ));
            }
            largest_seen = largest_seen.max(largest);
            if len >= 64 {
                worst_single_ratio = worst_single_ratio.max(largest as f64 / len as f64);
                worst_peak_ratio = worst_peak_ratio.max(peak as f64 / len as f64);
            }
        }
        if let Some(what) = failure.take() {
            panic!("{what}; replay with SEED={seed}; input: {}", hex(&input));
        }
    }
    let elapsed = started.elapsed();
    println!(
        "decoder fuzz: {frames} frames in {:.1} s ({:.0} frames/s); reached {reached:?}; \
         largest single allocation {largest_seen} bytes; for frames of 64+ bytes the worst \
         largest-allocation/frame ratio was {worst_single_ratio:.1} and peak-live/frame \
         {worst_peak_ratio:.1} (bounds {SINGLE_ALLOC_FACTOR}x and {PEAK_LIVE_FACTOR}x plus slack)",
        elapsed.as_secs_f64(),
        frames as f64 / elapsed.as_secs_f64(),
    );
    // The fuzzer must get past the framing and header stages for most inputs, or it tests
    // nothing: insist that a good share of frames reached the body decoders and Produce batches.
    assert!(reached.bodies > frames / 10, "{reached:?}");
    assert!(reached.batches > frames / 100, "{reached:?}");
}

// ---------------------------------------------------------------------------------------------
// Every length and count prefix at its maximum (issue 8, acceptance 2 and 4)

/// How a length or count prefix is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    /// INT16 (non-compact STRING lengths).
    I16,
    /// INT32 (non-compact BYTES, RECORDS and ARRAY lengths).
    I32,
    /// An unsigned varint of this many bytes (compact lengths, tagged-field counts and sizes).
    Varint(usize),
}

/// Which read a prefix belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PrefixKind {
    String,
    NullableString,
    Bytes,
    NullableBytes,
    Array,
    NullableArray,
    TaggedFieldCount,
    TaggedFieldSize,
}

/// One length or count prefix of a message body: where it starts and how it is written.
#[derive(Clone, Copy, Debug)]
struct Prefix {
    at: usize,
    width: Width,
    kind: PrefixKind,
}

/// Bytes of the unsigned varint at the start of `bytes`.
fn varint_len_at(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(5)
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len().min(5), |i| i + 1)
}

/// Bytes of `value` written as an unsigned varint.
fn varint_len(value: u32) -> usize {
    (32 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A [`Source`] that reads through a [`WireReader`] and records, before each length or count
/// read, where its prefix starts (offset from the start of the body) and how it is written.
/// Tagged fields are decoded from sub-readers sliced out of the same frame, so their offsets
/// come from the same base address.
struct Probe {
    inner: WireReader,
    base: usize,
    found: Rc<RefCell<Vec<Prefix>>>,
}

impl Probe {
    fn new(body: Bytes) -> Probe {
        Probe {
            base: body.as_ptr() as usize,
            inner: WireReader::new(body),
            found: Rc::default(),
        }
    }

    fn note(&self, flexible: bool, wide: bool, kind: PrefixKind) {
        let rest = self.inner.remaining_bytes();
        let width = match (flexible, wide) {
            (true, _) => Width::Varint(varint_len_at(rest)),
            (false, false) => Width::I16,
            (false, true) => Width::I32,
        };
        self.found.borrow_mut().push(Prefix {
            at: rest.as_ptr() as usize - self.base,
            width,
            kind,
        });
    }
}

impl Source for Probe {
    fn int8(&mut self) -> Result<i8, DecodeError> {
        self.inner.int8()
    }
    fn int16(&mut self) -> Result<i16, DecodeError> {
        self.inner.int16()
    }
    fn int32(&mut self) -> Result<i32, DecodeError> {
        self.inner.int32()
    }
    fn int64(&mut self) -> Result<i64, DecodeError> {
        self.inner.int64()
    }
    fn uint16(&mut self) -> Result<u16, DecodeError> {
        self.inner.uint16()
    }
    fn float64(&mut self) -> Result<f64, DecodeError> {
        self.inner.float64()
    }
    fn boolean(&mut self) -> Result<bool, DecodeError> {
        self.inner.boolean()
    }
    fn uuid(&mut self) -> Result<uuid::Uuid, DecodeError> {
        self.inner.uuid()
    }
    fn string(&mut self, flexible: bool) -> Result<StrBytes, DecodeError> {
        self.note(flexible, false, PrefixKind::String);
        self.inner.string(flexible)
    }
    fn nullable_string(&mut self, flexible: bool) -> Result<Option<StrBytes>, DecodeError> {
        self.note(flexible, false, PrefixKind::NullableString);
        self.inner.nullable_string(flexible)
    }
    fn bytes(&mut self, flexible: bool) -> Result<Bytes, DecodeError> {
        self.note(flexible, true, PrefixKind::Bytes);
        self.inner.bytes(flexible)
    }
    fn nullable_bytes(&mut self, flexible: bool) -> Result<Option<Bytes>, DecodeError> {
        self.note(flexible, true, PrefixKind::NullableBytes);
        self.inner.nullable_bytes(flexible)
    }
    fn array_len(
        &mut self,
        flexible: bool,
        element_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        self.note(flexible, true, PrefixKind::Array);
        self.inner.array_len(flexible, element_bytes_min)
    }
    fn nullable_array_len(
        &mut self,
        flexible: bool,
        element_bytes_min: usize,
    ) -> Result<Option<usize>, DecodeError> {
        self.note(flexible, true, PrefixKind::NullableArray);
        self.inner.nullable_array_len(flexible, element_bytes_min)
    }
    fn tagged_fields(
        &mut self,
        unknown: &mut BTreeMap<i32, Bytes>,
        mut known: impl FnMut(&mut Self, i32) -> Result<bool, DecodeError>,
    ) -> Result<(), DecodeError> {
        self.note(true, true, PrefixKind::TaggedFieldCount);
        let (base, found) = (self.base, Rc::clone(&self.found));
        self.inner.tagged_fields(unknown, |field, tag| {
            // The field's size varint sits right before its value.
            let value = field.remaining_bytes();
            let size_len = varint_len(field.remaining() as u32);
            found.borrow_mut().push(Prefix {
                at: value.as_ptr() as usize - base - size_len,
                width: Width::Varint(size_len),
                kind: PrefixKind::TaggedFieldSize,
            });
            let mut probe = Probe {
                inner: field.clone(),
                base,
                found: Rc::clone(&found),
            };
            let is_known = known(&mut probe, tag)?;
            *field = probe.inner;
            Ok(is_known)
        })
    }
}

/// Every length and count prefix of `body`, a valid `T` at `version`, in read order.
fn prefixes_of<T: Decode>(body: &Bytes, version: i16) -> Vec<Prefix> {
    let mut probe = Probe::new(body.clone());
    T::decode(&mut probe, version).expect("a valid message decodes through the probe");
    assert_eq!(probe.inner.remaining(), 0, "the probe read the whole body");
    let found = probe.found.borrow().clone();
    for p in &found {
        let rest = &body[p.at..];
        match p.width {
            Width::Varint(n) => assert_eq!(varint_len_at(rest), n, "{p:?}"),
            Width::I16 => assert!(rest.len() >= 2, "{p:?}"),
            Width::I32 => assert!(rest.len() >= 4, "{p:?}"),
        }
    }
    found
}

/// `body` with the prefix `p` set to its largest value: INT16 0x7fff, INT32 0x7fffffff, a
/// varint replaced by the largest 32-bit one (ff ff ff ff 0f).
fn with_prefix_at_max(body: &[u8], p: &Prefix) -> Vec<u8> {
    let mut b = body.to_vec();
    match p.width {
        Width::I16 => b[p.at..p.at + 2].copy_from_slice(&i16::MAX.to_be_bytes()),
        Width::I32 => b[p.at..p.at + 4].copy_from_slice(&i32::MAX.to_be_bytes()),
        Width::Varint(n) => {
            b.splice(p.at..p.at + n, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
    }
    b
}

/// Calls `$f::<Request, Response>($args)` (`both:`) or `$f::<Response>($args)`
/// (`response:`) with the message types of the api key `$api`: one line per served API.
macro_rules! with_message_types {
    ($api:expr, $which:ident: $f:ident($($arg:expr),* $(,)?)) => {
        match $api {
            ApiKey::Produce => call_with!($which, $f, ProduceRequest, ProduceResponse, $($arg),*),
            ApiKey::Fetch => call_with!($which, $f, FetchRequest, FetchResponse, $($arg),*),
            ApiKey::ListOffsets => {
                call_with!($which, $f, ListOffsetsRequest, ListOffsetsResponse, $($arg),*)
            }
            ApiKey::Metadata => {
                call_with!($which, $f, MetadataRequest, MetadataResponse, $($arg),*)
            }
            ApiKey::ApiVersions => {
                call_with!($which, $f, ApiVersionsRequest, ApiVersionsResponse, $($arg),*)
            }
            ApiKey::CreateTopics => {
                call_with!($which, $f, CreateTopicsRequest, CreateTopicsResponse, $($arg),*)
            }
            ApiKey::DeleteTopics => {
                call_with!($which, $f, DeleteTopicsRequest, DeleteTopicsResponse, $($arg),*)
            }
            ApiKey::OffsetForLeaderEpoch => call_with!(
                $which, $f, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, $($arg),*
            ),
            ApiKey::DescribeConfigs => call_with!(
                $which, $f, DescribeConfigsRequest, DescribeConfigsResponse, $($arg),*
            ),
            ApiKey::CreatePartitions => call_with!(
                $which, $f, CreatePartitionsRequest, CreatePartitionsResponse, $($arg),*
            ),
            ApiKey::DescribeCluster => call_with!(
                $which, $f, DescribeClusterRequest, DescribeClusterResponse, $($arg),*
            ),
            ApiKey::FindCoordinator => call_with!(
                $which, $f, FindCoordinatorRequest, FindCoordinatorResponse, $($arg),*
            ),
            ApiKey::JoinGroup => {
                call_with!($which, $f, JoinGroupRequest, JoinGroupResponse, $($arg),*)
            }
            ApiKey::SyncGroup => {
                call_with!($which, $f, SyncGroupRequest, SyncGroupResponse, $($arg),*)
            }
            ApiKey::Heartbeat => {
                call_with!($which, $f, HeartbeatRequest, HeartbeatResponse, $($arg),*)
            }
            ApiKey::LeaveGroup => {
                call_with!($which, $f, LeaveGroupRequest, LeaveGroupResponse, $($arg),*)
            }
            ApiKey::OffsetCommit => {
                call_with!($which, $f, OffsetCommitRequest, OffsetCommitResponse, $($arg),*)
            }
            ApiKey::OffsetFetch => {
                call_with!($which, $f, OffsetFetchRequest, OffsetFetchResponse, $($arg),*)
            }
            ApiKey::ListGroups => {
                call_with!($which, $f, ListGroupsRequest, ListGroupsResponse, $($arg),*)
            }
            ApiKey::DeleteGroups => call_with!(
                $which, $f, DeleteGroupsRequest, DeleteGroupsResponse, $($arg),*
            ),
            ApiKey::DescribeGroups => call_with!(
                $which, $f, DescribeGroupsRequest, DescribeGroupsResponse, $($arg),*
            ),
            ApiKey::OffsetDelete => call_with!(
                $which, $f, OffsetDeleteRequest, OffsetDeleteResponse, $($arg),*
            ),
            ApiKey::AlterConfigs => call_with!(
                $which, $f, AlterConfigsRequest, AlterConfigsResponse, $($arg),*
            ),
            ApiKey::IncrementalAlterConfigs => call_with!(
                $which, $f, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
                $($arg),*
            ),
            ApiKey::DeleteRecords => call_with!(
                $which, $f, DeleteRecordsRequest, DeleteRecordsResponse, $($arg),*
            ),
            ApiKey::InitProducerId => call_with!(
                $which, $f, InitProducerIdRequest, InitProducerIdResponse, $($arg),*
            ),
            other => panic!("served api {other:?} has no line in with_message_types!: add one"),
        }
    };
}

/// One arm of [`with_message_types!`].
macro_rules! call_with {
    (both, $f:ident, $request:ty, $response:ty, $($arg:expr),*) => {
        $f::<$request, $response>($($arg),*)
    };
    (response, $f:ident, $request:ty, $response:ty, $($arg:expr),*) => {
        $f::<$response>($($arg),*)
    };
}

/// A random valid `T` at `version`.
fn random_message<T: Decode>(seed: u64, version: i16) -> T {
    T::decode(&mut RandomSource::new(seed), version)
        .unwrap_or_else(|e| panic!("random fill at v{version}, seed {seed}: {e}"))
}

/// A response frame payload (no size prefix) carrying `body`, and the body's offset in it.
fn response_payload<T: Encodable>(api: ApiKey, version: i16, body: &T) -> (Bytes, usize) {
    let frame = encode_response(7, api as i16, version, body)
        .unwrap_or_else(|e| panic!("{api:?} v{version} response does not encode: {e}"));
    let payload = frame.slice(4..);
    let body_len = body.compute_size(version).expect("encodes");
    let header_len = payload.len() - body_len;
    (payload, header_len)
}

/// What the maximum-prefix check found for one API.
#[derive(Default, Debug)]
struct MaxPrefixTally {
    request_positions: usize,
    response_positions: usize,
    largest_alloc_bytes: usize,
    /// Decode errors by variant.
    kinds: BTreeMap<String, usize>,
    prefix_kinds: BTreeMap<PrefixKind, usize>,
}

/// Outcome of decoding one frame with a prefix at its maximum.
fn check_max_prefix(
    what: &str,
    frame_len: usize,
    p: &Prefix,
    decode: impl FnOnce() -> Result<(), ProtocolError>,
    tally: &mut MaxPrefixTally,
) {
    let (outcome, largest, _) = measure(|| catch_quietly(decode));
    *tally.prefix_kinds.entry(p.kind).or_default() += 1;
    tally.largest_alloc_bytes = tally.largest_alloc_bytes.max(largest);
    match outcome {
        Err(payload) => panic!("{what}, {p:?} at max: panic: {}", panic_message(&*payload)),
        Ok(Ok(())) => panic!("{what}, {p:?} at max: decoded without an error"),
        Ok(Err(ProtocolError::MalformedBody { error, .. })) => {
            let kind = format!("{error:?}");
            let kind = kind
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_owned();
            *tally.kinds.entry(kind).or_default() += 1;
        }
        Ok(Err(other)) => panic!("{what}, {p:?} at max: not MalformedBody but {other:?}"),
    }
    assert!(
        largest <= single_alloc_bound(frame_len),
        "{what}, {p:?} at max: a frame of {frame_len} bytes made a single allocation of \
         {largest} bytes (bound {})",
        single_alloc_bound(frame_len)
    );
}

/// Random valid requests and responses per served version.
const MAX_PREFIX_RANDOM_MESSAGES: u64 = 3;

/// Sets every length and count prefix of several valid requests and responses of `api` at
/// `version` to its maximum, one at a time, and decodes each frame the real way.
fn every_prefix_at_max<Req, Resp>(api: ApiKey, v: i16, rng: &mut StdRng, tally: &mut MaxPrefixTally)
where
    Req: Decode + Encodable,
    Resp: Decode + Encodable,
{
    // Requests: the hand-written seed plus random ones, through the broker's path.
    let mut requests = vec![seed_frame(api, v, rng)];
    for i in 0..MAX_PREFIX_RANDOM_MESSAGES {
        let seed = ((api as u64) << 40) ^ ((v as u64) << 32) ^ i;
        requests.push(encode_seed(api, v, &random_message::<Req>(seed, v)));
    }
    for frame in requests {
        let payload = frame.slice(4..);
        let mut body = payload.clone();
        parse_request_header(&mut body).expect("a valid request header");
        let header = &payload[..payload.len() - body.len()];
        for p in prefixes_of::<Req>(&body, v) {
            let mut mutated = header.to_vec();
            mutated.extend_from_slice(&with_prefix_at_max(&body, &p));
            let len = mutated.len();
            let what = format!("{api:?} v{v} request {}", hex(&payload));
            check_max_prefix(
                &what,
                len,
                &p,
                || {
                    let mut frame = Bytes::from(mutated);
                    let header = parse_request_header(&mut frame)?;
                    decode_request_kind(&header, frame).map(drop)
                },
                tally,
            );
            tally.request_positions += 1;
        }
    }
    // Responses: random ones, through the client's path.
    for i in 0..MAX_PREFIX_RANDOM_MESSAGES + 1 {
        let seed = ((api as u64) << 40) ^ ((v as u64) << 32) ^ (i + 100);
        let message = random_message::<Resp>(seed, v);
        let (payload, header_len) = response_payload(api, v, &message);
        let body = payload.slice(header_len..);
        for p in prefixes_of::<Resp>(&body, v) {
            let mut mutated = payload[..header_len].to_vec();
            mutated.extend_from_slice(&with_prefix_at_max(&body, &p));
            let len = mutated.len();
            let what = format!("{api:?} v{v} response {}", hex(&payload));
            check_max_prefix(
                &what,
                len,
                &p,
                || decode_response::<Resp>(Bytes::from(mutated), api as i16, v).map(drop),
                tally,
            );
            tally.response_positions += 1;
        }
    }
}

#[test]
fn every_count_at_its_maximum_is_a_typed_error() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut kinds_seen = BTreeMap::<PrefixKind, usize>::new();
    let mut total = (0usize, 0usize, 0usize);
    for range in SUPPORTED {
        let api = ApiKey::try_from(range.api_key).expect("served keys are known");
        let mut tally = MaxPrefixTally::default();
        for v in range.min..=range.max {
            with_message_types!(api, both: every_prefix_at_max(api, v, &mut rng, &mut tally));
        }
        println!(
            "max prefixes: {api:?} v{}-v{}: {} request and {} response positions at their \
             maximum, all typed errors ({:?}); largest single allocation {} bytes",
            range.min,
            range.max,
            tally.request_positions,
            tally.response_positions,
            tally.kinds,
            tally.largest_alloc_bytes
        );
        assert!(
            tally.request_positions > 0 && tally.response_positions > 0,
            "{api:?}"
        );
        total.0 += tally.request_positions;
        total.1 += tally.response_positions;
        total.2 = total.2.max(tally.largest_alloc_bytes);
        for (kind, n) in tally.prefix_kinds {
            *kinds_seen.entry(kind).or_default() += n;
        }
    }
    println!(
        "max prefixes: {} request and {} response positions in all; largest single allocation \
         {} bytes; prefixes by kind: {kinds_seen:?}",
        total.0, total.1, total.2
    );
    // The probe must have met every kind of prefix, or the check covers less than it says.
    // (No message Rill reads has a non-nullable BYTES field.)
    use PrefixKind::*;
    let expected = [String, NullableString, NullableBytes, Array, NullableArray];
    let expected = expected
        .into_iter()
        .chain([TaggedFieldCount, TaggedFieldSize]);
    assert!(
        expected.into_iter().all(|k| kinds_seen.contains_key(&k)),
        "{kinds_seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The client's side: the 523-byte Fetch v7 response, and mutated responses of every API

/// A Fetch v7 response frame (size prefix included): one topic, one partition with one
/// aborted transaction and one valid batch of `records` records with values of `value_len`
/// bytes.
fn fetch_v7_response(records: i64, value_len: usize) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).with_producer(7, 0, 0);
    let value = vec![b'v'; value_len];
    for i in 0..records {
        b.push(
            1_700_000_000_000 + i,
            Some(b"key"),
            Some(&value),
            &[("h", Some(&b"v"[..]))],
        )
        .expect("batch");
    }
    let partition = fetch_response::PartitionData::default()
        .with_partition_index(0)
        .with_high_watermark(records)
        .with_last_stable_offset(records)
        .with_aborted_transactions(Some(vec![fetch_response::AbortedTransaction::default()
            .with_producer_id(ProducerId(7))
            .with_first_offset(0)]))
        .with_records(Some(b.build().expect("batch")));
    let response = FetchResponse::default()
        .with_session_id(1)
        .with_responses(vec![fetch_response::FetchableTopicResponse::default()
            .with_topic(name("orders"))
            .with_partitions(vec![partition])]);
    encode_response(1, ApiKey::Fetch as i16, 7, &response).expect("Fetch v7 response")
}

/// Size of the Fetch v7 response in issue 8 that made an unpatched client allocate 3.9 GB.
const ISSUE_8_FETCH_FRAME_BYTES: usize = 523;

/// A valid Fetch v7 response frame of [`ISSUE_8_FETCH_FRAME_BYTES`] bytes and its records
/// count.
fn fetch_v7_response_of_523_bytes() -> (Bytes, i64) {
    for records in 1..=4 {
        for value_len in 0..200 {
            let frame = fetch_v7_response(records, value_len);
            if frame.len() == ISSUE_8_FETCH_FRAME_BYTES {
                return (frame, records);
            }
        }
    }
    panic!("no Fetch v7 response of {ISSUE_8_FETCH_FRAME_BYTES} bytes");
}

/// How far a client got with a Fetch response.
#[derive(Debug)]
enum ClientFetch {
    /// `decode_response` refused the body.
    BodyRefused(ProtocolError),
    /// The body decoded; the batches and records were walked.
    Walked {
        batches: usize,
        records: usize,
        error: Option<ProtocolError>,
    },
}

/// What `client_decode_fetch` does with an uncompressed Fetch response, keeping the errors.
fn client_fetch_walk(payload: Bytes, version: i16) -> ClientFetch {
    let response = match decode_response::<FetchResponse>(payload, ApiKey::Fetch as i16, version) {
        Ok((_, response)) => response,
        Err(e) => return ClientFetch::BodyRefused(e),
    };
    let (mut batches, mut records) = (0, 0);
    for topic in &response.responses {
        for partition in &topic.partitions {
            let Some(blob) = &partition.records else {
                continue;
            };
            for view in batch::batches(blob) {
                let view = match view {
                    Ok(view) => view,
                    Err(e) => {
                        return ClientFetch::Walked {
                            batches,
                            records,
                            error: Some(e.into()),
                        }
                    }
                };
                batches += 1;
                let iter = match view.records() {
                    Ok(iter) => iter,
                    Err(e) => {
                        return ClientFetch::Walked {
                            batches,
                            records,
                            error: Some(e.into()),
                        }
                    }
                };
                for record in iter {
                    match record {
                        Ok(_) => records += 1,
                        Err(e) => {
                            return ClientFetch::Walked {
                                batches,
                                records,
                                error: Some(e.into()),
                            }
                        }
                    }
                }
            }
        }
    }
    ClientFetch::Walked {
        batches,
        records,
        error: None,
    }
}

/// Decodes `frame` (size prefix included) as the client does, checking the allocation bound.
fn client_fetch_measured(what: &str, frame: &[u8]) -> ClientFetch {
    let payload = Bytes::copy_from_slice(&frame[4..]);
    let len = payload.len();
    let (outcome, largest, _) = measure(|| {
        let outcome = client_fetch_walk(payload.clone(), 7);
        // And the fuzz tests' client path, which also decompresses.
        client_decode_fetch(payload, 7, &mut Reached::default());
        outcome
    });
    println!(
        "523-byte Fetch v7: {what}: {outcome:?}; largest single allocation {largest} bytes \
         (bound {})",
        client_alloc_bound(len)
    );
    assert!(
        largest <= single_alloc_bound(len) && largest <= client_alloc_bound(len),
        "{what}: a single allocation of {largest} bytes from a {len}-byte frame"
    );
    outcome
}

/// Calls `decode_response::<Resp>`; true if the body decoded.
fn decode_response_as<Resp: Decode>(payload: Bytes, api: ApiKey, v: i16) -> bool {
    decode_response::<Resp>(payload, api as i16, v).is_ok()
}

/// Random valid response frames (size prefix included) per served api and version.
fn response_seeds<Resp: Decode + Encodable>(
    api: ApiKey,
    v: i16,
    seeds: &mut Vec<(ApiKey, i16, Bytes)>,
) {
    for i in 0..2u64 {
        let seed = ((api as u64) << 40) ^ ((v as u64) << 32) ^ (i + 200);
        let message = random_message::<Resp>(seed, v);
        let frame = encode_response(7, api as i16, v, &message).expect("response encodes");
        seeds.push((api, v, frame));
    }
}

#[test]
fn the_523_byte_fetch_v7_response_and_mutated_responses_of_every_api_are_bounded() {
    // (a) The Fetch v7 response of issue 8, valid, then with a huge count or length.
    let (frame, records) = fetch_v7_response_of_523_bytes();
    println!(
        "523-byte Fetch v7: a frame of {} bytes, {records} records",
        frame.len()
    );
    let payload = frame.slice(4..);
    let mut header = payload.clone();
    rill_protocol::header::parse_response_header(&mut header, ApiKey::Fetch as i16, 7)
        .expect("response header");
    let body_at = 4 + payload.len() - header.len();
    let prefixes = prefixes_of::<FetchResponse>(&frame.slice(body_at..), 7);
    let at = |kind| {
        let found = prefixes
            .iter()
            .filter(|p| p.kind == kind)
            .collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "{kind:?} in {prefixes:?}");
        body_at + found[0].at
    };
    let aborted_count_at = at(PrefixKind::NullableArray);
    let batch_at = at(PrefixKind::NullableBytes) + 4;
    let records_count_at = batch_at + 57;
    // The first record: length, attributes, timestamp delta, offset delta, key length.
    let record_at = batch_at + 61;
    let mut key_len_at = record_at + varint_len_at(&frame[record_at..]) + 1;
    key_len_at += varint_len_at(&frame[key_len_at..]);
    key_len_at += varint_len_at(&frame[key_len_at..]);
    assert_eq!(frame[key_len_at], 6, "the zigzag length of \"key\"");
    assert_eq!(
        i32::from_be_bytes(
            frame[records_count_at..records_count_at + 4]
                .try_into()
                .unwrap()
        ),
        records as i32
    );

    match client_fetch_measured("valid", &frame) {
        ClientFetch::Walked {
            batches: 1,
            records: n,
            error: None,
        } if n == records as usize => {}
        other => panic!("the valid frame: {other:?}"),
    }
    let with = |at: usize, bytes: &[u8]| {
        let mut f = frame.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let huge = i32::MAX.to_be_bytes();
    match client_fetch_measured(
        "aborted transactions count 0x7fffffff",
        &with(aborted_count_at, &huge),
    ) {
        ClientFetch::BodyRefused(ProtocolError::MalformedBody {
            error: DecodeError::CountTooLarge { .. },
            ..
        }) => {}
        other => panic!("aborted transactions count: {other:?}"),
    }
    match client_fetch_measured("records count 0x7fffffff", &with(records_count_at, &huge)) {
        // The walk stops at the end of the bytes: no more records than there are.
        ClientFetch::Walked {
            batches: 1,
            records: n,
            error: Some(ProtocolError::CorruptRecord { .. }),
        } if n <= records as usize => {}
        other => panic!("records count: {other:?}"),
    }
    // Five bytes over the key length and what follows: the largest varint (zigzag i32::MAX).
    let key_len = [0xfe, 0xff, 0xff, 0xff, 0x0f];
    match client_fetch_measured(
        "first record's key length i32::MAX",
        &with(key_len_at, &key_len),
    ) {
        ClientFetch::Walked {
            batches: 1,
            records: 0,
            error: Some(ProtocolError::CorruptRecord { .. }),
        } => {}
        other => panic!("key length: {other:?}"),
    }

    // (b) Mutated random valid responses of every API the client reads, every served version.
    let mut seeds = Vec::new();
    for range in SUPPORTED {
        let api = ApiKey::try_from(range.api_key).expect("served keys are known");
        for v in range.min..=range.max {
            with_message_types!(api, response: response_seeds(api, v, &mut seeds));
        }
    }
    let seed: u64 = std::env::var("SEED")
        .ok()
        .map(|s| s.parse().expect("SEED is a number"))
        .unwrap_or_else(rand::random);
    let frames = frames_to_run() / 5;
    println!("response fuzz: SEED={seed} frames={frames}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reached = Reached::default();
    let mut largest_seen = 0usize;
    let started = Instant::now();
    for i in 0..frames {
        let (api, v, seed_frame) = &seeds[rng.gen_range(0..seeds.len())];
        let (api, v) = (*api, *v);
        let input = mutate(seed_frame, &mut rng);
        for payload in frames_of(&input, &mut reached) {
            let len = payload.len();
            let (outcome, largest, _) = measure(|| {
                catch_quietly(
                    || with_message_types!(api, response: decode_response_as(payload, api, v)),
                )
            });
            largest_seen = largest_seen.max(largest);
            let failure = match outcome {
                Err(panic) => Some(format!("panic: {}", panic_message(&*panic))),
                Ok(_) if largest > single_alloc_bound(len) => Some(format!(
                    "a frame of {len} bytes made a single allocation of {largest} bytes (bound {})",
                    single_alloc_bound(len)
                )),
                Ok(true) => {
                    reached.bodies += 1;
                    None
                }
                Ok(false) => None,
            };
            if let Some(what) = failure {
                panic!(
                    "{api:?} v{v} response #{i}: {what}; replay with SEED={seed}; input: {}",
                    hex(&input)
                );
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "response fuzz: {frames} mutated responses of {} api versions in {:.1} s; reached \
         {reached:?}; largest single allocation {largest_seen} bytes",
        seeds.len() / 2,
        elapsed.as_secs_f64(),
    );
    assert!(reached.bodies > frames / 10, "{reached:?}");
}
