//! The table of API versions Rill serves: the single source of truth for ApiVersions and for
//! refusing requests with UNSUPPORTED_VERSION.
//!
//! Ranges follow what current clients negotiate (ARCHITECTURE.md §2) and reach down to the
//! oldest versions still in use, but never leave what `kafka-protocol` 0.18 can
//! decode and encode (checked by a unit test). To serve a new API, add one line to
//! [`SUPPORTED`] in the same change that adds its handler: ApiVersions advertises exactly this
//! table, and clients trust what is advertised.

use kafka_protocol::messages::ApiKey;

/// One served API and the inclusive range of versions served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    /// The Kafka api key.
    pub api_key: i16,
    /// Oldest version served.
    pub min: i16,
    /// Newest version served.
    pub max: i16,
}

const fn range(api_key: ApiKey, min: i16, max: i16) -> ApiRange {
    ApiRange {
        api_key: api_key as i16,
        min,
        max,
    }
}

/// Every API Rill serves, ordered by api key. ApiVersions answers with exactly this list.
///
/// Why these bounds (client: newest version it asks for):
/// * ApiVersions 0..=4 — aiokafka v0, librdkafka 2.16 v3, kafka-python 3.0 v4.
/// * Metadata 0..=12 — aiokafka v5, librdkafka and kafka-python v12.
/// * Produce 3..=10 — v3 is the oldest Kafka 4 (and kafka-protocol) accepts; librdkafka v10.
/// * Fetch 4..=16 — v4 is the oldest Kafka 4 accepts; aiokafka v11, kafka-python v12,
///   librdkafka v16. v13+ address topics by id instead of name.
/// * ListOffsets 1..=9 — aiokafka v3, librdkafka v7, kafka-python v9.
/// * CreateTopics 2..=4, DeleteTopics 1..=4 — librdkafka v4 (the first flexible versions).
/// * DescribeConfigs 1..=4 — librdkafka v1, the Java admin client v4.
/// * CreatePartitions 0..=3, OffsetForLeaderEpoch 2..=4 — everything kafka-protocol knows.
/// * DescribeCluster 0..=1 — v2 only adds `include_fenced_brokers` for KRaft controllers.
/// * The classic group protocol (`broker::group`): FindCoordinator 0..=6 (librdkafka v2,
///   kafka-python v6: batched keys from v4), JoinGroup 0..=9 (librdkafka v5, kafka-python
///   v7), SyncGroup 0..=5, Heartbeat 0..=4, LeaveGroup 0..=5 (batched members from v3),
///   OffsetCommit 2..=9 (librdkafka v9, kafka-python v8; v10 names topics by id for the new
///   consumer protocol), OffsetFetch 1..=9 (librdkafka v9, kafka-python v8: groups from v8),
///   DescribeGroups 0..=6, ListGroups 0..=5 (librdkafka v5: state and type filters),
///   DeleteGroups 0..=2, OffsetDelete 0..=0 (its only version).
/// * Topic configs and records: AlterConfigs 0..=2, IncrementalAlterConfigs 0..=1 and
///   DeleteRecords 0..=2 — everything kafka-protocol knows.
/// * InitProducerId 0..=5 — librdkafka v4, kafka-python v?, the Java client v5; v3+ names the producer's id and
///   epoch for KIP-360 epoch bumps. Idempotent producers only (`broker::api::init_producer_id`).
pub const SUPPORTED: &[ApiRange] = &[
    range(ApiKey::Produce, 3, 10),
    range(ApiKey::Fetch, 4, 16),
    range(ApiKey::ListOffsets, 1, 9),
    range(ApiKey::Metadata, 0, 12),
    range(ApiKey::OffsetCommit, 2, 9),
    range(ApiKey::OffsetFetch, 1, 9),
    range(ApiKey::FindCoordinator, 0, 6),
    range(ApiKey::JoinGroup, 0, 9),
    range(ApiKey::Heartbeat, 0, 4),
    range(ApiKey::LeaveGroup, 0, 5),
    range(ApiKey::SyncGroup, 0, 5),
    range(ApiKey::DescribeGroups, 0, 6),
    range(ApiKey::ListGroups, 0, 5),
    range(ApiKey::ApiVersions, 0, 4),
    range(ApiKey::CreateTopics, 2, 4),
    range(ApiKey::DeleteTopics, 1, 4),
    range(ApiKey::DeleteRecords, 0, 2),
    range(ApiKey::InitProducerId, 0, 5),
    range(ApiKey::OffsetForLeaderEpoch, 2, 4),
    range(ApiKey::DescribeConfigs, 1, 4),
    range(ApiKey::AlterConfigs, 0, 2),
    range(ApiKey::CreatePartitions, 0, 3),
    range(ApiKey::DeleteGroups, 0, 2),
    range(ApiKey::IncrementalAlterConfigs, 0, 1),
    range(ApiKey::OffsetDelete, 0, 0),
    range(ApiKey::DescribeCluster, 0, 1),
];

/// The served range for `api_key`, if Rill serves that API at all.
pub fn supported_range(api_key: i16) -> Option<ApiRange> {
    SUPPORTED.iter().copied().find(|r| r.api_key == api_key)
}

/// Whether Rill serves `api_key` at `api_version`.
pub fn is_supported(api_key: i16, api_version: i16) -> bool {
    supported_range(api_key).is_some_and(|r| (r.min..=r.max).contains(&api_version))
}

/// The request header version (0, 1 or 2) a client uses for `api_key` at `api_version`.
///
/// For an api key the codec does not know, header v1 is assumed: it carries the correlation id
/// and client id, which is all a broker needs to answer UNSUPPORTED_VERSION.
pub fn request_header_version(api_key: i16, api_version: i16) -> i16 {
    match ApiKey::try_from(api_key) {
        Ok(key) => key.request_header_version(api_version),
        Err(()) => 1,
    }
}

/// The response header version (0 or 1) for `api_key` at `api_version`.
///
/// ApiVersions always answers with header v0 so that a client can parse the answer before it
/// knows which versions the broker speaks.
pub fn response_header_version(api_key: i16, api_version: i16) -> i16 {
    match ApiKey::try_from(api_key) {
        Ok(key) => key.response_header_version(api_version),
        Err(()) => 0,
    }
}

/// Whether the request header carries tagged fields (header v2, the "flexible" versions).
pub fn is_flexible_request(api_key: i16, api_version: i16) -> bool {
    request_header_version(api_key, api_version) >= 2
}

/// Whether the response header carries tagged fields (header v1).
pub fn is_flexible_response(api_key: i16, api_version: i16) -> bool {
    response_header_version(api_key, api_version) >= 1
}

/// The ApiVersions response entries for everything in [`SUPPORTED`], in table order.
pub fn api_versions_entries() -> Vec<kafka_protocol::messages::api_versions_response::ApiVersion> {
    SUPPORTED
        .iter()
        .map(|r| {
            kafka_protocol::messages::api_versions_response::ApiVersion::default()
                .with_api_key(r.api_key)
                .with_min_version(r.min)
                .with_max_version(r.max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_within_what_the_codec_can_handle() {
        for r in SUPPORTED {
            let key = ApiKey::try_from(r.api_key).expect("served api keys are known to the codec");
            let codec = key.valid_versions();
            assert!(r.min <= r.max, "{key:?}: empty range");
            assert!(
                codec.min <= r.min && r.max <= codec.max,
                "{key:?}: served {}..={} outside codec {}",
                r.min,
                r.max,
                codec
            );
        }
    }

    #[test]
    fn table_has_one_line_per_api() {
        for (i, a) in SUPPORTED.iter().enumerate() {
            for b in &SUPPORTED[i + 1..] {
                assert_ne!(
                    a.api_key, b.api_key,
                    "duplicate line for api key {}",
                    a.api_key
                );
            }
        }
    }

    #[test]
    fn minimum_api_set_of_the_single_node_broker_is_served() {
        for key in [
            ApiKey::ApiVersions,
            ApiKey::Metadata,
            ApiKey::CreateTopics,
            ApiKey::DeleteTopics,
            ApiKey::CreatePartitions,
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::ListOffsets,
            ApiKey::DescribeConfigs,
            ApiKey::DescribeCluster,
            ApiKey::OffsetForLeaderEpoch,
        ] {
            assert!(supported_range(key as i16).is_some(), "{key:?} missing");
        }
    }

    #[test]
    fn versions_clients_negotiate_are_served() {
        // (client, api, version) from ARCHITECTURE.md §2.
        let wanted = [
            ("librdkafka", ApiKey::ApiVersions, 3),
            ("librdkafka", ApiKey::Metadata, 12),
            ("librdkafka", ApiKey::Produce, 10),
            ("librdkafka", ApiKey::Fetch, 16),
            ("librdkafka", ApiKey::ListOffsets, 7),
            ("librdkafka", ApiKey::CreateTopics, 4),
            ("librdkafka", ApiKey::DeleteTopics, 4),
            ("librdkafka", ApiKey::DescribeConfigs, 1),
            ("librdkafka", ApiKey::FindCoordinator, 2),
            ("librdkafka", ApiKey::JoinGroup, 5),
            ("librdkafka", ApiKey::SyncGroup, 3),
            ("librdkafka", ApiKey::Heartbeat, 3),
            ("librdkafka", ApiKey::LeaveGroup, 1),
            ("librdkafka", ApiKey::OffsetCommit, 9),
            ("librdkafka", ApiKey::OffsetFetch, 9),
            ("librdkafka", ApiKey::ListGroups, 5),
            ("librdkafka", ApiKey::InitProducerId, 4),
            ("kafka-python", ApiKey::FindCoordinator, 6),
            ("kafka-python", ApiKey::JoinGroup, 7),
            ("kafka-python", ApiKey::SyncGroup, 5),
            ("kafka-python", ApiKey::OffsetCommit, 8),
            ("kafka-python", ApiKey::OffsetFetch, 8),
            ("kafka-python", ApiKey::ApiVersions, 4),
            ("kafka-python", ApiKey::Metadata, 12),
            ("kafka-python", ApiKey::Produce, 9),
            ("kafka-python", ApiKey::Fetch, 12),
            ("kafka-python", ApiKey::ListOffsets, 9),
            ("aiokafka", ApiKey::ApiVersions, 0),
            ("aiokafka", ApiKey::Metadata, 5),
            ("aiokafka", ApiKey::Produce, 7),
            ("aiokafka", ApiKey::Fetch, 11),
            ("aiokafka", ApiKey::ListOffsets, 3),
        ];
        for (client, key, version) in wanted {
            assert!(
                is_supported(key as i16, version),
                "{client} needs {key:?} v{version}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_versions_are_unsupported() {
        assert!(!is_supported(ApiKey::Produce as i16, 2));
        assert!(!is_supported(ApiKey::Fetch as i16, 17));
        assert!(!is_supported(-1, 0));
        assert!(!is_supported(i16::MAX, 0));
        assert!(!is_supported(ApiKey::JoinGroup as i16, 10));
    }

    #[test]
    fn header_versions_follow_flexible_versions() {
        assert_eq!(request_header_version(ApiKey::Fetch as i16, 11), 1);
        assert_eq!(request_header_version(ApiKey::Fetch as i16, 12), 2);
        assert_eq!(response_header_version(ApiKey::Fetch as i16, 11), 0);
        assert_eq!(response_header_version(ApiKey::Fetch as i16, 12), 1);
        // ApiVersions: flexible request from v3, but the response header is always v0.
        assert_eq!(request_header_version(ApiKey::ApiVersions as i16, 3), 2);
        assert_eq!(response_header_version(ApiKey::ApiVersions as i16, 3), 0);
        assert_eq!(request_header_version(999, 0), 1);
    }

    #[test]
    fn api_versions_entries_mirror_the_table() {
        let entries = api_versions_entries();
        assert_eq!(entries.len(), SUPPORTED.len());
        for (e, r) in entries.iter().zip(SUPPORTED) {
            assert_eq!(
                (e.api_key, e.min_version, e.max_version),
                (r.api_key, r.min, r.max)
            );
        }
    }
}
