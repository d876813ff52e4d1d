//! One module per Kafka API (mini-redis's `cmd/`): each turns a decoded request
//! into a response using the [`crate::state`] layer. [`dispatch`] checks the
//! version against the served table, decodes the body with `rill-protocol`, calls
//! the handler, and encodes the response frame.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod produce_check;
pub mod produce_rewrite;
pub mod sync_group;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rill_protocol::header::RequestHeader;
use rill_protocol::{codec, versions};

use crate::context::order::Turn;
use crate::context::Broker;

/// What a handler hands the connection's writer: a response (chunks of one frame),
/// nothing (acks=0 produce), or "close the connection".
pub type Reply = Result<Option<Vec<Bytes>>, CloseConnection>;

/// A request the broker cannot answer; the connection is closed (Kafka does the
/// same for undecodable requests, since the client would wait forever otherwise).
#[derive(Debug)]
pub struct CloseConnection(pub String);

/// Decodes, handles and encodes one request. Decoding overlaps with earlier requests;
/// the handler runs once `turn` is taken, so requests of a connection take effect in
/// arrival order (see [`crate::context::order`]).
///
/// `client_host` is the client's address as group members report it (`/127.0.0.1`).
pub async fn dispatch(
    broker: &Broker,
    header: RequestHeader,
    body: Bytes,
    turn: Turn,
    client_host: &str,
) -> Reply {
    let (api_key, version, correlation_id) =
        (header.api_key, header.api_version, header.correlation_id);
    if !versions::is_supported(api_key, version) {
        tracing::debug!(api_key, version, "unsupported api key or version");
        return Ok(Some(vec![unsupported_version(&header)]));
    }
    let api = ApiKey::try_from(api_key)
        .map_err(|()| CloseConnection(format!("api key {api_key} served but unknown")))?;

    macro_rules! decode {
        ($request:ty) => {
            codec::decode_request::<$request>(body, version).map_err(|e| {
                CloseConnection(format!("undecodable {api:?} v{version} request: {e}"))
            })?
        };
    }
    macro_rules! encode {
        ($response:expr) => {
            codec::encode_response(correlation_id, api_key, version, &$response)
                .map_err(|e| CloseConnection(format!("cannot encode {api:?} v{version}: {e}")))?
        };
    }

    // Each arm decodes before taking the turn (decoding overlaps with earlier requests);
    // the turn passes on when `_held` drops: at the end of the arm unless it says otherwise.
    let frame = match api {
        ApiKey::ApiVersions => encode!(api_versions::handle(decode!(ApiVersionsRequest), version)),
        ApiKey::Metadata => {
            let request = decode!(MetadataRequest);
            let _held = turn.take().await;
            encode!(metadata::handle(broker, request, version).await)
        }
        ApiKey::CreateTopics => {
            let request = decode!(CreateTopicsRequest);
            let _held = turn.take().await;
            encode!(create_topics::handle(broker, request, version).await)
        }
        ApiKey::DeleteTopics => {
            let request = decode!(DeleteTopicsRequest);
            let _held = turn.take().await;
            encode!(delete_topics::handle(broker, request, version).await)
        }
        ApiKey::CreatePartitions => {
            let request = decode!(CreatePartitionsRequest);
            let _held = turn.take().await;
            encode!(create_partitions::handle(broker, request).await)
        }
        ApiKey::Produce => {
            let request = decode!(ProduceRequest);
            // The handler passes the turn on right after its appends.
            match produce::handle(broker, request, version, turn.take().await).await {
                Some(response) => encode!(response),
                None => return Ok(None), // acks=0: no response at all
            }
        }
        ApiKey::Fetch => {
            let request = decode!(FetchRequest);
            // Reads change nothing, but they see every earlier request's effects.
            drop(turn.take().await);
            return fetch::handle(broker, correlation_id, request, version)
                .await
                .map(Some)
                .map_err(|e| CloseConnection(format!("cannot encode Fetch v{version}: {e}")));
        }
        ApiKey::ListOffsets => {
            let request = decode!(ListOffsetsRequest);
            let _held = turn.take().await;
            encode!(list_offsets::handle(broker, request, version))
        }
        ApiKey::DescribeConfigs => {
            let request = decode!(DescribeConfigsRequest);
            let _held = turn.take().await;
            encode!(describe_configs::handle(broker, request, version))
        }
        ApiKey::DeleteRecords => {
            let request = decode!(DeleteRecordsRequest);
            let _held = turn.take().await;
            encode!(delete_records::handle(broker, request).await)
        }
        ApiKey::AlterConfigs => {
            let request = decode!(AlterConfigsRequest);
            let _held = turn.take().await;
            encode!(
                alter_configs::handle_alter(broker, request, version, header.client_id.as_deref())
                    .await
            )
        }
        ApiKey::IncrementalAlterConfigs => {
            let request = decode!(IncrementalAlterConfigsRequest);
            let _held = turn.take().await;
            encode!(
                alter_configs::handle_incremental(
                    broker,
                    request,
                    version,
                    header.client_id.as_deref()
                )
                .await
            )
        }
        ApiKey::InitProducerId => {
            let request = decode!(InitProducerIdRequest);
            let _held = turn.take().await;
            encode!(init_producer_id::handle(broker, request).await)
        }
        ApiKey::DescribeCluster => {
            let request = decode!(DescribeClusterRequest);
            let _held = turn.take().await;
            encode!(describe_cluster::handle(broker, request))
        }
        ApiKey::OffsetForLeaderEpoch => {
            let request = decode!(OffsetForLeaderEpochRequest);
            let _held = turn.take().await;
            encode!(offset_for_leader_epoch::handle(broker, request))
        }
        // The group APIs: JoinGroup and SyncGroup may wait for the rest of the group (a
        // rebalance), holding the turn as Kafka holds the connection's next request.
        ApiKey::FindCoordinator => {
            let request = decode!(FindCoordinatorRequest);
            let _held = turn.take().await;
            encode!(find_coordinator::handle(broker, request, version).await)
        }
        ApiKey::JoinGroup => {
            let request = decode!(JoinGroupRequest);
            let _held = turn.take().await;
            let client_id = header.client_id.as_deref();
            encode!(join_group::handle(broker, request, version, client_id, client_host).await)
        }
        ApiKey::SyncGroup => {
            let request = decode!(SyncGroupRequest);
            let _held = turn.take().await;
            encode!(sync_group::handle(broker, request, version).await)
        }
        ApiKey::Heartbeat => {
            let request = decode!(HeartbeatRequest);
            let _held = turn.take().await;
            encode!(heartbeat::handle(broker, request))
        }
        ApiKey::LeaveGroup => {
            let request = decode!(LeaveGroupRequest);
            let _held = turn.take().await;
            encode!(leave_group::handle(broker, request, version))
        }
        ApiKey::OffsetCommit => {
            let request = decode!(OffsetCommitRequest);
            let _held = turn.take().await;
            encode!(offset_commit::handle(broker, request).await)
        }
        ApiKey::OffsetFetch => {
            let request = decode!(OffsetFetchRequest);
            let _held = turn.take().await;
            encode!(offset_fetch::handle(broker, request, version))
        }
        ApiKey::ListGroups => {
            let request = decode!(ListGroupsRequest);
            let _held = turn.take().await;
            encode!(list_groups::handle(broker, request, version))
        }
        ApiKey::DescribeGroups => {
            let request = decode!(DescribeGroupsRequest);
            let _held = turn.take().await;
            encode!(describe_groups::handle(broker, request, version))
        }
        ApiKey::DeleteGroups => {
            let request = decode!(DeleteGroupsRequest);
            let _held = turn.take().await;
            encode!(delete_groups::handle(broker, request).await)
        }
        ApiKey::OffsetDelete => {
            let request = decode!(OffsetDeleteRequest);
            let _held = turn.take().await;
            encode!(offset_delete::handle(broker, request).await)
        }
        other => {
            return Err(CloseConnection(format!(
                "{other:?} is in the served table but has no handler"
            )))
        }
    };
    Ok(Some(vec![frame]))
}

/// The answer to an api key or version Rill does not serve.
///
/// ApiVersions gets a v0 ApiVersionsResponse (error UNSUPPORTED_VERSION plus the
/// served ranges) so the client can pick a version, exactly as Kafka does. Any
/// other api key gets a response header v0 followed by the int16 error code
/// UNSUPPORTED_VERSION (35): there is no schema to encode a full body for a version
/// the broker does not know, and every client reads the correlation id first.
pub fn unsupported_version(header: &RequestHeader) -> Bytes {
    let code = ResponseError::UnsupportedVersion.code();
    if header.api_key == ApiKey::ApiVersions as i16 {
        let response = ApiVersionsResponse::default()
            .with_error_code(code)
            .with_api_keys(versions::api_versions_entries());
        if let Ok(frame) =
            codec::encode_response(header.correlation_id, header.api_key, 0, &response)
        {
            return frame;
        }
    }
    let mut frame = BytesMut::with_capacity(10);
    frame.put_i32(6);
    frame.put_i32(header.correlation_id);
    frame.put_i16(code);
    frame.freeze()
}

/// `Some(text)` as a Kafka nullable string.
pub fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// The error code and message for a result.
pub fn error_parts<T>(result: &Result<T, crate::error::BrokerError>) -> (i16, Option<StrBytes>) {
    match result {
        Ok(_) => (0, None),
        Err(e) => (e.code(), Some(str_bytes(e.to_string()))),
    }
}

/// The broker ids of replica assignments given in a request (CreateTopics,
/// CreatePartitions), one list per partition.
pub fn assigned_broker_ids<'a>(
    assignments: impl Iterator<Item = &'a Vec<kafka_protocol::messages::BrokerId>>,
) -> Vec<Vec<i32>> {
    assignments
        .map(|ids| ids.iter().map(|b| b.0).collect())
        .collect()
}
