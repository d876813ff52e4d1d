//! The oracle test: for every served API and version, random valid requests and responses
//! (built by running our decoder over [`RandomSource`]) are encoded with `kafka-protocol`'s
//! encoder; our wire decoder and upstream's decoder must yield the same struct from those
//! bytes, equal to the message encoded. Upstream decoding is allowed here, in tests only.
//!
//! What it catches: a field missing or read in the wrong version (the encoder refuses a
//! non-default value the version cannot carry, or the bytes no longer line up and the
//! decode fails or leaves trailing bytes), fields out of order, wrong widths, nullability
//! and tagged fields that differ from the schema.
//!
//! `RILL_ORACLE_CASES` sets the messages per API version (default 200); a failure prints the
//! seed, and `RILL_ORACLE_SEED=n` replays that one case.
#![allow(clippy::disallowed_methods)] // upstream decoding is the oracle

use std::fmt::Debug;

use bytes::BytesMut;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::random::RandomSource;
use super::{decode_body, Decode};
use crate::versions::supported_range;

fn cases() -> u64 {
    std::env::var("RILL_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Checks one message type at every served version of `api`.
fn check<T>(api: ApiKey, what: &str)
where
    T: Decode + Decodable + Encodable + PartialEq + Debug,
{
    let range = supported_range(api as i16).expect("a served api");
    let seeds: Vec<u64> = match std::env::var("RILL_ORACLE_SEED") {
        Ok(seed) => vec![seed.parse().expect("RILL_ORACLE_SEED is a number")],
        Err(_) => (0..cases()).collect(),
    };
    for version in range.min..=range.max {
        for &seed in &seeds {
            let seed = seed ^ ((api as u64) << 40) ^ ((version as u64) << 32);
            let context = format!("{what} v{version}, RILL_ORACLE_SEED={seed}");
            let message = <T as Decode>::decode(&mut RandomSource::new(seed), version)
                .unwrap_or_else(|e| panic!("{context}: random fill failed: {e}"));
            let mut buf = BytesMut::new();
            message
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("{context}: kafka-protocol refuses {message:?}: {e}"));
            let bytes = buf.freeze();
            let ours: T = decode_body(bytes.clone(), version)
                .unwrap_or_else(|e| panic!("{context}: our decoder refuses {bytes:?}: {e}"));
            let theirs = <T as Decodable>::decode(&mut bytes.clone(), version)
                .unwrap_or_else(|e| panic!("{context}: kafka-protocol refuses {bytes:?}: {e}"));
            assert_eq!(ours, theirs, "{context}");
            assert_eq!(ours, message, "{context}");
        }
    }
}

/// Versions a decoder knows but Rill does not serve are outside [`check`] (which follows
/// the served table): each module checks them with this — 200 random messages per
/// version, `kafka-protocol`'s encoder, our decoder back to the same message.
pub(super) fn assert_round_trips<T>(versions: std::ops::RangeInclusive<i16>)
where
    T: Decode + Encodable + PartialEq + Debug,
{
    for version in versions {
        for seed in 0..200 {
            let message = <T as Decode>::decode(&mut RandomSource::new(seed), version)
                .unwrap_or_else(|e| panic!("v{version} seed {seed}: random fill failed: {e}"));
            let mut buf = BytesMut::new();
            message
                .encode(&mut buf, version)
                .unwrap_or_else(|e| panic!("v{version} seed {seed}: kafka-protocol refuses: {e}"));
            let decoded: T = decode_body(buf.freeze(), version)
                .unwrap_or_else(|e| panic!("v{version} seed {seed}: our decoder refuses: {e}"));
            assert_eq!(decoded, message, "v{version}, seed {seed}");
        }
    }
}

macro_rules! oracle_tests {
    ($($test:ident: $api:ident => $request:ty, $response:ty;)*) => {
        $(
            #[test]
            fn $test() {
                check::<$request>(ApiKey::$api, stringify!($request));
                check::<$response>(ApiKey::$api, stringify!($response));
            }
        )*
        /// Every served API has a line above.
        #[test]
        fn every_served_api_has_an_oracle_test() {
            let covered = [$(ApiKey::$api as i16),*];
            for range in crate::versions::SUPPORTED {
                assert!(covered.contains(&range.api_key), "api key {} has no oracle test", range.api_key);
            }
        }
    };
}

oracle_tests! {
    metadata_matches_kafka_protocol: Metadata => MetadataRequest, MetadataResponse;
    create_topics_matches_kafka_protocol: CreateTopics => CreateTopicsRequest, CreateTopicsResponse;
    delete_topics_matches_kafka_protocol: DeleteTopics => DeleteTopicsRequest, DeleteTopicsResponse;
    create_partitions_matches_kafka_protocol: CreatePartitions => CreatePartitionsRequest, CreatePartitionsResponse;
    describe_configs_matches_kafka_protocol: DescribeConfigs => DescribeConfigsRequest, DescribeConfigsResponse;
    produce_matches_kafka_protocol: Produce => ProduceRequest, ProduceResponse;
    fetch_matches_kafka_protocol: Fetch => FetchRequest, FetchResponse;
    list_offsets_matches_kafka_protocol: ListOffsets => ListOffsetsRequest, ListOffsetsResponse;
    api_versions_matches_kafka_protocol: ApiVersions => ApiVersionsRequest, ApiVersionsResponse;
    offset_for_leader_epoch_matches_kafka_protocol: OffsetForLeaderEpoch => OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse;
    describe_cluster_matches_kafka_protocol: DescribeCluster => DescribeClusterRequest, DescribeClusterResponse;
    find_coordinator_matches_kafka_protocol: FindCoordinator => FindCoordinatorRequest, FindCoordinatorResponse;
    join_group_matches_kafka_protocol: JoinGroup => JoinGroupRequest, JoinGroupResponse;
    sync_group_matches_kafka_protocol: SyncGroup => SyncGroupRequest, SyncGroupResponse;
    heartbeat_matches_kafka_protocol: Heartbeat => HeartbeatRequest, HeartbeatResponse;
    leave_group_matches_kafka_protocol: LeaveGroup => LeaveGroupRequest, LeaveGroupResponse;
    offset_commit_matches_kafka_protocol: OffsetCommit => OffsetCommitRequest, OffsetCommitResponse;
    offset_fetch_matches_kafka_protocol: OffsetFetch => OffsetFetchRequest, OffsetFetchResponse;
    list_groups_matches_kafka_protocol: ListGroups => ListGroupsRequest, ListGroupsResponse;
    describe_groups_matches_kafka_protocol: DescribeGroups => DescribeGroupsRequest, DescribeGroupsResponse;
    delete_groups_matches_kafka_protocol: DeleteGroups => DeleteGroupsRequest, DeleteGroupsResponse;
    offset_delete_matches_kafka_protocol: OffsetDelete => OffsetDeleteRequest, OffsetDeleteResponse;
    alter_configs_matches_kafka_protocol: AlterConfigs => AlterConfigsRequest, AlterConfigsResponse;
    incremental_alter_configs_matches_kafka_protocol: IncrementalAlterConfigs => IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse;
    delete_records_matches_kafka_protocol: DeleteRecords => DeleteRecordsRequest, DeleteRecordsResponse;
    init_producer_id_matches_kafka_protocol: InitProducerId => InitProducerIdRequest, InitProducerIdResponse;
}
