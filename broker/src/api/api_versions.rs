//! ApiVersions: the served table from `rill_protocol::versions`, nothing else.

use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use rill_protocol::versions;

/// Answers with every served api key and version range.
pub fn handle(_request: ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    // v3+ requests carry the client's software name/version; nothing depends on it.
    // The feature fields stay at their defaults so they are not written (§2: old
    // librdkafka cannot parse tagged fields carrying defaults).
    ApiVersionsResponse::default().with_api_keys(versions::api_versions_entries())
}
